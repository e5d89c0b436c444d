"""MeLU: per-field embeddings of user and item features, then an MLP adapted per user.

Inputs are a dict keyed by field name, for the rows of ONE task (one user):

* single-valued categorical field (``kind="categorical"``): int ``[rows]``; 0 is the
  out-of-vocabulary (OOV) id, known values are ``1 .. size - 1``;
* multi-valued categorical field (``kind="multi"``: genres, actors): int
  ``[rows, max_values]``; -1 marks an empty slot, 0 is OOV, ``1 .. size - 1`` known;
* numeric field (``kind="numeric"``): float ``[rows]``;
* vector field (``kind="vector"``: an item's text vector): float ``[rows, size]``.

A field is described by any object with the attributes ``name``, ``kind``, ``size``
(vocabulary size including the OOV id 0; 1 for numeric fields; the width of a
vector field) and ``max_values`` (slots of a multi-valued field), such as
``jaxmeta.data.features.FieldSpec``.

Every field becomes one ``embed_dim`` vector per row: a table lookup, the mean of
the embeddings of the non-empty slots (MeLU's pooling of genres, directors and
actors), or a learned affine projection of the number or of the vector. :func:`embed_fields` and
:func:`init_field_embeddings` are shared with :mod:`jaxmeta.models.two_tower`.

References:
  Lee, Im, Jang, Cho, Chung, "MeLU: Meta-Learned User Preference Estimator for
  Cold-Start Recommendation", KDD 2019 (code: github.com/hoyeoplee/MeLU).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxmeta.models._model import Model, Stage

KINDS = ("categorical", "multi", "numeric", "vector")


def check_fields(fields: Sequence[Any], *, model: str) -> tuple[Any, ...]:
    """Validates field descriptions (any objects with name/kind/size/max_values).

    Raises:
      ValueError: an unknown kind, a repeated name, a vocabulary size below 1, or a
        multi-valued field without a positive ``max_values``.
    """
    fields = tuple(fields)
    if not fields:
        raise ValueError(f"{model}: got no fields; pass at least one jaxmeta.data.features.FieldSpec.")
    seen = set()
    for f in fields:
        for attr in ("name", "kind", "size", "max_values"):
            if not hasattr(f, attr):
                raise TypeError(
                    f"{model}: field {f!r} has no attribute {attr!r}; "
                    "pass jaxmeta.data.features.FieldSpec(name, kind, size, max_values) objects."
                )
        if f.kind not in KINDS:
            raise ValueError(f"{model}: field {f.name!r} has kind {f.kind!r}; pass one of {KINDS}.")
        if f.name in seen:
            raise ValueError(f"{model}: field name {f.name!r} appears twice; give every field its own name.")
        seen.add(f.name)
        if f.kind != "numeric" and int(f.size) < 1:
            want = "the vector's width" if f.kind == "vector" else "the vocabulary size including the OOV id 0"
            raise ValueError(f"{model}: field {f.name!r} has size={f.size}; pass {want} (>= 1).")
        if f.kind == "multi" and (f.max_values is None or int(f.max_values) < 1):
            raise ValueError(
                f"{model}: multi-valued field {f.name!r} has max_values={f.max_values}; "
                "pass the number of slots (>= 1)."
            )
    return fields


def init_field_embeddings(key: jax.Array, fields: Sequence[Any], embed_dim: int, scale: float) -> dict:
    """One parameter entry per field: a table ``[size, embed_dim]`` for categorical
    and multi-valued fields, ``{"w": [embed_dim], "b": [embed_dim]}`` for numeric ones,
    ``{"w": [size, embed_dim], "b": [embed_dim]}`` (the projection) for vector ones.

    Weights are normal with standard deviation ``scale``, biases zero: a unit-norm
    vector (a normalised sentence vector) is projected to the scale of a table row.
    """
    params = {}
    for k, f in zip(jax.random.split(key, len(fields)), fields):
        if f.kind == "vector":
            params[f.name] = {
                "w": scale * jax.random.normal(k, (int(f.size), embed_dim), jnp.float32),
                "b": jnp.zeros((embed_dim,), jnp.float32),
            }
        elif f.kind == "numeric":
            params[f.name] = {
                "w": scale * jax.random.normal(k, (embed_dim,), jnp.float32),
                "b": jnp.zeros((embed_dim,), jnp.float32),
            }
        else:
            params[f.name] = scale * jax.random.normal(k, (int(f.size), embed_dim), jnp.float32)
    return params


def check_inputs(x: Any, fields: Sequence[Any], *, model: str) -> int:
    """Checks that ``x`` holds every field with the right rank and dtype; returns
    the number of rows. Extra entries of ``x`` are ignored."""
    if not isinstance(x, Mapping):
        raise ValueError(
            f"{model} expects a dict of per-row arrays keyed by field name, got {type(x).__name__}; "
            f"pass {{{', '.join(repr(f.name) for f in fields)}: ...}}."
        )
    missing = [f.name for f in fields if f.name not in x]
    if missing:
        raise ValueError(
            f"{model}: the input has no field {', '.join(map(repr, missing))} (it has {sorted(map(str, x))}); "
            "pass one array per FieldSpec, keyed by its name."
        )
    rows = None
    for f in fields:
        a = x[f.name]
        shape, dtype = jnp.shape(a), jnp.result_type(a)
        want = {"multi": "[rows, max_values]", "vector": "[rows, size]"}.get(f.kind, "[rows]")
        width = {"multi": f.max_values, "vector": f.size}.get(f.kind)
        if len(shape) != (1 if width is None else 2) or (width is not None and shape[1] != int(width)):
            raise ValueError(
                f"{model}: field {f.name!r} ({f.kind}) has shape {shape}; pass {want}"
                + (f" with max_values={f.max_values}" if f.kind == "multi" else "")
                + (f" with size={f.size}" if f.kind == "vector" else "")
                + " for the rows of one task (vmap over tasks outside the model)."
            )
        if f.kind == "vector" and not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{model}: field {f.name!r} (vector) has dtype {dtype}; pass float32 vectors.")
        if f.kind in ("categorical", "multi") and not jnp.issubdtype(dtype, jnp.integer):
            raise TypeError(f"{model}: field {f.name!r} ({f.kind}) has dtype {dtype}; pass integer ids (int32).")
        if rows is not None and shape[0] != rows:
            raise ValueError(
                f"{model}: field {f.name!r} has {shape[0]} rows but {fields[0].name!r} has {rows}; "
                "pass the same rows for every field."
            )
        rows = shape[0]
    return rows


def embed_fields(params: dict, fields: Sequence[Any], x: Mapping[str, jax.Array]) -> jax.Array:
    """Concatenated per-field vectors ``[rows, len(fields) * embed_dim]``, in the order of ``fields``.

    Ids outside ``[0, size)`` of a categorical field, and outside ``[-1, size)`` of
    a multi-valued one, are read as the OOV id 0 (a value the vocabulary does not
    know is out of vocabulary). Empty slots (-1) are masked with ``jnp.where``
    before the sum, so they change neither the output nor any gradient; a row
    whose slots are all empty pools to zeros. A vector field is projected,
    ``x @ w + b``.
    """
    parts = []
    for f in fields:
        p, a = params[f.name], x[f.name]
        if f.kind == "vector":
            parts.append(a.astype(jnp.float32) @ p["w"] + p["b"][None, :])
            continue
        if f.kind == "numeric":
            v = a.astype(jnp.float32)
            parts.append(v[:, None] * p["w"][None, :] + p["b"][None, :])
            continue
        ids = jnp.where((a >= 0) & (a < p.shape[0]), a, 0)
        if f.kind == "categorical":
            parts.append(p[ids])
            continue
        filled = a != -1
        summed = jnp.sum(jnp.where(filled[..., None], p[ids], 0.0), axis=1)
        count = jnp.sum(filled, axis=1).astype(summed.dtype)
        parts.append(summed / jnp.maximum(count, 1.0)[:, None])
    return jnp.concatenate(parts, axis=-1)


def init_layers(key: jax.Array, widths: Sequence[int]) -> list[dict]:
    """Dense layers ``[{"w": [in, out], "b": [out]}, ...]`` for consecutive ``widths``,
    He-normal weights (they feed ReLUs) and zero biases, as :func:`jaxmeta.models.embedding_mlp`."""
    layers = []
    for k, fan_in, fan_out in zip(jax.random.split(key, len(widths) - 1), widths[:-1], widths[1:]):
        w = jax.random.normal(k, (fan_in, fan_out), jnp.float32) * jnp.sqrt(2.0 / fan_in)
        layers.append({"w": w, "b": jnp.zeros((fan_out,), jnp.float32)})
    return layers


def apply_layers(layers: Sequence[dict], h: jax.Array) -> jax.Array:
    """ReLU between the layers, none after the last."""
    *body, last = layers
    for layer in body:
        h = jax.nn.relu(h @ layer["w"] + layer["b"][None, :])
    return h @ last["w"] + last["b"][None, :]


def melu(
    fields: Sequence[Any],
    *,
    embed_dim: int = 32,
    hidden: Sequence[int] = (64, 64),
    output_bias: float = 0.0,
    embed_scale: float = 0.1,
) -> Model:
    """Builds MeLU.

    Every field has its own embedding (a table, or an affine projection for a
    numeric field); a multi-valued field is the mean of the embeddings of its
    non-empty slots, as in MeLU's code. The per-field vectors are concatenated
    (MeLU's 8 fields of 32 give 256) and fed to ``256 -> 64 -> 64 -> 1`` with ReLUs.
    As published, the three dense layers are the fast weights adapted per user and
    the embeddings are slow (meta-learned, shared by all users); the head (what
    ANIL adapts) is the last layer.

    Parameters are ``{"embeddings": {name: [size, embed_dim] | {"w": [embed_dim],
    "b": [embed_dim]} | {"w": [size, embed_dim], "b": [embed_dim]}}, "layers":
    [{"w": [in, out], "b": [out]}, ...]}`` (a table, a numeric field's
    projection, a vector field's projection; all slow). The layers
    are He-normal with zero biases (not PyTorch's uniform defaults), embeddings
    normal with standard deviation ``embed_scale``.

    Args:
      fields: the input fields, in the order their vectors are concatenated; any
        objects with ``name``, ``kind``, ``size`` and ``max_values`` (see the module
        docstring for the input of each kind).
      embed_dim: width of every field's vector (32 in MeLU).
      hidden: widths of the hidden ReLU layers ((64, 64) in MeLU).
      output_bias: initial output bias (e.g. the mean rating).
      embed_scale: standard deviation of the initial embeddings.

    Returns:
      A :class:`Model` whose ``apply(params, x)`` maps one task's dict of fields
      (leaves ``[rows]`` or ``[rows, max_values]``) to float32 ratings ``[rows]``.
      Ids the vocabulary does not have are read as OOV; empty slots (-1) and
      all-empty rows change no output or gradient (see :func:`embed_fields`).

    Raises:
      ValueError: at build time for bad fields; when applied, if the input lacks a
        field or a field has the wrong rank (``TypeError`` for non-integer ids).

    Example:
      >>> from jaxmeta.data.features import FieldSpec
      >>> fields = [FieldSpec("age", "categorical", 8, 1), FieldSpec("genre", "multi", 19, 3),
      ...           FieldSpec("year", "numeric", 1, 1)]
      >>> model = melu(fields, embed_dim=4, hidden=(8,))
      >>> params = model.init(jax.random.key(0))
      >>> [layer["w"].shape for layer in params["layers"]]
      [(12, 8), (8, 1)]
      >>> x = {"age": jnp.array([1, 0]), "genre": jnp.array([[3, 5, -1], [-1, -1, -1]]),
      ...      "year": jnp.array([0.5, -1.0])}
      >>> model.apply(params, x).shape
      (2,)

    References:
      Lee et al., "MeLU: Meta-Learned User Preference Estimator for Cold-Start
      Recommendation", KDD 2019.
    """
    fields = check_fields(fields, model="melu")
    if embed_dim < 1 or any(int(h) < 1 for h in hidden):
        raise ValueError(f"melu: embed_dim={embed_dim}, hidden={tuple(hidden)}; pass positive widths.")
    widths = (len(fields) * embed_dim, *(int(h) for h in hidden), 1)
    last = str(len(widths) - 2)

    def init(key: jax.Array):
        k_embed, k_layers = jax.random.split(key)
        layers = init_layers(k_layers, widths)
        layers[-1]["b"] = layers[-1]["b"] + output_bias
        return {"embeddings": init_field_embeddings(k_embed, fields, embed_dim, embed_scale), "layers": layers}

    def embed(params, x) -> jax.Array:
        check_inputs(x, fields, model="melu")
        return embed_fields(params["embeddings"], fields, x)

    def apply_embedded(params, h: jax.Array) -> jax.Array:
        return apply_layers(params["layers"], h)[:, 0]

    def after_dense(params, z: jax.Array) -> jax.Array:
        layers = params["layers"]
        return (z if len(layers) == 1 else apply_layers(layers[1:], jax.nn.relu(z)))[:, 0]

    return Model(
        init=init,
        apply=lambda params, x: apply_embedded(params, embed(params, x)),
        is_fast=lambda path: path[0] == "layers",
        is_head=lambda path: path[:2] == ("layers", last),
        stage=Stage(embed, apply_embedded, is_embedding=lambda path: path[0] == "embeddings", dense=("layers", "0"),
                    after_dense=after_dense, mlp=("layers",)),
    )
