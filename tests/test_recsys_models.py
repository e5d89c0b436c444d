"""Recommender models: MeLU, biased MF and the two-tower click model.

Each model is checked against an independent NumPy forward pass (a Python loop over
rows and slots), for its fast/slow/head split, for the masking of empty slots and
OOV ids, for its error messages, and for training under MAML without recompiling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmeta import algorithms
from jaxmeta.models import Model, mask_where
from jaxmeta.data.features import FieldSpec
from jaxmeta.models.melu import melu
from jaxmeta.models.mf import biased_mf, biased_mf_by_id
from jaxmeta.models.two_tower import two_tower
from jaxmeta.tasks import RaggedTasks, pad_tasks

TOL = dict(rtol=1e-5, atol=1e-5)

USER = (FieldSpec("gender", "categorical", 3, 1), FieldSpec("age", "categorical", 5, 1), FieldSpec("income", "numeric", 1, 1))
ITEM = (FieldSpec("item", "categorical", 7, 1), FieldSpec("genre", "multi", 6, 3), FieldSpec("actor", "multi", 9, 4))
NUM_ITEMS = ITEM[0].size - 1  # known items 1..6; 0 is OOV

# MeLU's eight fields on MovieLens-1M: four of the user, four of the item.
MELU_FIELDS = (
    FieldSpec("gender", "categorical", 3, 1),
    FieldSpec("age", "categorical", 8, 1),
    FieldSpec("occupation", "categorical", 22, 1),
    FieldSpec("zip", "categorical", 3403, 1),
    FieldSpec("rate", "categorical", 7, 1),
    FieldSpec("genre", "multi", 26, 6),
    FieldSpec("director", "multi", 2187, 3),
    FieldSpec("actor", "multi", 8031, 4),
)


def assert_trees_close(a, b, **tol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **(tol or TOL))


def random_rows(fields, rows: int, rng: np.random.Generator) -> dict:
    """Random inputs with OOV ids, empty slots anywhere in a row, an all-empty row
    (row 0) and a full row (row 1) in every multi-valued field."""
    x = {}
    for f in fields:
        if f.kind == "numeric":
            x[f.name] = rng.normal(size=rows).astype(np.float32)
        elif f.kind == "categorical":
            x[f.name] = rng.integers(0, f.size, size=rows).astype(np.int32)
        else:
            ids = rng.integers(0, f.size, size=(rows, f.max_values))
            empty = rng.random((rows, f.max_values)) < 0.4
            empty[0], empty[1] = True, False
            x[f.name] = np.where(empty, -1, ids).astype(np.int32)
    return x


def perturbed(params, seed: int):
    """``params`` plus noise on every leaf, so that zero-initialised biases (and
    MF's zero OOV row) count in the comparisons."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


# --------------------------------------------------------------------------- NumPy references


def np_embed(emb, fields, x):
    parts = []
    for f in fields:
        e, a = emb[f.name], np.asarray(x[f.name])
        if f.kind == "numeric":
            parts.append(np.outer(a, e["w"]) + e["b"])
        elif f.kind == "categorical":
            parts.append(np.stack([e[i] for i in a]))
        else:
            d = e.shape[1]
            parts.append(np.stack([np.mean([e[i] for i in row if i != -1], axis=0) if (row != -1).any() else np.zeros(d) for row in a]))
    return np.concatenate(parts, axis=-1)


def np_mlp(layers, h):
    for layer in layers[:-1]:
        h = np.maximum(h @ layer["w"] + layer["b"], 0.0)
    return h @ layers[-1]["w"] + layers[-1]["b"]


def to_np(params):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), params)


def np_melu(params, x, fields=USER + ITEM):
    p = to_np(params)
    return np_mlp(p["layers"], np_embed(p["embeddings"], fields, x))[:, 0]


def np_mf(params, x):
    p = to_np(params)
    out = []
    for i in np.asarray(x["item"]):
        item = p["items"]["biases"][i] + p["items"]["vectors"][i] @ p["user"]["vector"] if 1 <= i <= NUM_ITEMS else 0.0
        out.append(p["global_bias"] + p["user"]["bias"] + item)
    return np.array(out)


