"""Hybrid MeLU: MeLU's feature network plus item ids, item vectors and bias terms.

MeLU (:mod:`jaxmeta.models.melu`) sees items only through their features, so it
cannot learn what a rating table says most plainly: that one movie is rated half a
star above another with the same genres and cast. The classic bias model
``mu + b_i + b_u`` and matrix factorisation read that per-item signal directly,
and on MovieLens they match or beat feature-only meta-learners. The hybrid keeps
both:

``r = mu + b_u + b_i + <p_u, q_i> + mlp(features)``

* ``mu``: the global bias (slow);
* ``b_u``, ``p_u``: the user's bias and vector, the **fast** weights every user
  adapts from the meta-learned initialisation (with the MLP, by default);
* ``q_i = E[i] + G(item features)`` and ``b_i = B[i] + g(item features)``: an
  item-id embedding and bias for the *known* items (``known_items``), plus a
  linear generator from the item's feature embeddings (MetaEmb, DropoutNet: a new
  item's vector and bias come from its features). A new item (or one outside
  ``known_items``) has no id row and is scored from ``G`` and ``g`` alone. Passing
  only the items with enough training ratings as ``known_items`` trains ``G`` and
  ``g`` on the rarely rated ones, which resemble new items most;
* ``mlp``: MeLU's network on the concatenated user and item field embeddings; its
  last layer starts at zero, so at initialisation the model is biased MF.

With ``implicit_vectors=True`` each known item also gets a free vector ``y_i``
(SVD++'s implicit feedback: what having rated the item says of a user, whatever
the rating), read only by :func:`jaxmeta.algorithms.ridge` with ``implicit=True``
(:attr:`jaxmeta.models.Model.implicit`): a user's prior head moves by the mean
``y`` of the items in their support. Without it, that prior reads the item vectors
``q_i`` themselves (tied). ``y_i`` starts at ``[e_i, q_i]`` (bias and vector; ``e_i``
small noise, so that the bias column and the map reading it can both move off zero),
so training starts in the direction of the tied prior; a new item's ``y`` is zero.

``item_init`` warm-starts ``E`` and ``B`` from a classic fit (for example the ALS
factors of :func:`jaxmeta.classic.fit_mf`, which read every training rating):
meta-learning then learns the residual over that baseline, and the user's
initialisation and adaptation on top of it (with the rows held there, when the outer
optimizer is :func:`jaxmeta.algorithms.frozen` on ``"items"``). ``without`` leaves
terms out of the prediction (:data:`PARTS`), for ablations.

References:
  Lee et al., "MeLU: Meta-Learned User Preference Estimator for Cold-Start
  Recommendation", KDD 2019.
  Koren, Bell, Volinsky, "Matrix Factorization Techniques for Recommender
  Systems", IEEE Computer 2009.
  Pan et al., "Warm Up Cold-start Advertisements: Improving CTR Predictions via
  Learning to Learn ID Embeddings" (MetaEmb), SIGIR 2019.
  Volkovs, Yu, Poutanen, "DropoutNet: Addressing Cold Start in Recommender
  Systems", NeurIPS 2017.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta.models._model import Model, Stage
from jaxmeta.models.melu import apply_layers, check_fields, check_inputs, embed_fields, init_field_embeddings, init_layers

ITEM_KEY = "item_id"
FAST = ("user", "user+mlp")
PARTS = ("ids", "generator", "mlp", "vector")
"""The terms :func:`hybrid_melu` can be built ``without`` (ablations): the item-id rows ``E[i]``, ``B[i]``; the
feature generator ``G``, ``g``; the network ``mlp``; the user vector ``p_u`` (with it, ``<p_u, q_i>``)."""


def hybrid_melu(
    fields: Sequence[Any],
    known_items: Any,
    *,
    item_fields: Sequence[str],
    id_key: str = ITEM_KEY,
    embed_dim: int = 32,
    hidden: Sequence[int] = (64, 64),
    factors: int = 16,
    global_bias: float = 0.0,
    embed_scale: float = 0.1,
    factor_scale: float = 0.01,
    fast: str = "user+mlp",
    item_init: tuple[Any, Any, Any] | None = None,
    without: Sequence[str] = (),
    implicit_vectors: bool = False,
) -> Model:
    """Builds hybrid MeLU (see the module docstring for the prediction).

    Parameters are ``{"embeddings": {field: ...}`` (as :func:`jaxmeta.models.melu`),
    ``"layers": [...]`` (the MLP, last layer zero), ``"items": {"vectors": [V + 1,
    factors], "biases": [V + 1]}`` (row 0 the OOV item, never read), ``"generator":
    {"w": [item_width, factors + 1], "b": [factors + 1]}`` (item vector and bias from
    the item fields' embeddings, zero at start), ``"user": {"vector": [factors],
    "bias": []}``, ``"global_bias": []}``, and with ``implicit_vectors=True``
    ``"implicit": [V + 1, factors + 1]`` (each known item's ``y``, in the head's
    coordinates: bias, then vector; row 0, for every other item, never read). ``"user"``
    is fast, and so are the layers when ``fast="user+mlp"`` (the default);
    ``"user"`` is the head (what ANIL adapts: then the model is a meta-learned
    fold-in of the user into biased MF).

    Args:
      fields: the input fields (user and item), as for :func:`jaxmeta.models.melu`.
      known_items: raw ids of the items given an id row (typically the items with
        enough training ratings); every other id is scored from its features.
      item_fields: names of the item fields among ``fields`` (the generator's input).
      id_key: the input entry holding raw item ids ([rows] integers).
      embed_dim, hidden: MeLU's field width and hidden widths.
      factors: width of the user and item vectors.
      global_bias: the initial ``mu`` (the mean training rating).
      embed_scale: standard deviation of the initial field embeddings.
      factor_scale: standard deviation of the initial item vectors (when not warm-started).
      fast: ``"user"`` or ``"user+mlp"``: what a user adapts.
      item_init: optional ``(ids, vectors [n, factors], biases [n])`` to start ``E``
        and ``B`` from; ids outside ``known_items`` are ignored, known items without
        a row start at zero.
      without: terms of the prediction left out, drawn from :data:`PARTS`, for
        ablations: ``"ids"`` (every item scored as a new one, from ``G`` and ``g``),
        ``"generator"`` (no vector or bias from the features: a new item gets
        ``mu + b_u + mlp``), ``"mlp"``, ``"vector"`` (no ``<p_u, q_i>``: the user
        adapts a bias, and the network with ``fast="user+mlp"``). The parameters keep
        their shapes (checkpoints and optimizers are unchanged); a left-out term's
        parameters get zero gradients and never move.
      implicit_vectors: give each known item a free implicit-feedback vector ``y``
        (:attr:`~jaxmeta.models.Model.implicit`), for ``ridge(implicit=True)``; not
        with ``without`` ``"ids"`` or ``"vector"`` (the vectors stand in for item
        rows and the user vector reads them).

    Raises:
      ValueError: bad fields, no known items, an unknown item field, a bad
        ``fast``, a mis-shaped ``item_init``, a non-bool ``implicit_vectors`` or one
        with ``without`` ``"ids"`` or ``"vector"``; when applied, a missing field or
        id entry (``TypeError`` for non-integer ids).

    Example:
      >>> from jaxmeta.data.features import FieldSpec
      >>> fields = [FieldSpec("age", "categorical", 8, 1), FieldSpec("genre", "multi", 19, 3)]
      >>> model = hybrid_melu(fields, [10, 20, 30], item_fields=["genre"], embed_dim=4, hidden=(8,),
      ...                     factors=3, global_bias=3.5)
      >>> params = model.init(jax.random.key(0))
      >>> params["items"]["vectors"].shape, params["generator"]["w"].shape
      ((4, 3), (4, 4))
      >>> x = {"age": jnp.array([1, 2]), "genre": jnp.array([[3, -1, -1], [4, 5, -1]]),
      ...      "item_id": jnp.array([20, 99])}
      >>> [round(r, 2) for r in model.apply(params, x).tolist()]  # at start: about mu (item 99 is new)
      [3.5, 3.5]
    """
    fields = check_fields(fields, model="hybrid_melu")
    names = [f.name for f in fields]
    item_fields = tuple(item_fields)
    unknown = [n for n in item_fields if n not in names]
    if not item_fields or unknown or isinstance(item_fields, str):
        raise ValueError(f"hybrid_melu: item_fields={item_fields!r}; pass the names of the item fields among "
                         f"{names}.")
    if fast not in FAST:
        raise ValueError(f"hybrid_melu: fast={fast!r}; pass one of {FAST}.")
    if embed_dim < 1 or factors < 1 or any(int(h) < 1 for h in hidden):
        raise ValueError(f"hybrid_melu: embed_dim={embed_dim}, factors={factors}, hidden={tuple(hidden)}; "
                         "pass positive widths.")
    without = frozenset(_check_parts(without))
    if not isinstance(implicit_vectors, bool):
        raise ValueError(f"hybrid_melu: implicit_vectors={implicit_vectors!r}; pass True or False.")
    check_implicit_vectors(implicit_vectors, tuple(sorted(without)), who="hybrid_melu: ")
    items = np.unique(np.asarray(known_items).astype(np.int64))
    if items.size == 0:
        raise ValueError("hybrid_melu: known_items is empty; pass the ids of the items with training ratings.")
    table = jnp.asarray(items.astype(np.int32))
    item_specs = [f for f in fields if f.name in item_fields]
    widths = (len(fields) * embed_dim, *(int(h) for h in hidden), 1)
    start = _item_rows(items, item_init, factors)

    def init(key: jax.Array):
        k_embed, k_layers, k_items, k_user = jax.random.split(key, 4)
        layers = init_layers(k_layers, widths)
        layers[-1] = jax.tree.map(jnp.zeros_like, layers[-1])
        if start is None:
            vectors = factor_scale * jax.random.normal(k_items, (items.size + 1, factors), jnp.float32)
            biases = jnp.zeros((items.size + 1,), jnp.float32)
        else:
            vectors, biases = (jnp.asarray(a) for a in start)
        vectors = vectors.at[0].set(0.0)
        params = {
            "embeddings": init_field_embeddings(k_embed, fields, embed_dim, embed_scale),
            "layers": layers,
            "items": {"vectors": vectors, "biases": biases.at[0].set(0.0)},
            "generator": {"w": jnp.zeros((len(item_specs) * embed_dim, factors + 1), jnp.float32),
                          "b": jnp.zeros((factors + 1,), jnp.float32)},
            "user": {"vector": factor_scale * jax.random.normal(k_user, (factors,), jnp.float32),
                     "bias": jnp.zeros((), jnp.float32)},
            "global_bias": jnp.full((), global_bias, jnp.float32),
        }
        if implicit_vectors:  # [e_i, q_i]: the tied prior's rows (less the null item's), a bias column that can move
            noise = factor_scale * jax.random.normal(jax.random.fold_in(key, 1), vectors[:, :1].shape, vectors.dtype)
            params["implicit"] = jnp.concatenate([noise, vectors], axis=1)
        return params

    def known_rows(x) -> tuple[jax.Array, jax.Array]:
        """Each row's item: whether it has an id row, and that row (0 for every other item)."""
        if id_key not in x:
            raise ValueError(f"hybrid_melu: the input has no entry {id_key!r} (it has {sorted(map(str, x))}); pass "
                             "the raw item ids there (jaxmeta.evaluation.with_item_ids adds them to tasks).")
        ids = jnp.asarray(x[id_key])
        if ids.ndim != 1 or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"hybrid_melu: {id_key!r} has shape {ids.shape} and dtype {ids.dtype}; pass integer "
                            "ids [rows].")
        ids = ids.astype(jnp.int32)
        pos = jnp.clip(jnp.searchsorted(table, ids), 0, items.size - 1)
        known = (table[pos] == ids) & ("ids" not in without)
        return known, jnp.where(known, pos + 1, 0)

    def implicit(params, x) -> jax.Array:
        known, row = known_rows(x)
        return jnp.where(known[:, None], params["implicit"][row], 0.0)

    def embed(params, x) -> dict[str, jax.Array]:
        check_inputs(x, fields, model="hybrid_melu")
        known, row = known_rows(x)
        emb = params["embeddings"]
        h = embed_fields(emb, fields, x)
        generated = embed_fields(emb, item_specs, x) @ params["generator"]["w"] + params["generator"]["b"][None, :]
        if "generator" in without:
            generated = jnp.zeros_like(generated)
        q = jnp.where(known[:, None], params["items"]["vectors"][row], 0.0) + generated[:, :factors]
        b = jnp.where(known, params["items"]["biases"][row], 0.0) + generated[:, factors]
        return {"h": h, "q": q, "b": b}

    def apply_embedded(params, e) -> jax.Array:
        user = params["user"]
        score = params["global_bias"] + user["bias"] + e["b"]
        if "vector" not in without:
            score = score + e["q"] @ user["vector"]
        if "mlp" not in without:
            score = score + apply_layers(params["layers"], e["h"])[:, 0]
        return score

    slow_stage = ("embeddings", "items", "generator")
    is_user = lambda path: path[0] == "user"
    return Model(
        init=init,
        apply=lambda params, x: apply_embedded(params, embed(params, x)),
        is_fast=is_user if fast == "user" else (lambda path: path[0] in ("user", "layers")),
        is_head=is_user,
        stage=Stage(embed, apply_embedded, is_embedding=lambda path: path[0] in slow_stage),
        implicit=implicit if implicit_vectors else None,
    )


