"""A two-tower ranking model for implicit feedback (clicks), with the user tower fast.

Each tower embeds its fields as MeLU does (one table per field, multi-valued fields
pooled as the mean of their non-empty slots, a vector field such as an item's text
vector through a learned projection; see :func:`jaxmeta.models.melu.embed_fields`)
and maps the concatenation through an MLP to an ``out_dim`` vector. The score is
the dot product of the user and item vectors plus a bias: a logit, trained with
``loss="bce"`` on 0/1 targets.

Which weights are fast: the user tower's dense layers and the logit bias.
Adapting the user side personalises the user vector (and the user's base click
rate) to the clicks in the support set, while the item tower and every embedding
table stay shared. That keeps the model a two-tower model after adaptation: item
vectors do not depend on the user, so they can be computed once for all users
and ranked by an inner product (nearest-neighbour retrieval); adapting the item
tower per user would make every user re-encode the whole catalogue. The head,
what ANIL adapts, is the user tower's output layer with the bias: a linear map
from the user's hidden features to the user vector.

References:
  Covington, Adams, Sargin, "Deep Neural Networks for YouTube Recommendations",
  RecSys 2016; Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large
  Corpus Item Recommendations", RecSys 2019 (two-tower models).
  Lee et al., "MeLU", KDD 2019 (the field embeddings and the per-user adaptation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxmeta.models._model import Model
from jaxmeta.models.melu import (
    apply_layers,
    check_fields,
    check_inputs,
    embed_fields,
    init_field_embeddings,
    init_layers,
)


def two_tower(
    user_fields: Sequence[Any],
    item_fields: Sequence[Any],
    *,
    embed_dim: int = 32,
    hidden: Sequence[int] = (64,),
    out_dim: int = 32,
    output_bias: float = 0.0,
    embed_scale: float = 0.1,
) -> Model:
    """Builds the two-tower click model.

    Parameters are ``{"user": {"embeddings": {...}, "layers": [...]}, "item":
    {"embeddings": {...}, "layers": [...]}, "bias": []}`` (embeddings and layers as
    in :func:`jaxmeta.models.melu.melu`; each tower's layers are
    ``len(fields) * embed_dim -> *hidden -> out_dim``, ReLU between, none after).
    Fast: ``("user", "layers", ...)`` and ``("bias",)``; head: the user tower's last
    layer and ``("bias",)`` (the module docstring says why).

    Args:
      user_fields: fields of the user tower (objects with ``name``, ``kind``,
        ``size``, ``max_values``, as for :func:`jaxmeta.models.melu.melu`).
      item_fields: fields of the item tower; names must differ from the user's.
      embed_dim: width of every field's vector.
      hidden: widths of each tower's hidden ReLU layers.
      out_dim: width of the user and item vectors whose dot product is the score.
      output_bias: initial logit bias (e.g. the log-odds of the click rate).
      embed_scale: standard deviation of the initial embeddings.

    Returns:
      A :class:`Model` whose ``apply(params, x)`` maps one task's dict of user and
      item fields (leaves ``[rows]`` or ``[rows, max_values]``) to float32 logits
      ``[rows]``. OOV ids and empty slots are handled as in MeLU.

    Raises:
      ValueError: at build time for bad or shared field names; when applied, if the
        input lacks a field or a field has the wrong rank.

    Example:
      >>> from jaxmeta.data.features import FieldSpec
      >>> model = two_tower([FieldSpec("age", "categorical", 8, 1)],
      ...                   [FieldSpec("item", "categorical", 50, 1), FieldSpec("genre", "multi", 19, 3)],
      ...                   embed_dim=4, hidden=(8,), out_dim=5)
      >>> params = model.init(jax.random.key(0))
      >>> [layer["w"].shape for layer in params["item"]["layers"]]
      [(8, 8), (8, 5)]
      >>> x = {"age": jnp.array([2, 2]), "item": jnp.array([7, 0]),
      ...      "genre": jnp.array([[3, -1, -1], [1, 2, 4]])}
      >>> model.apply(params, x).shape
      (2,)

    References:
      Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
      Recommendations", RecSys 2019.
    """
    user_fields = check_fields(user_fields, model="two_tower (user_fields)")
    item_fields = check_fields(item_fields, model="two_tower (item_fields)")
    shared = sorted({f.name for f in user_fields} & {f.name for f in item_fields})
    if shared:
        raise ValueError(
            f"two_tower: fields {shared} are in both towers; the input dict has one entry per name, "
            "so give each tower its own fields."
        )
    if embed_dim < 1 or out_dim < 1 or any(int(h) < 1 for h in hidden):
        raise ValueError(
            f"two_tower: embed_dim={embed_dim}, hidden={tuple(hidden)}, out_dim={out_dim}; pass positive widths."
        )
    towers = {"user": user_fields, "item": item_fields}
    last = str(len(hidden))

    def init(key: jax.Array):
        params = {}
        for k, (side, fields) in zip(jax.random.split(key, 2), towers.items()):
            k_embed, k_layers = jax.random.split(k)
            params[side] = {
                "embeddings": init_field_embeddings(k_embed, fields, embed_dim, embed_scale),
                "layers": init_layers(k_layers, (len(fields) * embed_dim, *(int(h) for h in hidden), out_dim)),
            }
        params["bias"] = jnp.full((), output_bias, jnp.float32)
        return params

    def apply(params, x) -> jax.Array:
        check_inputs(x, user_fields + item_fields, model="two_tower")
        u, v = (
            apply_layers(params[side]["layers"], embed_fields(params[side]["embeddings"], fields, x))
            for side, fields in towers.items()
        )
        return jnp.sum(u * v, axis=-1) + params["bias"]

    return Model(
        init=init,
        apply=apply,
        is_fast=lambda path: path[0] == "bias" or path[:2] == ("user", "layers"),
        is_head=lambda path: path[0] == "bias" or path[:3] == ("user", "layers", last),
    )
