"""Meta-SGD: MAML that also meta-learns one inner learning rate per parameter.

The inner update is ``fast - lr * grad`` with ``lr`` a pytree shaped like the fast
weights, trained by the outer optimizer together with the initialisation.

Unlike the paper, whose rates are unconstrained, the rates are kept positive as
``lr = exp(log_lr)`` with ``log_lr`` in ``MetaState.hyper["log_inner_lr"]``. With
unconstrained rates on the built-in data, training converged but the inner loop
diverged for a few new users with 5-6 support ratings (rates had spread to
[-1.4, 1.1]; new-user query MSE above 1e16 in 2 of 3 seeds); in log space an
outer step changes a rate by a bounded factor, and the same runs gave 0.33-0.42.

References:
  Li, Zhou, Chen, Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot
  Learning", arXiv:1707.09835, 2017.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxmeta.algorithms._core import MetaLearner, split_fast
from jaxmeta.algorithms.maml import DEFAULT_INNER_STEPS, maml_family
from jaxmeta.losses import LossFn
from jaxmeta.models import Model


def scale_by_tree(rates) -> optax.GradientTransformation:
    """``updates = -rates * grads`` elementwise (SGD with per-parameter rates)."""
    return optax.stateless(lambda grads, params: jax.tree.map(lambda r, g: -r * g, rates, grads))


def inner_rates(hyper):
    """The per-parameter inner learning rates held in a Meta-SGD ``MetaState.hyper``."""
    return jax.tree.map(jnp.exp, hyper["log_inner_lr"])


def metasgd(
    model: Model,
    *,
    inner_lr: float = 0.03,
    inner_steps: int = DEFAULT_INNER_STEPS,
    outer_optimizer: optax.GradientTransformation = optax.adam(1e-3),
    loss: str | LossFn = "mse",
    first_order: bool = False,
    remat: bool = False,
    chunk_size: int | None = None,
    is_fast: Callable | None = None,
) -> MetaLearner:
    """Meta-SGD. ``inner_lr`` (> 0) is the initial value of every per-parameter
    rate; other arguments as in :func:`jaxmeta.algorithms.maml`."""
    if inner_lr <= 0:
        raise ValueError(f"inner_lr={inner_lr}: Meta-SGD rates are positive; pass inner_lr > 0.")
    fast_pred = model.is_fast if is_fast is None else is_fast

    def init_hyper(params):
        fast, _ = split_fast(params, fast_pred)
        return {"log_inner_lr": jax.tree.map(lambda p: jnp.full_like(p, jnp.log(inner_lr)), fast)}

    return maml_family(
        model,
        inner_optimizer=lambda hyper: scale_by_tree(inner_rates(hyper)),
        inner_steps=inner_steps,
        outer_optimizer=outer_optimizer,
        loss=loss,
        first_order=first_order,
        remat=remat,
        chunk_size=chunk_size,
        is_fast=fast_pred,
        init_hyper=init_hyper,
    )