def check_implicit_vectors(implicit_vectors: bool, without: Sequence[str], who: str = "") -> None:
    """Refuses ``implicit_vectors`` with ``without`` ``"ids"`` or ``"vector"`` (``who``: the message's prefix)."""
    if implicit_vectors and {"ids", "vector"} & set(without):
        raise ValueError(f"{who}implicit_vectors=True with without={tuple(without)!r}: the free vectors stand in for "
                         "the item rows that the user vector reads; leave 'ids' and 'vector' in, or "
                         "implicit_vectors=False.")


def _check_parts(without: Sequence[str]) -> tuple[str, ...]:
    if isinstance(without, str) or any(part not in PARTS for part in without):
        raise ValueError(f"hybrid_melu: without={without!r}; pass a list drawn from {PARTS}.")
    return tuple(without)


def _item_rows(items: np.ndarray, item_init, factors: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``item_init`` laid out on the model's rows (row 0 OOV), or None."""
    if item_init is None:
        return None
    if isinstance(item_init, Mapping) or len(item_init) != 3:
        raise ValueError("hybrid_melu: item_init must be (ids, vectors [n, factors], biases [n]); "
                         f"got {type(item_init).__name__}.")
    ids, vectors, biases = (np.asarray(a) for a in item_init)
    if vectors.shape != (ids.size, factors) or biases.shape != (ids.size,):
        raise ValueError(f"hybrid_melu: item_init has {ids.size} ids, vectors {vectors.shape} and biases "
                         f"{biases.shape}; pass vectors [{ids.size}, {factors}] (factors={factors}) and biases "
                         f"[{ids.size}].")
    out_v = np.zeros((items.size + 1, factors), np.float32)
    out_b = np.zeros((items.size + 1,), np.float32)
    pos = np.searchsorted(items, ids.astype(np.int64))
    hit = (pos < items.size) & (items[np.minimum(pos, items.size - 1)] == ids)
    out_v[pos[hit] + 1] = vectors[hit]
    out_b[pos[hit] + 1] = biases[hit]
    return out_v, out_b
