"""The inner loop: a few optimizer steps on one task's support loss, in ``lax.scan``.

Written for one task; algorithms ``vmap`` it over the users of a batch. Because
the loop is a ``scan`` of pure optax updates, ``jax.grad`` through it gives the
full second-order meta-gradient (MAML); ``first_order=True`` treats each inner
gradient as a constant (first-order MAML), and ``remat=True`` recomputes each
step in the backward pass instead of storing its activations, so the memory of
the second-order gradient stays that of one step plus the carried weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Params = Any


def inner_adapt(
    loss_fn: Callable[[Params], jax.Array],
    params: Params,
    *,
    optimizer: optax.GradientTransformation,
    steps: int,
    first_order: bool = False,
    remat: bool = False,
    active: jax.Array | bool = True,
) -> tuple[Params, jax.Array]:
    """Runs ``steps`` updates of ``optimizer`` on ``loss_fn`` starting at ``params``.

    Args:
      loss_fn: scalar loss of the adapted parameters (e.g. one user's masked
        support loss, closing over the slow weights and the support rows).
      params: the starting point (e.g. the meta-learned fast weights); may contain
        ``None`` holes (see :func:`jaxmeta.models.partition`).
      optimizer: any optax transformation; its state starts fresh for each call.
        For second-order meta-gradients it must be differentiable at the
        gradients it sees: a gradient entry that is exactly zero (a dead ReLU
        unit) has no derivative through ``optax.adam``'s square root and turns
        the meta-gradient into NaN; pass ``optax.adam(lr, eps_root=1e-8)``, optax's
        option for differentiating through Adam. (A task with no rows at all has
        an exactly zero gradient too: see ``active``.)
      steps: number of updates ``K`` (0 returns ``params`` unchanged).
      first_order: stop the gradient through each inner gradient, so that
        ``d adapted / d params`` is the identity (first-order MAML).
      remat: rematerialise each step in the backward pass (``jax.checkpoint``).
      active: bool scalar, may be traced; False for a task with nothing to adapt
        on (a user without support rows), whose ``params`` then come back
        unchanged, as from zero steps. Such a task's gradient is exactly zero,
        where optimizers such as ``optax.clip_by_global_norm`` have no
        derivative, and masking the adapted weights alone would not help: the
        masked-out branch's ``0 * inf`` still reaches the meta-gradient. So the
        optimizer is fed ones instead of that gradient, and its updates are
        replaced by zeros (a ``jnp.where`` on each side of it).

    Returns:
      ``(adapted, losses)`` with ``losses`` float ``[steps]``: the loss before each
      update.

    Example:
      >>> import jax.numpy as jnp
      >>> adapted, losses = inner_adapt(lambda w: (w - 3.0) ** 2, jnp.float32(0.0),
      ...                               optimizer=optax.sgd(0.25), steps=2)
      >>> float(adapted), losses.tolist()
      (2.25, [9.0, 2.25])
    """
    if steps < 0:
        raise ValueError(f"steps={steps}: pass a non-negative number of inner steps.")

    def step(carry, _):
        p, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(p)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        if active is not True:
            grads = jax.tree.map(lambda g: jnp.where(active, g, jnp.ones_like(g)), grads)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        if active is not True:
            updates = jax.tree.map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), updates)
        return (optax.apply_updates(p, updates), opt_state), loss

    if remat:
        step = jax.checkpoint(step)
    (adapted, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), length=steps)
    return adapted, losses


class DenseAdapted(NamedTuple):
    """The result of :func:`inner_adapt_dense` for one task."""

    total: jax.Array  # [rows, out]: the sum over inner steps of d loss / d pre-activation
    rest: Params  # the other fast weights, adapted
    losses: jax.Array  # [steps]: the loss before each update


def inner_adapt_dense(
    loss_fn: Callable[[jax.Array, Params], jax.Array],
    features: jax.Array,
    w: jax.Array,
    b: jax.Array,
    rest: Params,
    *,
    learning_rate: float,
    steps: int,
    first_order: bool = False,
    remat: bool = False,
) -> DenseAdapted:
    """Plain SGD on a model whose first fast layer is dense on fixed features, in closed form.

    Each SGD step changes the dense layer by ``-lr * features^T delta`` (and its
    bias by ``-lr * 1^T delta``), where ``delta`` is the gradient of the loss with
    respect to the pre-activation ``z = features @ w + b``. So after any number
    of steps ``z = features @ w + b - lr * gram @ total``, with the task's
    ``gram = features @ features^T + 1`` ``[rows, rows]`` and ``total`` the sum of
    the ``delta`` so far ``[rows, out]``. The loop carries ``total`` instead of the
    adapted ``[in, out]`` weights: far less work and memory per user when rows
    are fewer than inputs (MeLU: 20 rows, 256 inputs), and the product
    ``features @ w`` of the shared initial weights is one large matrix product
    over all users. The result, its gradients and second derivatives are those
    of the plain SGD loop (:func:`inner_adapt`), up to rounding. A task without
    support rows (every row masked out of the loss) has ``delta = 0`` at every
    step, and plain SGD needs no guard at a zero gradient: its layer comes back
    unchanged, with finite derivatives.

    Args:
      loss_fn: ``loss_fn(z, rest) -> scalar``: the task's loss given the dense
        layer's pre-activation ``z [rows, out]`` and the other fast weights.
      features: the dense layer's input ``[rows, in]``, fixed during adaptation
        (padded rows zeroed).
      w: ``[in, out]`` initial weights.
      b: ``[out]`` initial bias.
      rest: the other fast weights (a pytree, ``None`` holes allowed).
      learning_rate: the SGD rate, a number.
      steps: inner steps.
      first_order: treat each inner gradient as a constant (first-order MAML):
        ``delta``, the gradients of ``rest`` and the features inside the Gram
        matrices are cut from the gradient.
      remat: rematerialise each step in the backward pass.

    Returns:
      :class:`DenseAdapted`; :func:`dense_outputs` gives the adapted layer's
      pre-activation on any rows, :func:`dense_weights` its weights.
    """
    if steps < 0:
        raise ValueError(f"steps={steps}: pass a non-negative number of inner steps.")
    fixed = jax.lax.stop_gradient(features) if first_order else features
    gram = fixed @ fixed.T + 1.0
    start = features @ w + b[None, :]
    tx = optax.sgd(learning_rate)

    def step(carry, _):
        total, rest = carry
        loss, (delta, grads) = jax.value_and_grad(loss_fn, argnums=(0, 1))(start - learning_rate * gram @ total, rest)
        if first_order:
            delta, grads = jax.lax.stop_gradient((delta, grads))
        updates, _ = tx.update(grads, tx.init(rest), rest)
        return (total + delta, optax.apply_updates(rest, updates)), loss

    if remat:
        step = jax.checkpoint(step)
    (total, rest), losses = jax.lax.scan(step, (jnp.zeros_like(start), rest), length=steps)
    return DenseAdapted(total, rest, losses)


def dense_outputs(rows: jax.Array, features: jax.Array, w: jax.Array, b: jax.Array, total: jax.Array, *,
                  learning_rate: float, first_order: bool = False) -> jax.Array:
    """The adapted dense layer's pre-activation on ``rows [n, in]`` (e.g. the query
    features): ``rows @ w + b - lr * (rows @ features^T + 1) @ total``."""
    fixed = jax.lax.stop_gradient(features) if first_order else features
    return rows @ w + b[None, :] - learning_rate * (rows @ fixed.T + 1.0) @ total


def dense_weights(features: jax.Array, w: jax.Array, b: jax.Array, total: jax.Array, *,
                  learning_rate: float) -> tuple[jax.Array, jax.Array]:
    """The adapted dense layer ``(w, b)``: ``w - lr * features^T @ total``, ``b - lr * sum(total)``."""
    return w - learning_rate * features.T @ total, b - learning_rate * total.sum(0)
