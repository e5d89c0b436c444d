"""Multi-task learning by hard parameter sharing: a shared trunk, a ridge head per user.

The classic multi-task recipe (Caruana 1997) as a learner of the same table: one
trunk (everything but the head: embeddings, the network) shared by all training
users, and a small head per user, all trained jointly on every rating of every
training user. The heads are not stored: for a model whose prediction is affine
in its head ``w`` (a last linear layer; the user vector and bias of biased MF),
each training user's head is *profiled out* exactly. On all of the user's rows
``R`` (support and query together),

``w* = argmin_w  sum_R (y - f(x; w))^2 + reg |w - w0|^2
     = w0 + (J^T J + reg I)^{-1} J^T (y - f(x; w0))``,

with ``J`` the Jacobian of the predictions on ``R`` in ``w`` (``jax.jacfwd``;
exact for a linear head), solved by :func:`jaxmeta.algorithms.ridge.ridge_head` as
:func:`jaxmeta.algorithms.ridge` solves it. The
training objective of a user is the in-sample value at that head,

``L_u(trunk, w0) = (sum_R (y - f(x; w*))^2 + reg |w* - w0|^2) / |R|``,

the minimum over the user's head of their mean squared error plus the ridge
penalty, so the mean of ``L_u`` over users is the multi-task loss minimised
jointly over the per-user heads, and its gradient (taken through the solve; for
an affine head it equals the gradient at the heads held fixed, by the envelope
theorem) trains the trunk and the shared prior ``w0`` (which moves towards the
mean of the users' heads). ``reg`` is fixed, not learned: an in-sample objective
would drive it to 0.

A new user (``adapt``, ``evaluate``, ``predict``) gets the same ridge solve on
their support rows only, the trunk fixed; a user without support rows keeps
``w0``. Padded rows enter neither ``J`` nor the residuals nor the objective
(they are zeroed before the model and masked after it).

How it differs from its neighbours:

* :func:`jaxmeta.algorithms.anil` meta-learns the same trunk/head split
  episodically: the head is adapted by a few gradient steps on the support set
  and the trunk is trained on the query loss after them, through those steps.
* :func:`jaxmeta.algorithms.ridge` solves the same closed-form head, but
  episodically too: fitted on the support rows, scored on the query rows (with
  meta-learned precisions). Here the head is fitted and scored on the same
  rows: nothing in training imitates the few-shot test, which is what makes it
  the multi-task baseline for the meta-learners.

For a head that is not affine the solve is one damped Gauss-Newton step from
``w0`` rather than the exact minimiser.

References:
  Caruana, "Multitask Learning", Machine Learning 28, 1997.
  Ruder, "An Overview of Multi-Task Learning in Deep Neural Networks",
  arXiv:1706.05098, 2017.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jaxmeta.algorithms._core import (
    MetaLearner,
    all_rows,
    build,
    embed_stage,
    masked_loss,
    split_fast,
    zero_padded_rows,
)
from jaxmeta.algorithms._defaults import DEFAULT_LOSS, DEFAULT_OUTER_OPTIMIZER, refuse
from jaxmeta.algorithms.ridge import DEFAULT_REG, head_of, ridge_head
from jaxmeta.losses import LossFn, get_loss, squared_error
from jaxmeta.models import Model, combine


def multitask(
    model: Model,
    *,
    inner_optimizer: None = None,
    inner_steps: None = None,
    outer_optimizer: optax.GradientTransformation = DEFAULT_OUTER_OPTIMIZER,
    loss: str | LossFn = DEFAULT_LOSS,
    chunk_size: int | None = None,
    is_fast: Callable | None = None,
    backend: None = None,
    reg: float = DEFAULT_REG,
    adapt_reg: float | None = None,
) -> MetaLearner:
    """A trunk shared by all users and a ridge head per user, trained jointly in sample.

    Args:
      model: the model; its head (``model.is_head``, or ``is_fast``) should enter
        the prediction linearly.
      inner_optimizer, inner_steps, backend: do not apply (each user's head is
        solved in closed form); each raises a ValueError if set.
      outer_optimizer: optax transformation of ``(params, ())``: the trunk and
        the heads' shared prior ``w0``.
      loss: ``"mse"`` only (the heads are least-squares fits).
      chunk_size: users per chunk inside the compiled functions.
      is_fast: the per-user head (default ``model.is_head``).
      reg: the ridge on ``|w - w0|^2`` of every head, fixed (> 0), in units of
        summed squared errors, as :func:`jaxmeta.algorithms.ridge`'s precisions.
      adapt_reg: the ridge of a new user's head (``adapt``, ``evaluate``,
        ``predict``), default ``reg``. A training user's head is fitted on all
        their rows, a new user's on a few support rows: the two need not
        shrink alike, and since the state does not depend on it, it can be
        chosen on validation users after training, as a fine-tuning rate is.

    Returns:
      A :class:`jaxmeta.algorithms.MetaLearner`: ``step`` fits each training
      user's head on all their rows and descends the mean in-sample objective
      (``metrics["loss"]``; ``metrics["inner_loss"]``: the same rows' loss at
      ``w0``, before the heads are fitted); ``adapt``, ``evaluate`` and
      ``predict`` fit on the support rows and score the query rows.

    Raises:
      ValueError: an option that does not apply, a loss other than ``"mse"``,
        a model without a head (and no ``is_fast``), or ``reg`` not positive
        and finite.

    Example:
      >>> import jax
      >>> from jaxmeta.data import synthetic
      >>> from jaxmeta.models import embedding_mlp
      >>> from jaxmeta.tasks import pad_tasks
      >>> data = synthetic.generate(num_train_users=8, num_new_users=2, seed=0)
      >>> learner = multitask(embedding_mlp(data.vocab_sizes), reg=0.5)
      >>> state = learner.init(jax.random.key(0))
      >>> state.hyper  # nothing meta-learned besides the parameters
      ()
      >>> state, metrics = learner.step(state, pad_tasks(data.train))
      >>> sorted(metrics)
      ['inner_loss', 'loss', 'tasks']
      >>> learner.adapt(state, pad_tasks(data.new))["layers"][-1]["w"].shape  # a head per new user
      (2, 32, 1)

    References:
      Caruana, "Multitask Learning", Machine Learning 28, 1997.
      Ruder, "An Overview of Multi-Task Learning in Deep Neural Networks", 2017.
    """
    refuse(who="multitask", why="multitask solves each user's head in closed form (no inner optimizer, steps or "
           "kernel)", inner_optimizer=inner_optimizer, inner_steps=inner_steps, backend=backend)
    loss_fn = get_loss(loss)
    if loss_fn is not squared_error:
        raise ValueError(f"multitask: loss={loss!r}; the per-user heads are least-squares fits: pass loss='mse'.")
    for name, value in (("reg", reg), ("adapt_reg", reg if adapt_reg is None else adapt_reg)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (value > 0 and math.isfinite(value)):
            raise ValueError(f"multitask: {name}={value!r}; pass a positive, finite ridge, e.g. {DEFAULT_REG}.")
    reg = float(reg)
    adapt_reg = reg if adapt_reg is None else float(adapt_reg)
    is_fast = head_of(model, is_fast, who="multitask")
    inner_model, embed = embed_stage(model, is_fast)

    def fit(params, x, y, mask, ridge):
        """``(head, slow, its predictions on the rows, the rows' predictions at w0)``, the head's ridge
        ``ridge``."""
        fast, slow = split_fast(params, is_fast)
        w0, unravel = ravel_pytree(fast)
        x = zero_padded_rows(x, mask)
        predict = lambda w: inner_model.apply(combine(unravel(w), slow), x)  # noqa: E731
        w, before = ridge_head(predict, w0, y, mask, ridge)
        return w, w0, unravel, slow, predict, before

    def on_support(meta, task):
        """``(head, slow, embedded task, support losses before and after)``."""
        params, _ = meta
        task = embed(split_fast(params, is_fast)[1], task)
        w, _, unravel, slow, predict, before = fit(params, task.support_x, task.support_y, task.support_mask,
                                                   adapt_reg)
        losses = jnp.stack([masked_loss(loss_fn, before, task.support_y, task.support_mask),
                            masked_loss(loss_fn, predict(w), task.support_y, task.support_mask)])
        return unravel(w), slow, task, losses

    def objective(meta, task):
        params, _ = meta
        x, y, mask = all_rows(embed(split_fast(params, is_fast)[1], task))
        w, w0, _, _, predict, before = fit(params, x, y, mask, reg)
        rows = jnp.maximum(mask.sum(), 1).astype(w.dtype)
        value = masked_loss(loss_fn, predict(w), y, mask) + reg * jnp.sum((w - w0) ** 2) / rows
        return value, {"loss": value, "inner_loss": masked_loss(loss_fn, before, y, mask)}

    def predict_task(meta, task):
        fast, slow, task, _ = on_support(meta, task)
        return inner_model.apply(combine(fast, slow), zero_padded_rows(task.query_x, task.query_mask))

    def adapt_task(meta, task):
        fast, _, _, losses = on_support(meta, task)
        return fast, losses

    return build(model, loss_fn=loss_fn, objective=objective, adapt_task=adapt_task, is_fast=is_fast,
                 outer_optimizer=outer_optimizer, chunk_size=chunk_size, predict_task=predict_task)
