"""Meta-SGD: MAML that also meta-learns one inner learning rate per parameter.

The inner update is ``fast - lr * grad`` with ``lr`` a pytree shaped like the fast
weights, kept in ``MetaState.hyper["inner_lr"]`` and trained by the outer
optimizer together with the initialisation. Like the paper, rates are not
constrained to be positive.

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
from jaxmeta.algorithms.maml import maml_family
from jaxmeta.losses import LossFn
from jaxmeta.models import Model


def scale_by_tree(rates) -> optax.GradientTransformation:
    """``updates = -rates * grads`` elementwise (SGD with per-parameter rates)."""
    return optax.stateless(lambda grads, params: jax.tree.map(lambda r, g: -r * g, rates, grads))


def metasgd(
    model: Model,
    *,
    inner_lr: float = 0.1,
    inner_steps: int = 5,
    outer_optimizer: optax.GradientTransformation = optax.adam(1e-3),
    loss: str | LossFn = "mse",
    first_order: bool = False,
    remat: bool = False,
    chunk_size: int | None = None,
    is_fast: Callable | None = None,
) -> MetaLearner:
    """Meta-SGD. ``inner_lr`` is the initial value of every per-parameter rate;
    other arguments as in :func:`jaxmeta.algorithms.maml`."""
    fast_pred = model.is_fast if is_fast is None else is_fast

    def init_hyper(params):
        fast, _ = split_fast(params, fast_pred)
        return {"inner_lr": jax.tree.map(lambda p: jnp.full_like(p, inner_lr), fast)}

    return maml_family(
        model,
        inner_optimizer=lambda hyper: scale_by_tree(hyper["inner_lr"]),
        inner_steps=inner_steps,
        outer_optimizer=outer_optimizer,
        loss=loss,
        first_order=first_order,
        remat=remat,
        chunk_size=chunk_size,
        is_fast=fast_pred,
        init_hyper=init_hyper,
    )
