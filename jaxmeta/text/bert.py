"""A BERT encoder as pure functions over a pytree of weights.

The forward pass of Hugging Face's ``BertModel`` (absolute positions, post-layer
norm), written for ONE token sequence and batched by the caller with ``jax.vmap``;
the weights come from a ``model.safetensors`` file by :func:`params_from_tensors`
(numpy in, no torch). Dropout is absent: this is inference.

References:
  J. Devlin, M.-W. Chang, K. Lee and K. Toutanova. BERT: Pre-training of Deep
  Bidirectional Transformers for Language Understanding. NAACL 2019.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ("ACTIVATIONS", "BertConfig", "bert_hidden", "init_params", "params_from_tensors")

# config.json's hidden_act -> the function Hugging Face's ACT2FN gives it.
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # the exact, erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


class BertConfig(NamedTuple):
    """The fields of a BERT ``config.json`` the forward pass needs (hashable: a jit static).

    Attributes:
      vocab_size: rows of the token embedding table.
      hidden_size: width of every token vector.
      num_hidden_layers: transformer layers.
      num_attention_heads: heads per layer; ``hidden_size`` is a multiple of it.
      intermediate_size: width of the feed-forward layer.
      max_position_embeddings: rows of the position table (the longest input).
      type_vocab_size: rows of the token-type table.
      layer_norm_eps: the epsilon of every layer norm.
      hidden_act: a key of :data:`ACTIVATIONS` ("gelu" is the exact erf GELU).
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> BertConfig:
        """The config of a Hugging Face ``config.json`` (``model_type`` "bert").

        Raises:
          ValueError: another model type, an activation this module lacks, a
            position scheme other than absolute, or a missing field.
        """
        kind = config.get("model_type", "bert")
        if kind != "bert":
            raise ValueError(
                f"config.json has model_type={kind!r}; this encoder runs BERT models (model_type 'bert', e.g. "
                "all-MiniLM-L6-v2): pick a BERT-based sentence-transformers folder."
            )
        position = config.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise ValueError(f"config.json has position_embedding_type={position!r}; only 'absolute' is supported.")
        act = config.get("hidden_act", "gelu")
        if act not in ACTIVATIONS:
            raise ValueError(f"config.json has hidden_act={act!r}; supported: {sorted(ACTIVATIONS)}.")
        try:
            return cls(
                vocab_size=int(config["vocab_size"]),
                hidden_size=int(config["hidden_size"]),
                num_hidden_layers=int(config["num_hidden_layers"]),
                num_attention_heads=int(config["num_attention_heads"]),
                intermediate_size=int(config["intermediate_size"]),
                max_position_embeddings=int(config.get("max_position_embeddings", 512)),
                type_vocab_size=int(config.get("type_vocab_size", 2)),
                layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
                hidden_act=act,
            )
        except KeyError as err:
            raise ValueError(f"config.json lacks {err.args[0]!r}, which a BERT config needs.") from None


def _linear(rng: np.random.Generator, fan_in: int, fan_out: int) -> dict:
    return {"w": 0.02 * rng.standard_normal((fan_in, fan_out), dtype=np.float32),
            "b": 0.02 * rng.standard_normal(fan_out, dtype=np.float32)}


def _norm(rng: np.random.Generator, width: int) -> dict:
    return {"scale": 1.0 + 0.1 * rng.standard_normal(width, dtype=np.float32),
            "bias": 0.1 * rng.standard_normal(width, dtype=np.float32)}


def init_params(config: BertConfig, *, seed: int = 0) -> dict:
    """Random weights of the layout :func:`params_from_tensors` returns (for tests and examples).

    Example:
      >>> config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
      ...                     intermediate_size=16)
      >>> params = init_params(config)
      >>> bert_hidden(params, jnp.array([2, 5, 3, 0]), jnp.array([True, True, True, False]), config=config).shape
      (4, 8)
    """
    rng = np.random.default_rng(seed)
    h, i = config.hidden_size, config.intermediate_size
    table = lambda rows: 0.5 * rng.standard_normal((rows, h), dtype=np.float32)
    return {
        "embeddings": {"token": table(config.vocab_size), "position": table(config.max_position_embeddings),
                       "type": table(config.type_vocab_size), "norm": _norm(rng, h)},
        "layers": [
            {"query": _linear(rng, h, h), "key": _linear(rng, h, h), "value": _linear(rng, h, h),
             "attention_out": _linear(rng, h, h), "attention_norm": _norm(rng, h),
             "intermediate": _linear(rng, h, i), "output": _linear(rng, i, h), "output_norm": _norm(rng, h)}
            for _ in range(config.num_hidden_layers)
        ],
    }


