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
    fast_shapes,
    has_rows,
    kernel_adapter,
    rows_loss,
    split_fast,
    support_loss,
)
from jaxmeta.algorithms._defaults import (
    DEFAULT_BACKEND,
    DEFAULT_INNER_OPTIMIZER,
    DEFAULT_INNER_STEPS,
    DEFAULT_LOSS,
    DEFAULT_OUTER_OPTIMIZER,
    InnerOptimizer,
    check_inner_steps,
    inner_optimizer_of,
    refuse,
)
from jaxmeta.inner import inner_adapt
from jaxmeta.losses import LossFn, get_loss
from jaxmeta.models import Model, combine


def _global_model(
    model: Model,
    *,
    who: str,
    inner_optimizer: InnerOptimizer,
    inner_steps: int,
    outer_optimizer: optax.GradientTransformation,
    loss: str | LossFn,
    chunk_size: int | None,
    is_fast: Callable,
    backend: str,
) -> MetaLearner:
    """Global training on all rows of every user, then ``inner_steps`` of
    ``inner_optimizer`` on each user's support set at test time (none: 0)."""
    loss_fn = get_loss(loss)
    inner = inner_optimizer_of(inner_optimizer, fast_shapes(model, is_fast), who=who)
    kernel = kernel_adapter(model, is_fast, loss_fn, inner_lr=inner.rate, inner_steps=inner_steps, backend=backend,
                            who=who)

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
            optimizer=inner.optimizer,
            steps=inner_steps,
            active=has_rows(task.support_mask),
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
    inner_optimizer: None = None,
    inner_steps: None = None,
    outer_optimizer: optax.GradientTransformation = DEFAULT_OUTER_OPTIMIZER,
    loss: str | LossFn = DEFAULT_LOSS,
    chunk_size: int | None = None,
    is_fast: None = None,
    backend: None = None,
) -> MetaLearner:
    """One global model for everyone; ``adapt`` returns the global fast weights.

    Args:
      inner_optimizer, inner_steps, is_fast, backend: do not apply (there is no
        inner loop); each raises a ValueError if set. :func:`finetune` adapts the
        same global model per user.
      Others as in :func:`jaxmeta.algorithms.maml`.

    Example:
      >>> import jax
      >>> from jaxmeta.data import synthetic
      >>> from jaxmeta.models import embedding_mlp
      >>> from jaxmeta.tasks import pad_tasks
      >>> data = synthetic.generate(num_train_users=8, num_new_users=2, seed=0)
      >>> learner = no_adaptation(embedding_mlp(data.vocab_sizes))
      >>> state, metrics = learner.step(learner.init(jax.random.key(0)), pad_tasks(data.train))
      >>> sorted(metrics)
      ['loss', 'tasks']
    """
    refuse(who="no_adaptation", why="no_adaptation has no inner loop (finetune adapts the global model per user)",
           inner_optimizer=inner_optimizer, inner_steps=inner_steps, is_fast=is_fast, backend=backend)
    return _global_model(model, who="no_adaptation", inner_optimizer=optax.identity(), inner_steps=0,
                         outer_optimizer=outer_optimizer, loss=loss, chunk_size=chunk_size, is_fast=model.is_fast,
                         backend="xla")


def finetune(
    model: Model,
    *,
    inner_optimizer: InnerOptimizer = DEFAULT_INNER_OPTIMIZER,
    inner_steps: int = DEFAULT_INNER_STEPS,
    outer_optimizer: optax.GradientTransformation = DEFAULT_OUTER_OPTIMIZER,
    loss: str | LossFn = DEFAULT_LOSS,
    chunk_size: int | None = None,
    is_fast: Callable | None = None,
    backend: str = DEFAULT_BACKEND,
) -> MetaLearner:
    """Pre-train globally, fine-tune the fast weights per user at test time only.

    Training is that of :func:`no_adaptation` (``inner_optimizer`` and
    ``inner_steps`` are used at test time only), so the two share their states.
    A user without support rows is not fine-tuned.

    Args:
      backend: as in :func:`jaxmeta.algorithms.maml`; with ``"pallas"`` the
        fine-tuning runs on the fused kernel.
      Others as in :func:`jaxmeta.algorithms.maml`.

    Example:
      >>> import jax
      >>> from jaxmeta.data import synthetic
      >>> from jaxmeta.models import embedding_mlp
      >>> from jaxmeta.tasks import pad_tasks
      >>> data = synthetic.generate(num_train_users=8, num_new_users=2, seed=0)
      >>> model = embedding_mlp(data.vocab_sizes)
      >>> state = no_adaptation(model).init(jax.random.key(0))
      >>> metrics = finetune(model, inner_optimizer=0.1).evaluate(state, pad_tasks(data.new))
      >>> bool(metrics["query_loss_after"] < metrics["query_loss_before"])
      True
    """
    return _global_model(model, who="finetune", inner_optimizer=inner_optimizer,
                         inner_steps=check_inner_steps(inner_steps, who="finetune"), outer_optimizer=outer_optimizer,
                         loss=loss, chunk_size=chunk_size, is_fast=model.is_fast if is_fast is None else is_fast,
                         backend=backend)