def np_two_tower(params, x):
    p = to_np(params)
    u = np_mlp(p["user"]["layers"], np_embed(p["user"]["embeddings"], USER, x))
    v = np_mlp(p["item"]["layers"], np_embed(p["item"]["embeddings"], ITEM, x))
    return np.sum(u * v, axis=-1) + p["bias"]


class Case(NamedTuple):
    build: Callable[[], Model]
    reference: Callable
    loss: str


CASES = {
    "melu": Case(lambda: melu(USER + ITEM, embed_dim=4, hidden=(8, 6)), np_melu, "mse"),
    "biased_mf": Case(lambda: biased_mf(NUM_ITEMS, dim=3), np_mf, "mse"),
    "two_tower": Case(lambda: two_tower(USER, ITEM, embed_dim=4, hidden=(8,), out_dim=5), np_two_tower, "bce"),
}


# --------------------------------------------------------------------------- parameters and masks


def test_melu_has_the_published_shapes():
    model = melu(MELU_FIELDS, output_bias=3.5)
    params = jax.jit(model.init)(jax.random.key(0))
    assert [layer["w"].shape for layer in params["layers"]] == [(256, 64), (64, 64), (64, 1)]
    assert [layer["b"].shape for layer in params["layers"]] == [(64,), (64,), (1,)]
    assert {name: t.shape for name, t in params["embeddings"].items()} == {f.name: (f.size, 32) for f in MELU_FIELDS}
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    np.testing.assert_array_equal(params["layers"][2]["b"], [3.5])
    x = random_rows(MELU_FIELDS, 5, np.random.default_rng(0))
    out = jax.jit(model.apply)(params, x)
    assert out.shape == (5,) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, np_melu(params, x, MELU_FIELDS), **TOL)


def test_biased_mf_and_two_tower_shapes():
    mf = jax.jit(biased_mf(NUM_ITEMS, dim=3, global_bias=3.5).init)(jax.random.key(0))
    assert jax.tree.map(jnp.shape, mf) == {
        "user": {"vector": (3,), "bias": ()},
        "items": {"vectors": (7, 3), "biases": (7,)},
        "global_bias": (),
    }
    assert float(mf["global_bias"]) == 3.5 and not mf["items"]["vectors"][0].any()
    tt = jax.jit(CASES["two_tower"].build().init)(jax.random.key(0))
    assert [layer["w"].shape for layer in tt["user"]["layers"]] == [(12, 8), (8, 5)]
    assert [layer["w"].shape for layer in tt["item"]["layers"]] == [(12, 8), (8, 5)]
    assert tt["user"]["embeddings"]["income"]["w"].shape == (4,)
    assert tt["item"]["embeddings"]["actor"].shape == (9, 4) and tt["bias"].shape == ()


def test_fast_and_head_leaves():
    m = CASES["melu"].build()
    p = m.init(jax.random.key(0))
    slow_embeddings = {"gender": False, "age": False, "income": {"w": False, "b": False}, "item": False, "genre": False, "actor": False}
    layer = lambda v: {"w": v, "b": v}  # noqa: E731
    assert mask_where(p, m.is_fast) == {"embeddings": slow_embeddings, "layers": [layer(True)] * 3}
    assert mask_where(p, m.is_head) == {"embeddings": slow_embeddings, "layers": [layer(False), layer(False), layer(True)]}

    m = CASES["biased_mf"].build()
    p = m.init(jax.random.key(0))
    expected = {"user": {"vector": True, "bias": True}, "items": {"vectors": False, "biases": False}, "global_bias": False}
    assert mask_where(p, m.is_fast) == expected and mask_where(p, m.is_head) == expected

    m = CASES["two_tower"].build()
    p = m.init(jax.random.key(0))
    user_emb = {"gender": False, "age": False, "income": {"w": False, "b": False}}
    item = {"embeddings": {"item": False, "genre": False, "actor": False}, "layers": [layer(False)] * 2}
    assert mask_where(p, m.is_fast) == {"user": {"embeddings": user_emb, "layers": [layer(True)] * 2}, "item": item, "bias": True}
    assert mask_where(p, m.is_head) == {"user": {"embeddings": user_emb, "layers": [layer(False), layer(True)]}, "item": item, "bias": True}