def params_from_tensors(tensors: Mapping[str, np.ndarray], config: BertConfig) -> dict:
    """The weights of a ``BertModel`` state dict, as the pytree :func:`bert_hidden` reads.

    Linear weights are transposed to ``[in, out]``; the pooler and buffers such
    as ``position_ids`` are left out. Names may carry a prefix (``bert.`` in
    checkpoints of task models).

    Args:
      tensors: name -> array, e.g. ``safetensors.numpy.load_file("model.safetensors")``.
      config: the model's config (checks every shape against it).

    Raises:
      ValueError: a tensor is missing or has a shape the config does not give.
    """
    anchor = "embeddings.word_embeddings.weight"
    prefixes = [name[: -len(anchor)] for name in tensors if name.endswith(anchor)]
    if len(prefixes) != 1:
        raise ValueError(
            f"expected one '{anchor}' tensor in the weights, found {len(prefixes)}; pass the weights of a BertModel."
        )
    prefix = prefixes[0]
    h, i = config.hidden_size, config.intermediate_size

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        key = prefix + name
        if key not in tensors:
            raise ValueError(f"the weights lack {key!r}; pass the weights of a BertModel matching config.json.")
        value = np.asarray(tensors[key])
        if value.shape != shape:
            raise ValueError(f"weight {key!r} has shape {value.shape}, but config.json implies {shape}.")
        return value.astype(np.float32)

    def linear(name: str, fan_in: int, fan_out: int) -> dict:
        return {"w": get(f"{name}.weight", (fan_out, fan_in)).T.copy(), "b": get(f"{name}.bias", (fan_out,))}

    def norm(name: str) -> dict:
        return {"scale": get(f"{name}.weight", (h,)), "bias": get(f"{name}.bias", (h,))}

    layers = []
    for n in range(config.num_hidden_layers):
        at = f"encoder.layer.{n}."
        layers.append({
            "query": linear(at + "attention.self.query", h, h),
            "key": linear(at + "attention.self.key", h, h),
            "value": linear(at + "attention.self.value", h, h),
            "attention_out": linear(at + "attention.output.dense", h, h),
            "attention_norm": norm(at + "attention.output.LayerNorm"),
            "intermediate": linear(at + "intermediate.dense", h, i),
            "output": linear(at + "output.dense", i, h),
            "output_norm": norm(at + "output.LayerNorm"),
        })
    return {
        "embeddings": {
            "token": get("embeddings.word_embeddings.weight", (config.vocab_size, h)),
            "position": get("embeddings.position_embeddings.weight", (config.max_position_embeddings, h)),
            "type": get("embeddings.token_type_embeddings.weight", (config.type_vocab_size, h)),
            "norm": norm("embeddings.LayerNorm"),
        },
        "layers": layers,
    }


def _layer_norm(p: dict, x: jax.Array, eps: float) -> jax.Array:
    """Layer norm of ``x [length, width]`` (biased variance, as torch's)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"][None, :] + p["bias"][None, :]


def _dense(p: dict, x: jax.Array) -> jax.Array:
    return x @ p["w"] + p["b"][None, :]


def bert_hidden(params: dict, ids: jax.Array, mask: jax.Array, *, config: BertConfig) -> jax.Array:
    """The last layer's token vectors of one sequence.

    Args:
      params: weights as :func:`params_from_tensors` gives them.
      ids: int ``[length]`` token ids (token type 0 throughout: one segment).
      mask: bool ``[length]``, False at padding. Padded positions are never
        attended to (their scores get the dtype's lowest value, as in Hugging
        Face), so they change no real token's vector; their own vectors are
        meaningless and must be masked by the caller's pooling.
      config: the model's config.

    Returns:
      float32 ``[length, hidden_size]``.
    """
    if ids.ndim != 1 or mask.shape != ids.shape:
        raise ValueError(
            f"bert_hidden takes one sequence: ids [length] and mask [length], got {ids.shape} and {mask.shape}; "
            "batch with jax.vmap."
        )
    length = ids.shape[0]
    if length > config.max_position_embeddings:
        raise ValueError(f"{length} tokens exceed max_position_embeddings={config.max_position_embeddings}.")
    emb = params["embeddings"]
    h = emb["token"][ids] + emb["position"][:length] + emb["type"][0][None, :]
    h = _layer_norm(emb["norm"], h, config.layer_norm_eps)
    heads = config.num_attention_heads
    width = config.hidden_size // heads
    bias = jnp.where(mask, 0.0, jnp.finfo(h.dtype).min)[None, None, :]  # [1, 1, keys]
    act = ACTIVATIONS[config.hidden_act]
    for layer in params["layers"]:
        # heads first, [heads, length, width]: XLA:CPU runs these batched products ~3x faster than
        # the same contraction written as one einsum over [length, heads, width]
        q, k, v = (_dense(layer[n], h).reshape(length, heads, width).transpose(1, 0, 2)
                   for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(width) + bias
        context = (jax.nn.softmax(scores, axis=-1) @ v).transpose(1, 0, 2).reshape(length, -1)
        h = _layer_norm(layer["attention_norm"], _dense(layer["attention_out"], context) + h, config.layer_norm_eps)
        inner = act(_dense(layer["intermediate"], h))
        h = _layer_norm(layer["output_norm"], _dense(layer["output"], inner) + h, config.layer_norm_eps)
    return h
