"""The plain ``jax.numpy`` reference of the fused adaptation kernel.

Written for one user and batched with ``jax.vmap``, in the most literal way:
``steps`` updates of plain SGD on the full weights of every layer, the gradient
taken by ``jax.grad`` of the masked mean squared error. The kernel
(:mod:`jaxmeta.kernels.adapt`) computes the same function by other means (a
closed form for the first layer, a hand-written backward pass), so the two
check each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Layers = list[dict[str, jax.Array]]


def _dot(a: jax.Array, b: jax.Array, compute_dtype) -> jax.Array:
    """``a @ b`` with both operands rounded to ``compute_dtype``, accumulated in float32."""
    return jnp.matmul(a.astype(compute_dtype), b.astype(compute_dtype), preferred_element_type=jnp.float32,
                      precision=jax.lax.Precision.HIGHEST)


def mlp(layers: Sequence[dict], x: jax.Array, compute_dtype=jnp.float32) -> jax.Array:
    """The MLP of MeLU: ``x [rows, in]`` through the dense ``layers`` with ReLU between
    them and nothing after the last, whose width is 1; returns ``[rows]``. The first
    layer's product takes ``compute_dtype`` operands (the features and its weights),
    the others float32."""
    *body, last = layers
    h = x
    for i, layer in enumerate(body):
        h = jax.nn.relu(_dot(h, layer["w"], compute_dtype if i == 0 else jnp.float32) + layer["b"][None, :])
    return (_dot(h, last["w"], jnp.float32) + last["b"][None, :])[:, 0]


def masked_mse(predictions: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``(predictions - targets)**2`` over the rows where ``mask`` holds (0 if none)."""
    sq = jnp.where(mask, jnp.square(jnp.where(mask, predictions, 0) - jnp.where(mask, targets, 0)), 0)
    return jnp.sum(sq) / jnp.maximum(jnp.sum(mask), 1).astype(sq.dtype)


def adapt_one(support_x: jax.Array, support_y: jax.Array, support_mask: jax.Array, query_x: jax.Array,
              layers: Layers, *, lr: float, steps: int, compute_dtype=jnp.float32) -> tuple[Layers, jax.Array, jax.Array]:
    """One user: ``steps`` plain SGD steps on the masked support loss, then the query predictions.

    Args:
      support_x: ``[support, in]`` features; rows where ``support_mask`` is False are
        zeroed first, so that nothing in them reaches a result.
      support_y: ``[support]`` targets.
      support_mask: bool ``[support]``.
      query_x: ``[query, in]`` features.
      layers: the initial weights, ``[{"w": [in, out], "b": [out]}, ...]``.
      lr: the SGD rate.
      steps: SGD steps.
      compute_dtype: float32, or bfloat16: the features and the first layer's
        weights are rounded to it in that layer's product, which accumulates in
        float32; everything else is float32.

    Returns:
      ``(adapted layers, query predictions [query], losses [steps])``, the losses
      taken before each step.
    """
    support_x = jnp.where(support_mask[:, None], support_x, 0)

    def loss(ls):
        return masked_mse(mlp(ls, support_x, compute_dtype), support_y, support_mask)

    def step(ls, _):
        value, grads = jax.value_and_grad(loss)(ls)
        return jax.tree.map(lambda p, g: p - lr * g, ls, grads), value

    layers = jax.tree.map(lambda a: a.astype(jnp.float32), layers)
    adapted, losses = jax.lax.scan(step, layers, length=steps)
    return adapted, mlp(adapted, query_x, compute_dtype), losses


def fused_adapt_reference(support_x: jax.Array, support_y: jax.Array, support_mask: jax.Array, query_x: jax.Array,
                          layers: Layers, *, lr: float, steps: int, compute_dtype=jnp.float32):
    """:func:`adapt_one` for every user of a batch (leading axis ``[users]`` on all but
    ``layers``, which all users share); returns ``(layers, predictions, losses)`` with a
    leading ``[users]`` axis."""
    one = lambda sx, sy, sm, qx: adapt_one(sx, sy, sm, qx, layers, lr=lr, steps=steps,
                                           compute_dtype=compute_dtype)
    return jax.vmap(one)(support_x, support_y, support_mask, query_x)
