"""Biased matrix factorisation with the user's vector and bias as the fast weights.

Classical biased MF predicts ``mu + b_i + b_u + <p_u, q_i>`` with one learned
``p_u, b_u`` per user id. A new user has no id embedding, so here the user part is
a single vector and bias shared by all users: its value is the meta-learned
initialisation, and the inner loop adapts it to each user's support ratings
(the user is the task). Item vectors and biases and the global bias are slow.
A fixed item representation with a per-user linear model on top makes the user
part exactly a linear head, which is what ANIL adapts too.

References:
  Koren, Bell, Volinsky, "Matrix Factorization Techniques for Recommender
  Systems", IEEE Computer 2009 (biased MF).
  Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
  Networks", ICML 2017 (the user part as a meta-learned initialisation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta.models._model import Model


def biased_mf(
    num_items: int,
    *,
    dim: int = 32,
    field: str = "item",
    global_bias: float = 0.0,
    init_scale: float = 0.1,
) -> Model:
    """Builds biased matrix factorisation for new users.

    The prediction for item ``i`` is ``global_bias + item_bias[i] + user_bias +
    <user_vector, item_vector[i]>``. Parameters are ``{"user": {"vector": [dim],
    "bias": []}, "items": {"vectors": [num_items + 1, dim], "biases":
    [num_items + 1]}, "global_bias": []}``; ``"user"`` is fast and is also the head.

    There is no user-id table (and so no ``num_users``): users are tasks, and
    every user starts from the same meta-learned ``"user"`` part.

    Out-of-vocabulary items: row 0 of the item tables is the OOV item; it is zero
    at init and masked to zero in ``apply`` (so it never receives a gradient), and
    ids outside ``[1, num_items]`` are read as OOV. An item the model has never
    seen is therefore predicted as ``global_bias + user_bias``: the user's adapted
    mean rating, with no item-specific term.

    Args:
      num_items: number of known items ``V``; item ids are ``1 .. V`` and 0 is OOV
        (pass ``FieldSpec.size - 1`` for a features FieldSpec).
      dim: width of the user and item vectors.
      field: key of the item ids (int ``[rows]``) in the input dict.
      global_bias: initial global bias (e.g. the mean rating).
      init_scale: standard deviation of the initial user and item vectors.

    Returns:
      A :class:`Model` whose ``apply(params, x)`` maps one task's ``{"item": int
      [rows], ...}`` (other entries ignored) to float32 ratings ``[rows]``.

    Raises:
      ValueError: for ``num_items < 1`` or ``dim < 1``; when applied, if the input
        lacks ``field`` or it is not ``[rows]`` (``TypeError`` for non-integer ids).

    Example:
      >>> model = biased_mf(5, dim=3, global_bias=3.5)
      >>> params = model.init(jax.random.key(0))
      >>> params["items"]["vectors"].shape
      (6, 3)
      >>> model.apply(params, {"item": jnp.array([0, 9])}).tolist()  # two OOV items
      [3.5, 3.5]

    References:
      Koren, Bell, Volinsky, "Matrix Factorization Techniques for Recommender
      Systems", IEEE Computer 2009.
    """
    if int(num_items) < 1 or int(dim) < 1:
        raise ValueError(
            f"biased_mf: num_items={num_items}, dim={dim}; pass positive integers (num_items excludes OOV id 0)."
        )
    num_items, dim = int(num_items), int(dim)

    def init(key: jax.Array):
        k_user, k_items = jax.random.split(key)
        items = init_scale * jax.random.normal(k_items, (num_items + 1, dim), jnp.float32)
        return {
            "user": {
                "vector": init_scale * jax.random.normal(k_user, (dim,), jnp.float32),
                "bias": jnp.zeros((), jnp.float32),
            },
            "items": {"vectors": items.at[0].set(0.0), "biases": jnp.zeros((num_items + 1,), jnp.float32)},
            "global_bias": jnp.full((), global_bias, jnp.float32),
        }

    def apply(params, x) -> jax.Array:
        if not isinstance(x, Mapping) or field not in x:
            got = sorted(map(str, x)) if isinstance(x, Mapping) else type(x).__name__
            raise ValueError(
                f"biased_mf: the input has no field {field!r} (got {got}); pass {{{field!r}: int [rows]}}."
            )
        item = x[field]
        if jnp.ndim(item) != 1:
            raise ValueError(
                f"biased_mf: field {field!r} has shape {jnp.shape(item)}; pass int ids [rows] for the rows "
                "of one task (vmap over tasks outside the model)."
            )
        if not jnp.issubdtype(jnp.result_type(item), jnp.integer):
            raise TypeError(f"biased_mf: field {field!r} has dtype {jnp.result_type(item)}; pass integer ids (int32).")
        known = (item >= 1) & (item <= num_items)
        ids = jnp.where(known, item, 0)
        vectors = jnp.where(known[:, None], params["items"]["vectors"][ids], 0.0)
        biases = jnp.where(known, params["items"]["biases"][ids], 0.0)
        user = params["user"]
        return params["global_bias"] + user["bias"] + biases + vectors @ user["vector"]

    is_user = lambda path: path[0] == "user"
    return Model(init=init, apply=apply, is_fast=is_user, is_head=is_user)


def biased_mf_by_id(
    known_items: Any,
    *,
    key: str = "item_id",
    dim: int = 32,
    global_bias: float = 0.0,
    init_scale: float = 0.1,
    rows: int | None = None,
) -> Model:
    """:func:`biased_mf` read from raw item ids, for data whose item features hold no id field.

    The input's ``key`` entry holds the raw item ids (what
    :func:`jaxmeta.evaluation.with_item_ids` adds to every task, and what
    :class:`jaxmeta.serve.Recommender` passes); the ``V`` distinct
    ``known_items`` (the items with training ratings) get rows ``1 .. V`` and
    every other id is the OOV item. Parameters and fast/slow split are those of
    :func:`biased_mf` with ``num_items = V``; ``rows`` (at least ``V + 1``) gives the
    item table more rows, never read (e.g. to split it evenly over devices).

    Example:
      >>> model = biased_mf_by_id([40, 7, 40], dim=2, global_bias=3.0)
      >>> params = model.init(jax.random.key(0))
      >>> params["items"]["vectors"].shape  # OOV + items 7 and 40
      (3, 2)
      >>> model.apply(params, {"item_id": jnp.array([5])}).tolist()  # an unknown item
      [3.0]
    """
    items = np.unique(np.asarray(known_items).astype(np.int64))
    if items.size == 0:
        raise ValueError("biased_mf_by_id: known_items is empty; pass the ids of the items with training ratings.")
    if rows is not None and rows < items.size + 1:
        raise ValueError(f"biased_mf_by_id: rows={rows} is fewer than the {items.size} known items and the OOV row; "
                         f"pass rows >= {items.size + 1}, or None.")
    table = jnp.asarray(items.astype(np.int32))
    mf = biased_mf(items.size if rows is None else rows - 1, dim=dim, global_bias=global_bias, init_scale=init_scale)

    def apply(params, x) -> jax.Array:
        if not isinstance(x, Mapping) or key not in x:
            got = sorted(map(str, x)) if isinstance(x, Mapping) else type(x).__name__
            raise ValueError(f"biased_mf_by_id: the input has no field {key!r} (got {got}); pass the raw item ids "
                             "there (jaxmeta.evaluation.with_item_ids adds them to tasks).")
        ids = jnp.asarray(x[key]).astype(jnp.int32)
        pos = jnp.clip(jnp.searchsorted(table, ids), 0, items.size - 1)
        return mf.apply(params, {"item": jnp.where(table[pos] == ids, pos + 1, 0).astype(jnp.int32)})

    return Model(init=mf.init, apply=apply, is_fast=mf.is_fast, is_head=mf.is_head)
