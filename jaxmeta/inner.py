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
from typing import Any

import jax
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
        option for differentiating through Adam. (Padding users, whose support
        gradient is all zero, are given real rows by the engine, so they are safe
        even under ``optax.clip_by_global_norm``.)
      steps: number of updates ``K`` (0 returns ``params`` unchanged).
      first_order: stop the gradient through each inner gradient, so that
        ``d adapted / d params`` is the identity (first-order MAML).
      remat: rematerialise each step in the backward pass (``jax.checkpoint``).

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
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), loss

    if remat:
        step = jax.checkpoint(step)
    (adapted, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), length=steps)
    return adapted, losses
