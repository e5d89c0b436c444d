"""An MLP on concatenated field embeddings: the shape of MeLU and most CTR models.

Each input row is one id per categorical field (user and item side features). Every
field has its own embedding table (slow weights, shared by all users); the
embeddings are concatenated and fed to an MLP whose layers are the fast weights
adapted per user.

References:
  Lee et al., "MeLU: Meta-Learned User Preference Estimator for Cold-Start
  Recommendation", KDD 2019.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxmeta.models._model import Model, Stage


def embedding_mlp(
    vocab_sizes: Sequence[int],
    *,
    embed_dim: int = 8,
    hidden: Sequence[int] = (32, 32),
    output_bias: float = 0.0,
    embed_scale: float = 0.1,
) -> Model:
    """Builds the model.

    Parameters are ``{"embeddings": [table_f [vocab_f, embed_dim], ...],
    "layers": [{"w": [in, out], "b": [out]}, ...]}``. The layers are fast, the
    embeddings slow; the head is the last layer.

    Args:
      vocab_sizes: number of ids of each field; ids must lie in ``[0, vocab)``
        (out-of-range ids are clamped by JAX's gather, silently).
      embed_dim: embedding width per field.
      hidden: widths of the hidden ReLU layers.
      output_bias: initial output bias (e.g. the mean rating).
      embed_scale: standard deviation of the initial embeddings.

    Returns:
      A :class:`Model` whose ``apply(params, x)`` maps int ``x [rows, fields]`` to
      float32 predictions ``[rows]``.

    Example:
      >>> model = embedding_mlp([3, 5], embed_dim=4, hidden=(8,))
      >>> params = model.init(jax.random.key(0))
      >>> model.apply(params, jnp.array([[0, 4], [2, 1]])).shape
      (2,)
    """
    vocab_sizes = tuple(int(v) for v in vocab_sizes)
    if not vocab_sizes or min(vocab_sizes) < 1:
        raise ValueError(f"vocab_sizes={vocab_sizes}: pass one positive vocabulary size per field.")
    widths = (len(vocab_sizes) * embed_dim, *hidden, 1)
    last = str(len(widths) - 2)

    def init(key: jax.Array):
        keys = jax.random.split(key, len(vocab_sizes) + len(widths) - 1)
        tables = [
            embed_scale * jax.random.normal(k, (v, embed_dim), jnp.float32)
            for k, v in zip(keys, vocab_sizes)
        ]
        layers = []
        for k, fan_in, fan_out in zip(keys[len(vocab_sizes) :], widths[:-1], widths[1:]):
            w = jax.random.normal(k, (fan_in, fan_out), jnp.float32) * jnp.sqrt(2.0 / fan_in)
            layers.append({"w": w, "b": jnp.zeros((fan_out,), jnp.float32)})
        layers[-1]["b"] = layers[-1]["b"] + output_bias
        return {"embeddings": tables, "layers": layers}

    def embed(params, x: jax.Array) -> jax.Array:
        if x.ndim != 2 or x.shape[-1] != len(vocab_sizes):
            raise ValueError(
                f"embedding_mlp expects int ids of shape [rows, {len(vocab_sizes)}], got {x.shape}; "
                "vmap over tasks outside the model."
            )
        return jnp.concatenate([t[x[:, f]] for f, t in enumerate(params["embeddings"])], axis=-1)

    def apply_embedded(params, h: jax.Array) -> jax.Array:
        first = params["layers"][0]
        return after_dense(params, h @ first["w"] + first["b"][None, :])

    def after_dense(params, z: jax.Array) -> jax.Array:
        for layer in params["layers"][1:]:
            z = jax.nn.relu(z) @ layer["w"] + layer["b"][None, :]
        return z[:, 0]

    return Model(
        init=init,
        apply=lambda params, x: apply_embedded(params, embed(params, x)),
        is_fast=lambda path: path[0] == "layers",
        is_head=lambda path: path[:2] == ("layers", last),
        stage=Stage(embed, apply_embedded, is_embedding=lambda path: path[0] == "embeddings", dense=("layers", "0"),
                    after_dense=after_dense, mlp=("layers",)),
    )
