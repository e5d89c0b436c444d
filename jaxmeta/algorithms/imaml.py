"""Implicit MAML: a proximal inner problem and its implicit meta-gradient.

Per user, the adapted fast weights approximately solve
``phi* = argmin_phi L_support(phi, slow) + reg / 2 * ||phi - theta||^2``
(``K`` inner steps from ``theta``; the path is not differentiated). By the
implicit function theorem, with ``H`` the Hessian of ``L_support`` in ``phi`` at
``phi*`` and ``v = (H + reg I)^-1 grad_phi L_query(phi*)`` (conjugate gradient on
Hessian-vector products),

* the meta-gradient of ``theta`` is ``reg * v`` (= ``(I + H / reg)^-1 grad L_query``),
* the meta-gradient of the slow weights is
  ``d_slow L_query(phi*, slow) - d_slow <grad_phi L_support(phi*, slow), v>``.

Memory does not grow with ``K``. Test-time adaptation solves the same proximal
problem.

References:
  Rajeswaran, Finn, Kakade, Levine, "Meta-Learning with Implicit Gradients",
  NeurIPS 2019.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxmeta.algorithms._core import MetaLearner, build, rows_loss, split_fast, tree_vdot
from jaxmeta.algorithms.maml import DEFAULT_INNER_OPTIMIZER
from jaxmeta.inner import inner_adapt
from jaxmeta.losses import LossFn, get_loss
from jaxmeta.models import Model, combine


def conjugate_gradient(matvec: Callable, b, *, steps: int):
    """``steps`` iterations of conjugate gradient for ``matvec(x) = b`` from ``x = 0``.

    A fixed number of iterations (unlike ``jax.scipy.sparse.linalg.cg``, which stops
    at a tolerance) makes the result independent of how a batch is padded or
    chunked, and vectorises without a data-dependent loop. Once the residual
    vanishes, the iterate stops moving instead of dividing by zero.
    """
    dot = tree_vdot
    axpy = lambda a, x, y: jax.tree.map(lambda xi, yi: a * xi + yi, x, y)  # noqa: E731

    def body(_, carry):
        x, r, p, rr = carry
        ap = matvec(p)
        pap = dot(p, ap)
        alpha = jnp.where(pap > 0, rr / jnp.where(pap > 0, pap, 1), 0)
        x, r = axpy(alpha, p, x), axpy(-alpha, ap, r)
        rr_new = dot(r, r)
        beta = jnp.where(rr > 0, rr_new / jnp.where(rr > 0, rr, 1), 0)
        return x, r, axpy(beta, p, r), rr_new

    zero = jax.tree.map(jnp.zeros_like, b)
    x, *_ = jax.lax.fori_loop(0, steps, body, (zero, b, b, dot(b, b)))
    return x


def imaml(
    model: Model,
    *,
    reg: float = 1.0,
    cg_steps: int = 5,
    inner_optimizer: optax.GradientTransformation = DEFAULT_INNER_OPTIMIZER,
    inner_steps: int = 5,
    outer_optimizer: optax.GradientTransformation = optax.adam(1e-3),
    loss: str | LossFn = "mse",
    chunk_size: int | None = None,
    is_fast: Callable | None = None,
) -> MetaLearner:
    """Implicit MAML.

    Args:
      reg: strength of the proximal term (``lambda`` in the paper), > 0.
      cg_steps: conjugate-gradient iterations for the implicit gradient.
      Others as in :func:`jaxmeta.algorithms.maml`.
    """
    if reg <= 0:
        raise ValueError(f"reg={reg}: the proximal strength must be positive.")
    if inner_steps < 1 or cg_steps < 1:
        raise ValueError(f"inner_steps={inner_steps}, cg_steps={cg_steps}: pass at least 1 of each.")
    loss_fn = get_loss(loss)
    is_fast = model.is_fast if is_fast is None else is_fast
    sg = jax.lax.stop_gradient

    def support_loss(fast, slow, task):
        return rows_loss(model, loss_fn, combine(fast, slow), task.support_x, task.support_y, task.support_mask)

    def query_loss(fast, slow, task):
        return rows_loss(model, loss_fn, combine(fast, slow), task.query_x, task.query_y, task.query_mask)

    def solve_proximal(theta, slow, task):
        def proximal(phi):
            dist = sum(jnp.sum(jnp.square(p - t)) for p, t in zip(jax.tree.leaves(phi), jax.tree.leaves(theta)))
            return support_loss(phi, slow, task) + 0.5 * reg * dist

        return inner_adapt(proximal, theta, optimizer=inner_optimizer, steps=inner_steps, first_order=True)

    def objective(meta, task):
        theta, slow = split_fast(meta[0], is_fast)
        phi, losses = solve_proximal(sg(theta), sg(slow), task)
        phi = sg(phi)
        support_grad = lambda f: jax.grad(support_loss)(f, sg(slow), task)  # noqa: E731

        def matvec(v):
            hv = jax.jvp(support_grad, (phi,), (v,))[1]
            return jax.tree.map(lambda h, x: h + reg * x, hv, v)

        v = sg(conjugate_gradient(matvec, jax.grad(query_loss)(phi, sg(slow), task), steps=cg_steps))
        value = query_loss(phi, slow, task)
        surrogate = (
            reg * tree_vdot(v, theta)
            + value
            - tree_vdot(jax.grad(support_loss)(phi, slow, task), v)
        )
        return surrogate, {"loss": value, "inner_loss": losses[0]}

    def adapt_task(meta, task):
        theta, slow = split_fast(meta[0], is_fast)
        return solve_proximal(theta, slow, task)

    return build(
        model,
        loss_fn=loss_fn,
        objective=objective,
        adapt_task=adapt_task,
        is_fast=is_fast,
        outer_optimizer=outer_optimizer,
        chunk_size=chunk_size,
    )
