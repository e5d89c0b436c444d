"""Reptile: move the initialisation towards each user's adapted weights (model averaging).

Per user, the fast weights are trained for ``K`` inner steps on all of the user's
rows (Reptile does not split a task into support and query); the meta-gradient of
the fast weights is ``init - adapted``, averaged over users. With
``outer_optimizer=optax.sgd(eps)`` the update is the paper's
``init + eps * (mean adapted - init)``; ``eps = 1`` is plain model averaging. The
slow weights, which the inner loop does not adapt, follow the gradient of the
same rows' loss at the adapted fast weights. At test time users are adapted on
their support set, as with every algorithm.

References:
  Nichol, Achiam, Schulman, "On First-Order Meta-Learning Algorithms",
  arXiv:1803.02999, 2018.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
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
    tree_vdot,
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
)
from jaxmeta.inner import inner_adapt
from jaxmeta.losses import LossFn, get_loss
from jaxmeta.models import Model, combine


def reptile(
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
    """Reptile.

    Reptile differentiates nothing through its inner loop, so it takes no
    ``first_order`` or ``remat``. A user without support rows is not adapted at
    test time (its fast weights stay the initialisation).

    Args:
      backend: as in :func:`jaxmeta.algorithms.maml`; with ``"pallas"`` the inner
        loop (training and test-time adaptation) runs on the fused kernel.
      Others as in :func:`jaxmeta.algorithms.maml`.

    Example:
      >>> import jax, optax
      >>> from jaxmeta.data import synthetic
      >>> from jaxmeta.models import embedding_mlp
      >>> from jaxmeta.tasks import pad_tasks
      >>> data = synthetic.generate(num_train_users=8, num_new_users=2, seed=0)
      >>> learner = reptile(embedding_mlp(data.vocab_sizes), outer_optimizer=optax.sgd(1.0))
      >>> state, metrics = learner.step(learner.init(jax.random.key(0)), pad_tasks(data.train))
      >>> int(state.step), int(metrics["tasks"])
      (1, 8)
    """
    inner_steps = check_inner_steps(inner_steps, who="reptile")
    loss_fn = get_loss(loss)
    is_fast = model.is_fast if is_fast is None else is_fast
    sg = jax.lax.stop_gradient
    inner_model, embed = embed_stage(model, is_fast)
    inner = inner_optimizer_of(inner_optimizer, fast_shapes(model, is_fast), who="reptile")
    kernel = kernel_adapter(model, is_fast, loss_fn, inner_lr=inner.rate, inner_steps=inner_steps, backend=backend,
                            who="reptile")

    def train(fast, slow, x, y, mask):
        if kernel is not None:  # the query rows are the support rows: only the weights are used
            adapted, _, losses = kernel(fast, x, y, mask, x)
            return adapted, losses
        rows = lambda f: rows_loss(inner_model, loss_fn, combine(f, slow), x, y, mask)  # noqa: E731
        return inner_adapt(rows, fast, optimizer=inner.optimizer, steps=inner_steps, first_order=True,
                           active=has_rows(mask))

    def objective(meta, task):
        fast, slow = split_fast(meta[0], is_fast)
        x, y, mask = all_rows(embed(slow, task))
        adapted, losses = train(sg(fast), sg(slow), sg(x), y, mask)
        adapted = sg(adapted)
        value = rows_loss(inner_model, loss_fn, combine(adapted, slow), x, y, mask)
        # d/d fast = fast - adapted (the Reptile direction); d/d slow = d value / d slow.
        surrogate = tree_vdot(jax.tree.map(lambda f, a: f - a, sg(fast), adapted), fast) + value
        return surrogate, {"loss": value, "inner_loss": losses[0]}

    def adapt_task(meta, task):
        fast, slow = split_fast(meta[0], is_fast)
        task = embed(slow, task)
        return train(fast, slow, task.support_x, task.support_y, task.support_mask)

    def predict_task(meta, task):  # the kernel's own query predictions
        fast, slow = split_fast(meta[0], is_fast)
        task = embed(slow, task)
        return kernel(fast, task.support_x, task.support_y, task.support_mask, task.query_x, with_weights=False)[1]

    return build(
        model,
        loss_fn=loss_fn,
        objective=objective,
        adapt_task=adapt_task,
        is_fast=is_fast,
        outer_optimizer=outer_optimizer,
        chunk_size=chunk_size,
        predict_task=None if kernel is None else predict_task,
    )
