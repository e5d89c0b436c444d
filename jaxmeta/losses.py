"""Masked per-row losses.

Padded rows (mask ``False``) are excluded with ``jnp.where``, not by multiplying
with the mask, so that whatever a model predicts on a padded row (even ``nan``)
cannot reach a loss value.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise ``(predictions - targets) ** 2`` (regression on ratings)."""
    return jnp.square(predictions - targets)


def absolute_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise ``|predictions - targets|``: its minimiser is the median, so a model trained on it
    predicts what MAE, the cold-start papers' metric, rewards (its gradient is the residual's sign)."""
    return jnp.abs(predictions - targets)


def huber(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise Huber loss with ``delta=1`` (``optax.losses.huber_loss``): squared error on
    residuals within one star, absolute error (less a half) beyond."""
    return optax.losses.huber_loss(predictions, targets, delta=1.0)


def binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise binary cross-entropy of ``sigmoid(logits)`` against 0/1 targets (clicks)."""
    return optax.sigmoid_binary_cross_entropy(logits, targets)


LOSSES: dict[str, LossFn] = {"mse": squared_error, "mae": absolute_error, "huber": huber,
                             "bce": binary_cross_entropy}


def get_loss(loss: str | LossFn) -> LossFn:
    """Resolves a loss name (``"mse"``, ``"mae"``, ``"huber"`` or ``"bce"``) or passes a callable through."""
    if callable(loss):
        return loss
    try:
        return LOSSES[loss]
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}: pass one of {sorted(LOSSES)} or a callable.") from None


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` over the entries where ``mask`` is true; 0 when none is.

    Example:
      >>> import jax.numpy as jnp
      >>> float(masked_mean(jnp.array([1.0, 3.0, jnp.nan]), jnp.array([True, True, False])))
      2.0
    """
    total = jnp.sum(jnp.where(mask, values, 0), axis=-1)
    count = jnp.sum(mask, axis=-1).astype(total.dtype)
    return total / jnp.maximum(count, 1)