# --------------------------------------------------------------------------- forward pass


@pytest.mark.parametrize("name", CASES)
def test_apply_matches_numpy_under_jit_and_vmap(name):
    case = CASES[name]
    model = case.build()
    params = perturbed(model.init(jax.random.key(0)), seed=1)
    rng = np.random.default_rng(2)
    xs = [random_rows(USER + ITEM, 9, rng) for _ in range(3)]
    for x in xs:  # eagerly, op by op
        np.testing.assert_allclose(model.apply(params, x), case.reference(params, x), **TOL)
    stacked = jax.tree.map(lambda *a: np.stack(a), *xs)  # [tasks, rows, ...]
    batched = jax.jit(jax.vmap(model.apply, in_axes=(None, 0)))(params, stacked)
    np.testing.assert_allclose(batched, np.stack([case.reference(params, x) for x in xs]), **TOL)


def widened(fields, x, extra: int):
    """The same rows with ``extra`` more empty slots (-1) in every multi-valued field."""
    fields = tuple(f._replace(max_values=f.max_values + extra) if f.kind == "multi" else f for f in fields)
    multi = {f.name for f in fields if f.kind == "multi"}
    x = {k: np.pad(a, [(0, 0), (0, extra)], constant_values=-1) if k in multi else a for k, a in x.items()}
    return fields, x


@pytest.mark.parametrize("name", ["melu", "two_tower"])
def test_empty_slots_change_no_output_or_gradient(name):
    build = {
        "melu": lambda user, item: melu(user + item, embed_dim=4, hidden=(8, 6)),
        "two_tower": lambda user, item: two_tower(user, item, embed_dim=4, hidden=(8,), out_dim=5),
    }[name]
    rng = np.random.default_rng(3)
    x = random_rows(USER + ITEM, 8, rng)
    for f in ITEM[1:]:  # no OOV slot: then the OOV row of a multi-valued table gets no gradient
        x[f.name] = np.where(x[f.name] == 0, 1, x[f.name])
    user_w, x_w = widened(USER, x, 2)
    item_w, x_w = widened(ITEM, x_w, 2)
    narrow, wide = build(USER, ITEM), build(user_w, item_w)
    params = perturbed(narrow.init(jax.random.key(0)), seed=4)
    y = jnp.asarray(rng.normal(size=8), jnp.float32)
    loss = lambda model: lambda p, xx: jnp.sum((model.apply(p, xx) - y) ** 2)  # noqa: E731
    np.testing.assert_allclose(jax.jit(narrow.apply)(params, x), jax.jit(wide.apply)(params, x_w), **TOL)
    g_narrow, g_wide = jax.jit(jax.grad(loss(narrow)))(params, x), jax.jit(jax.grad(loss(wide)))(params, x_w)
    assert_trees_close(g_narrow, g_wide)
    emb = g_wide["embeddings"] if name == "melu" else g_wide["item"]["embeddings"]
    for f in ITEM[1:]:
        assert not np.asarray(emb[f.name][0]).any(), f"empty slots of {f.name!r} leaked into the OOV row"
        assert np.asarray(emb[f.name][1:]).any()


def test_out_of_range_ids_read_as_oov():
    model = CASES["melu"].build()
    params = perturbed(model.init(jax.random.key(0)), seed=5)
    x = random_rows(USER + ITEM, 6, np.random.default_rng(6))
    oov, beyond = dict(x), dict(x)
    oov["age"], beyond["age"] = np.zeros(6, np.int32), np.full(6, 5 + 3, np.int32)
    oov["genre"] = np.where(x["genre"] == -1, -1, 0).astype(np.int32)
    beyond["genre"] = np.where(x["genre"] == -1, -1, 6 + np.arange(3)[None, :]).astype(np.int32)
    np.testing.assert_allclose(model.apply(params, beyond), model.apply(params, oov), **TOL)
    np.testing.assert_allclose(model.apply(params, oov), np_melu(params, oov), **TOL)


