"""The baselines every meta-learning paper must beat.

* :func:`no_adaptation`: one global model trained on all rows of all training
  users (support and query alike), used as is for every new user.
* :func:`finetune`: the same global training (pre-training), then ``K`` inner
  steps on each new user's support set at test time only (transfer learning).

Both train with the per-user mean loss averaged over users, like the
meta-learners, so that every user weighs the same.
"""

from __future__ import annotations

from collections.abc import Callable

import optax

from jaxmeta.algorithms._core import (
    MetaLearner,
    all_rows,
    build,
    embed_stage,
    kernel_adapter,
    rows_loss,
    split_fast,
    support_loss,
)
from jaxmeta.algorithms.maml import DEFAULT_INNER_OPTIMIZER, DEFAULT_INNER_STEPS, inner_sgd
from jaxmeta.inner import inner_adapt
from jaxmeta.losses import LossFn, get_loss
from jaxmeta.models import Model, combine


def _global_model(
    model: Model,
    *,
    inner_optimizer: optax.GradientTransformation,
    inner_steps: int,
    outer_optimizer: optax.GradientTransformation,
    loss: str | LossFn,
    chunk_size: int | None,
    is_fast: Callable | None,
    backend: str = "xla",
) -> MetaLearner:
    loss_fn = get_loss(loss)
    is_fast = model.is_fast if is_fast is None else is_fast
    inner_optimizer, inner_lr = inner_sgd(inner_optimizer)
    kernel = kernel_adapter(model, is_fast, loss_fn, inner_lr=inner_lr, inner_steps=inner_steps, backend=backend,
                            who="finetune")

    def objective(meta, task):
        value = rows_loss(model, loss_fn, meta[0], *all_rows(task))
        return value, {"loss": value}

    inner_model, embed = embed_stage(model, is_fast)

    def adapt_task(meta, task, with_weights=True):
        fast, slow = split_fast(meta[0], is_fast)
        task = embed(slow, task)
        if kernel is not None:
            adapted, predictions, losses = kernel(fast, task.support_x, task.support_y, task.support_mask,
                                                  task.query_x, with_weights=with_weights)
            return (adapted, losses) if with_weights else predictions
        return inner_adapt(
            lambda f: support_loss(inner_model, loss_fn, combine(f, slow), task),
            fast,
            optimizer=inner_optimizer,
            steps=inner_steps,
        )

    return build(
        model,
        loss_fn=loss_fn,
        objective=objective,
        adapt_task=adapt_task,
        is_fast=is_fast,
        outer_optimizer=outer_optimizer,
        chunk_size=chunk_size,
        predict_task=None if kernel is None else lambda meta, task: adapt_task(meta, task, with_weights=False),
    )


def no_adaptation(
    model: Model,
    *,
    outer_optimizer: optax.GradientTransformation = optax.adam(1e-3),
    loss: str | LossFn = "mse",
    chunk_size: int | None = None,
) -> MetaLearner:
    """One global model for everyone; ``adapt`` returns the global fast weights."""
    return _global_model(
        model,
        inner_optimizer=optax.identity(),
        inner_steps=0,
        outer_optimizer=outer_optimizer,
        loss=loss,
        chunk_size=chunk_size,
        is_fast=None,
    )


def finetune(
    model: Model,
    *,
    inner_optimizer: optax.GradientTransformation | float = DEFAULT_INNER_OPTIMIZER,
    inner_steps: int = DEFAULT_INNER_STEPS,
    outer_optimizer: optax.GradientTransformation = optax.adam(1e-3),
    loss: str | LossFn = "mse",
    chunk_size: int | None = None,
    is_fast: Callable | None = None,
    backend: str = "xla",
) -> MetaLearner:
    """Pre-train globally, fine-tune the fast weights per user at test time only.

    ``inner_optimizer`` may be a number (plain SGD at that rate); ``backend="pallas"``
    then fine-tunes with the fused kernel (see :func:`jaxmeta.algorithms.maml`)."""
    return _global_model(
        model,
        inner_optimizer=inner_optimizer,
        inner_steps=inner_steps,
        outer_optimizer=outer_optimizer,
        loss=loss,
        chunk_size=chunk_size,
        is_fast=is_fast,
        backend=backend,
    )