def test_biased_mf_predicts_oov_items_from_the_user_alone():
    model = CASES["biased_mf"].build()
    params = perturbed(model.init(jax.random.key(0)), seed=7)  # a non-zero OOV row must still be ignored
    x = {"item": np.array([0, NUM_ITEMS + 1, 100, -3, 2], np.int32)}
    out = model.apply(params, x)
    np.testing.assert_allclose(out[:4], float(params["global_bias"] + params["user"]["bias"]), **TOL)
    np.testing.assert_allclose(out, np_mf(params, x), **TOL)
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2))(params)
    assert not np.asarray(grads["items"]["vectors"][0]).any() and float(grads["items"]["biases"][0]) == 0.0
    assert np.asarray(grads["items"]["vectors"][2]).any()


# --------------------------------------------------------------------------- errors


def _drop(x, key):
    return {k: v for k, v in x.items() if k != key}


@pytest.mark.parametrize(
    "name, change, error, match",
    [
        ("melu", lambda x: _drop(x, "genre"), ValueError, "no field 'genre'"),
        ("melu", lambda x: {**x, "age": x["age"][:, None]}, ValueError, r"'age' \(categorical\) has shape \(4, 1\); pass \[rows\]"),
        ("melu", lambda x: {**x, "genre": x["genre"][:, 0]}, ValueError, r"'genre' \(multi\) has shape \(4,\); pass \[rows, max_values\]"),
        ("melu", lambda x: {**x, "genre": x["genre"][:, :2]}, ValueError, "max_values=3"),
        ("melu", lambda x: {**x, "income": x["income"][None]}, ValueError, r"'income' \(numeric\) has shape \(1, 4\)"),
        ("melu", lambda x: {**x, "item": x["item"][:3]}, ValueError, "'item' has 3 rows but 'gender' has 4"),
        ("melu", lambda x: {**x, "age": x["age"].astype(np.float32)}, TypeError, "pass integer ids"),
        ("melu", lambda x: x["age"], ValueError, "expects a dict"),
        ("biased_mf", lambda x: _drop(x, "item"), ValueError, "no field 'item'"),
        ("biased_mf", lambda x: {"item": x["item"][None]}, ValueError, r"'item' has shape \(1, 4\); pass int ids \[rows\]"),
        ("biased_mf", lambda x: {"item": x["item"].astype(np.float32)}, TypeError, "pass integer ids"),
        ("two_tower", lambda x: _drop(x, "gender"), ValueError, "no field 'gender'"),
        ("two_tower", lambda x: {**x, "actor": x["actor"][None]}, ValueError, r"'actor' \(multi\) has shape \(1, 4, 4\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(name, change, error, match):
    model = CASES[name].build()
    params = model.init(jax.random.key(0))
    x = random_rows(USER + ITEM, 4, np.random.default_rng(0))
    with pytest.raises(error, match=match):
        model.apply(params, change(x))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: melu([FieldSpec("a", "dense", 3, 1)]), "kind 'dense'"),
        (lambda: melu([FieldSpec("a", "categorical", 3, 1), FieldSpec("a", "multi", 3, 2)]), "'a' appears twice"),
        (lambda: melu([FieldSpec("a", "multi", 3, 0)]), "max_values=0"),
        (lambda: melu([FieldSpec("a", "categorical", 0, 1)]), "size=0"),
        (lambda: melu([]), "no fields"),
        (lambda: two_tower(USER, USER[:1] + ITEM), r"\['gender'\] are in both towers"),
        (lambda: biased_mf(0), "num_items=0"),
    ],
)
def test_bad_configurations_raise_clear_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# --------------------------------------------------------------------------- training under MAML


def synthetic_tasks(num_users: int, *, seed: int, binary: bool) -> RaggedTasks:
    """Users whose (centred) ratings are an item effect plus the user's own taste
    for genres; clicks are ratings above 0. Every row carries all the fields. The
    items are the same for every ``seed``; the users differ."""
    world = np.random.default_rng(0)
    item_effect = world.normal(size=ITEM[0].size)
    genre_of_item = world.integers(1, ITEM[1].size, size=(ITEM[0].size, 3))
    actor_of_item = np.where(world.random((ITEM[0].size, 4)) < 0.5, -1, world.integers(1, ITEM[2].size, size=(ITEM[0].size, 4)))
    rng = np.random.default_rng(seed + 1)

    def rows(n, taste, user):
        items = rng.integers(1, ITEM[0].size, size=n)
        y = item_effect[items] + taste[genre_of_item[items]].mean(axis=1) + 0.1 * rng.normal(size=n)
        x = {k: np.full(n, v, dtype=np.asarray(v).dtype) for k, v in user.items()}
        x.update(item=items.astype(np.int32), genre=genre_of_item[items].astype(np.int32), actor=actor_of_item[items].astype(np.int32))
        return x, ((y > 0) if binary else y).astype(np.float32)

    parts = []
    for _ in range(num_users):
        taste = rng.normal(size=ITEM[1].size)
        user = {"gender": np.int32(rng.integers(0, 3)), "age": np.int32(rng.integers(0, 5)), "income": np.float32(rng.normal())}
        parts.append(rows(int(rng.integers(6, 11)), taste, user) + rows(4, taste, user))
    return RaggedTasks(*(list(f) for f in zip(*parts)))


def learner_for(name, apply=None):
    case = CASES[name]
    model = case.build()
    if apply is not None:
        model = model._replace(apply=apply(model.apply))
    return algorithms.maml(model, inner_optimizer=optax.sgd(0.1), inner_steps=2, outer_optimizer=optax.adam(1e-2), loss=case.loss)


@pytest.mark.parametrize("name", CASES)
def test_meta_trains_under_maml_without_recompiling(name):
    """Meta-training on 32 users lowers the adapted query loss of 16 new users, the
    adaptation itself helps, and later same-shaped steps do not re-trace the model."""
    traces = []

    def counting(apply):
        def counted(params, x):
            traces.append(1)  # runs only while JAX traces
            return apply(params, x)

        return counted

    learner = learner_for(name, counting)
    state = learner.init(jax.random.key(0))
    binary = CASES[name].loss == "bce"
    batches = [pad_tasks(synthetic_tasks(8, seed=s, binary=binary), support_size=10, query_size=4) for s in range(4)]
    new_users = pad_tasks(synthetic_tasks(16, seed=99, binary=binary), support_size=10, query_size=4)
    before = learner.evaluate(state, new_users)
    losses = []
    for i in range(40):
        state, metrics = learner.step(state, batches[i % len(batches)])
        losses.append(float(metrics["loss"]))
        if i == 0:
            after_first = len(traces)
    assert len(traces) == after_first, "a later same-shaped step re-traced the model"
    assert np.all(np.isfinite(losses)) and int(state.step) == 40
    after = learner.evaluate(state, new_users)
    assert float(after["query_loss_after"]) < 0.6 * float(before["query_loss_after"]), (before, after)
    assert float(after["query_loss_after"]) < float(after["query_loss_before"]), after


def test_biased_mf_by_id_is_biased_mf_on_the_mapped_ids():
    known = np.array([907, 12, 40, 12])  # distinct and sorted: 12 -> 1, 40 -> 2, 907 -> 3
    by_id = biased_mf_by_id(known, dim=3, global_bias=3.5)
    plain = biased_mf(3, dim=3, global_bias=3.5)
    params = by_id.init(jax.random.key(1))
    raw = np.array([40, 5, 907, 12, 13, 40])
    mapped = np.array([2, 0, 3, 1, 0, 2])
    np.testing.assert_allclose(by_id.apply(params, {"item_id": raw}), plain.apply(params, {"item": mapped}), rtol=1e-6)
    with pytest.raises(ValueError, match="no field 'item_id'"):
        by_id.apply(params, {"item": mapped})
    with pytest.raises(ValueError, match="known_items is empty"):
        biased_mf_by_id([])
