"""Hybrid MeLU: the forward pass against NumPy, the warm start's row layout, and the
engine's checks (a batch equals a per-user loop, MAML's meta-gradient equals central
differences, NaN and garbage ids in padded rows change nothing)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from jaxmeta import algorithms
from jaxmeta.data.features import FieldSpec
from jaxmeta.models import hybrid_melu
from jaxmeta.tasks import RaggedTasks, pad_tasks

from conftest import assert_batch_equals_loop, meta_grad

FIELDS = (FieldSpec("age", "categorical", 4, 1), FieldSpec("income", "numeric", 1, 1),
          FieldSpec("genre", "multi", 6, 3))
ITEM_FIELDS = ("genre",)
KNOWN = np.array([30, 10, 20])  # rows: 10 -> 1, 20 -> 2, 30 -> 3
D, K, H = 3, 2, (4,)


def build(**kwargs):
    return hybrid_melu(FIELDS, KNOWN, item_fields=ITEM_FIELDS, embed_dim=D, hidden=H, factors=K, global_bias=3.0,
                       **kwargs)


def perturbed(params, seed=0, scale=0.3):
    """Noise on every leaf, so that the zero-initialised last layer, generator and biases count."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([a + scale * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)])


def rows(n, rng, ids=(10, 20, 30, 99, 5)):
    genre = rng.integers(0, 6, size=(n, 3))
    genre[rng.random((n, 3)) < 0.4] = -1
    return {"age": rng.integers(0, 4, n).astype(np.int32), "income": rng.normal(size=n).astype(np.float32),
            "genre": genre.astype(np.int32), "item_id": rng.choice(np.array(ids), n).astype(np.int32)}


def np_forward(params, x, without=()):
    """The prediction written with NumPy and a loop over rows (``without``: the terms left out)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    emb = p["embeddings"]
    table = {10: 1, 20: 2, 30: 3}
    out = []
    for r in range(len(x["item_id"])):
        genres = [g for g in x["genre"][r] if g != -1]
        g = np.mean([emb["genre"][i] for i in genres], axis=0) if genres else np.zeros(D)
        h = np.concatenate([emb["age"][x["age"][r]], x["income"][r] * emb["income"]["w"] + emb["income"]["b"], g])
        for layer in p["layers"][:-1]:
            h = np.maximum(h @ layer["w"] + layer["b"], 0.0)
        mlp = (h @ p["layers"][-1]["w"] + p["layers"][-1]["b"])[0]
        gen = g @ p["generator"]["w"] + p["generator"]["b"]
        gen = 0.0 * gen if "generator" in without else gen
        row = None if "ids" in without else table.get(int(x["item_id"][r]))
        q = gen[:K] + (p["items"]["vectors"][row] if row else 0.0)
        b = gen[K] + (p["items"]["biases"][row] if row else 0.0)
        out.append(p["global_bias"] + p["user"]["bias"] + b + (0.0 if "vector" in without else q @ p["user"]["vector"])
                   + (0.0 if "mlp" in without else mlp))
    return np.array(out)


def test_forward_matches_numpy_for_known_and_new_items():
    model = build()
    params = perturbed(model.init(jax.random.key(0)))
    x = rows(9, np.random.default_rng(0))
    np.testing.assert_allclose(model.apply(params, x), np_forward(params, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(model.apply)(params, x), np_forward(params, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("without", [("ids",), ("generator",), ("mlp",), ("vector",), ("ids", "mlp")])
def test_each_ablation_leaves_out_its_term_and_nothing_else(without):
    model = build(without=without)
    params = perturbed(model.init(jax.random.key(0)))
    x = rows(9, np.random.default_rng(0))
    np.testing.assert_allclose(model.apply(params, x), np_forward(params, x, without), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np_forward(params, x, without), np_forward(params, x), atol=1e-3)  # the term counted
    grads = jax.grad(lambda p: model.apply(p, x).sum())(params)
    left_out = {"ids": grads["items"], "generator": grads["generator"], "mlp": grads["layers"],
                "vector": grads["user"]["vector"]}
    for part in without:
        assert all(not np.any(g) for g in jax.tree.leaves(left_out[part])), part


def test_at_start_the_mlp_and_generator_are_zero_and_new_items_get_mu_plus_the_user():
    model = build()
    params = model.init(jax.random.key(0))
    x = rows(5, np.random.default_rng(1), ids=(99, 5))
    np.testing.assert_allclose(model.apply(params, x), 3.0, atol=1e-6)


def test_warm_start_puts_each_item_on_its_row():
    ids = np.array([20, 77, 10])  # 77 is not a known item: ignored; 30 has no row: zero
    vectors = np.array([[1.0, 2.0], [5.0, 5.0], [3.0, 4.0]])
    biases = np.array([0.5, 9.0, -0.5])
    params = build(item_init=(ids, vectors, biases)).init(jax.random.key(0))
    np.testing.assert_array_equal(params["items"]["vectors"], [[0, 0], [3, 4], [1, 2], [0, 0]])
    np.testing.assert_array_equal(params["items"]["biases"], [0, -0.5, 0.5, 0])
    with pytest.raises(ValueError, match="vectors"):
        build(item_init=(ids, vectors[:, :1], biases))


@pytest.mark.parametrize("kwargs, match", [
    ({"item_fields": ("color",)}, "item_fields"),
    ({"fast": "all"}, "fast"),
    ({"factors": 0}, "positive widths"),
    ({"without": ("bias",)}, r"without=\('bias',\); pass a list drawn from"),
    ({"without": "mlp"}, "without='mlp'"),
])
def test_bad_configurations_raise(kwargs, match):
    base = {"item_fields": ITEM_FIELDS, "factors": K}
    with pytest.raises(ValueError, match=match):
        hybrid_melu(FIELDS, KNOWN, **{**base, **kwargs})
    with pytest.raises(ValueError, match="known_items is empty"):
        hybrid_melu(FIELDS, [], item_fields=ITEM_FIELDS)


def test_a_missing_id_entry_names_it():
    model = build()
    x = rows(3, np.random.default_rng(0))
    del x["item_id"]
    with pytest.raises(ValueError, match="item_id"):
        model.apply(model.init(jax.random.key(0)), x)


def tasks(num_users, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(num_users):
        s, q = rng.integers(1, 6), rng.integers(1, 4)
        parts.append((rows(s, rng), rng.integers(1, 6, s).astype(dtype), rows(q, rng),
                      rng.integers(1, 6, q).astype(dtype)))
    return RaggedTasks(*(list(f) for f in zip(*parts)))


def learner(model, **kwargs):
    return algorithms.maml(model, inner_optimizer=optax.sgd(0.2), inner_steps=2, outer_optimizer=optax.sgd(1.0),
                           **kwargs)


@pytest.mark.parametrize("fast", [pytest.param("user", marks=pytest.mark.slow), "user+mlp"])
def test_batched_meta_gradient_equals_a_loop_over_users(fast):
    model = build(fast=fast)
    maml = learner(model)
    state = maml.init(jax.random.key(0))
    state = state._replace(params=perturbed(state.params, seed=2, scale=0.1))
    users = tasks(5, seed=3)
    assert_batch_equals_loop(maml, state, users, pad_tasks(users, num_tasks=6))


def test_second_order_meta_gradient_matches_central_differences():
    with jax.enable_x64(True):
        model = build()
        maml = learner(model)
        state = maml.init(jax.random.key(0))
        params = jax.tree.map(lambda a: a.astype(jnp.float64), perturbed(state.params, seed=4, scale=0.1))
        state = state._replace(params=params, opt_state=optax.sgd(1.0).init((params, state.hyper)))
        batch = pad_tasks(tasks(3, seed=5, dtype=np.float64), dtype=np.float64)
        (grads, _), _ = meta_grad(maml, state, batch)
        flat, unravel = ravel_pytree(params)
        loss = jax.jit(lambda v: maml.evaluate(state._replace(params=unravel(v)), batch)["query_loss_after"])
        eps = 1e-6
        rng = np.random.default_rng(0)
        got = ravel_pytree(grads)[0]
        for i in rng.choice(flat.size, 40, replace=False):  # 40 coordinates of every kind of leaf, at random
            e = jnp.zeros_like(flat).at[i].set(eps)
            numeric = (loss(flat + e) - loss(flat - e)) / (2 * eps)
            np.testing.assert_allclose(got[i], numeric, rtol=1e-5, atol=1e-8)


def test_nan_and_garbage_in_padded_rows_change_nothing():
    model = build()
    maml = learner(model)
    state = maml.init(jax.random.key(0))
    state = state._replace(params=perturbed(state.params, seed=6, scale=0.1))
    users = tasks(3, seed=7)
    clean = pad_tasks(users, support_size=8, query_size=5, num_tasks=4)
    dirty = clean._replace(
        support_y=np.where(clean.support_mask, clean.support_y, np.nan),
        query_y=np.where(clean.query_mask, clean.query_y, np.nan),
        support_x={**clean.support_x, "income": np.where(clean.support_mask, clean.support_x["income"], np.nan),
                   "item_id": np.where(clean.support_mask, clean.support_x["item_id"], 123456)})
    for a, b in zip(jax.tree.leaves(meta_grad(maml, state, clean)[0]), jax.tree.leaves(meta_grad(maml, state, dirty)[0])):
        np.testing.assert_array_equal(a, b)
    real = np.asarray(clean.query_mask)
    np.testing.assert_array_equal(np.asarray(maml.predict(state, clean))[real], np.asarray(maml.predict(state, dirty))[real])


def test_item_rows_started_from_a_fit_can_be_held_while_the_rest_meta_learns():
    """``algorithms.frozen`` under ``ridge``: the warm-started item rows come out of training bit for bit as they
    went in (Adam's update of a zero gradient is zero), every other kind of parameter moves."""
    ids, rng = np.array([10, 20, 30]), np.random.default_rng(8)
    model = build(item_init=(ids, rng.normal(size=(3, K)), rng.normal(size=3)))
    opt = algorithms.frozen(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.05)),
                            lambda path: path[0] == "items")
    ridge = algorithms.ridge(model, outer_optimizer=opt)
    start = ridge.init(jax.random.key(0))
    state = start
    batch = pad_tasks(tasks(6, seed=9))
    for _ in range(3):
        state, _ = ridge.step(state, batch)
    for name in ("vectors", "biases"):
        np.testing.assert_array_equal(state.params["items"][name], start.params["items"][name])
    for name in ("generator", "layers", "embeddings", "user", "global_bias"):
        moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params[name]),
                                                         jax.tree.leaves(start.params[name]))]
        assert any(moved), name
    assert not np.array_equal(state.hyper, start.hyper)
    decayed = algorithms.frozen(optax.adamw(0.1, weight_decay=0.1), lambda path: path[0] == "items")
    held = algorithms.ridge(model, outer_optimizer=decayed)
    after, _ = held.step(held.init(jax.random.key(0)), batch)  # weight decay moves no held row either
    np.testing.assert_array_equal(after.params["items"]["vectors"], start.params["items"]["vectors"])
    free = algorithms.ridge(model, outer_optimizer=optax.adam(0.05))
    moved, _ = free.step(free.init(jax.random.key(0)), batch)
    assert not np.array_equal(moved.params["items"]["vectors"], start.params["items"]["vectors"])


@pytest.mark.parametrize("vectors", [False, True])
def test_ridge_with_the_implicit_prior_on_the_staged_model(vectors):
    """``ridge(implicit=True)`` on hybrid MeLU, whose inner model reads embedded rows: a batch equals a per-user
    loop; the null input's row is taken in the embedded space by the learner and on raw rows by the stream's
    ``ridge_method``, and the two give the same heads; NaN and garbage ids in padded rows change nothing. The
    same with the model's free implicit vectors (``implicit_vectors=True``), read from raw rows by both."""
    from jaxmeta import stream

    ridge = algorithms.ridge(build(implicit_vectors=vectors), outer_optimizer=optax.sgd(1.0), implicit=True)
    state = ridge.init(jax.random.key(0))
    hyper = {**state.hyper, "implicit": 0.3 * jax.random.normal(jax.random.key(1), state.hyper["implicit"].shape)}
    state = state._replace(params=perturbed(state.params, seed=8, scale=0.1), hyper=hyper,
                           opt_state=optax.sgd(1.0).init((state.params, hyper)))
    users = tasks(5, seed=9)
    batch = pad_tasks(users, support_size=8, num_tasks=6)
    assert_batch_equals_loop(ridge, state, users, batch)
    heads = jax.vmap(lambda f: ravel_pytree(f)[0])(ridge.adapt(state, batch))
    np.testing.assert_allclose(stream.ridge_method("ridge", ridge, state, build(implicit_vectors=vectors)).adapt(batch)[-1], heads,
                               rtol=1e-5, atol=1e-5)
    dirty = batch._replace(support_y=np.where(batch.support_mask, batch.support_y, np.nan),
                           support_x={**batch.support_x,
                                      "item_id": np.where(batch.support_mask, batch.support_x["item_id"], 123456)})
    np.testing.assert_array_equal(jax.vmap(lambda f: ravel_pytree(f)[0])(ridge.adapt(state, dirty)), heads)


def test_implicit_vectors_start_at_the_item_rows_and_are_zero_for_other_items():
    """``implicit_vectors=True``: ``params["implicit"]`` is ``[e, E]`` (a small random bias column, then the item
    vectors), ``model.implicit`` reads a known item's row and gives zero to every other id; the prediction does
    not read them. Without the option there is neither; with the ids or the user vector left out it is refused."""
    ids, rng = np.array([20, 10]), np.random.default_rng(3)
    model = build(implicit_vectors=True, item_init=(ids, rng.normal(size=(2, K)), rng.normal(size=2)))
    params = model.init(jax.random.key(0))
    table = np.asarray(params["implicit"])
    assert np.all(table[:, 0] != 0) and np.all(np.abs(table[:, 0]) < 0.1)
    np.testing.assert_array_equal(table[:, 1:], params["items"]["vectors"])
    assert np.any(table[1:3, 1:])
    params = perturbed(params, seed=4)
    x = rows(7, np.random.default_rng(5))
    want = np.array([np.asarray(params["implicit"])[{10: 1, 20: 2, 30: 3}[i]] if i in (10, 20, 30) else np.zeros(K + 1)
                     for i in x["item_id"]])
    np.testing.assert_array_equal(model.implicit(params, x), want)
    np.testing.assert_allclose(model.apply(params, x), np_forward(params, x), rtol=1e-5, atol=1e-5)
    for part in ("ids", "vector"):
        with pytest.raises(ValueError, match=f"implicit_vectors=True with without=\\('{part}',\\): the free vectors"):
            build(implicit_vectors=True, without=(part,))
    assert build().implicit is None and "implicit" not in build().init(jax.random.key(0))
    with pytest.raises(ValueError, match="implicit_vectors=1; pass True or False"):
        build(implicit_vectors=1)


def test_ridge_reads_the_free_implicit_vectors():
    """``ridge(implicit=True)`` on hybrid MeLU with ``implicit_vectors=True``: each head is the NumPy ridge solve
    around ``w0 + A [mean of the support items' y; log(1 + n)]`` (``J`` from the NumPy forward pass, exact for
    the affine head), and the query loss's meta-gradient in the ``y`` table equals central differences
    (float64), nonzero on the rows of items in a support set only."""
    with jax.enable_x64(True):
        model = build(implicit_vectors=True)
        ridge = algorithms.ridge(model, outer_optimizer=optax.sgd(1.0), implicit=True)
        state = ridge.init(jax.random.key(0))
        params = jax.tree.map(lambda a: a.astype(jnp.float64), perturbed(state.params, seed=6, scale=0.3))
        rng = np.random.default_rng(7)
        hyper = {"log_reg": jnp.asarray(rng.normal(size=K + 1)), "implicit": jnp.asarray(rng.normal(size=(K + 1, K + 2)))}
        state = state._replace(params=params, hyper=hyper, opt_state=optax.sgd(1.0).init((params, hyper)))
        users = tasks(4, seed=8, dtype=np.float64)
        batch = pad_tasks(users, support_size=6, num_tasks=4, dtype=np.float64)
        heads = np.asarray(jax.vmap(lambda f: ravel_pytree(f)[0])(ridge.adapt(state, batch)))
        p = jax.tree.map(np.asarray, params)
        table = {10: 1, 20: 2, 30: 3}
        for u in range(4):
            x, y = users.support_x[u], users.support_y[u]
            w0 = np.concatenate([[p["user"]["bias"]], p["user"]["vector"]])

            def forward(w):
                return np_forward({**p, "user": {"bias": w[0], "vector": w[1:]}}, x)

            jac = np.stack([forward(w0 + e) - forward(w0) for e in np.eye(K + 1)], axis=1)
            ys = [p["implicit"][table[i]] if i in table else np.zeros(K + 1) for i in x["item_id"]]
            prior = w0 + np.asarray(hyper["implicit"]) @ np.concatenate([np.mean(ys, axis=0), [np.log1p(len(y))]])
            want = prior + np.linalg.solve(jac.T @ jac + np.diag(np.exp(np.asarray(hyper["log_reg"]))),
                                           jac.T @ (y - forward(prior)))
            np.testing.assert_allclose(heads[u], want, rtol=1e-6, atol=1e-8)
        (grads, _), _ = meta_grad(ridge, state, batch)
        flat, unravel = ravel_pytree(params["implicit"])
        loss = jax.jit(lambda v: ridge.evaluate(state._replace(params={**params, "implicit": unravel(v)}),
                                                batch)["query_loss_after"])
        eps = 1e-6
        numeric = [(loss(flat.at[i].add(eps)) - loss(flat.at[i].add(-eps))) / (2 * eps) for i in range(flat.size)]
        got = np.asarray(grads["implicit"])
        np.testing.assert_allclose(got.ravel(), numeric, rtol=1e-5, atol=1e-9)
        rated = {table[i] for u in range(4) for i in users.support_x[u]["item_id"] if i in table}
        assert all(np.any(got[r]) == (r in rated) for r in range(4))


def test_every_part_of_the_free_vectors_and_their_map_learns():
    """From the start (``A`` zero), two outer steps of ``ridge(implicit=True)`` move every column of ``A`` (the
    bias column too: the vectors' bias column starts off zero, or the two would hold each other at zero) and
    every column of the rated items' vectors; the rows of items no support rated stay as they were."""
    ridge = algorithms.ridge(build(implicit_vectors=True), outer_optimizer=optax.adam(0.05), implicit=True)
    start = ridge.init(jax.random.key(0))
    users = tasks(6, seed=10)
    state = start
    for _ in range(2):
        state, _ = ridge.step(state, pad_tasks(users))
    assert np.all(np.any(np.asarray(state.hyper["implicit"]) != 0, axis=0))
    moved = np.asarray(state.params["implicit"]) != np.asarray(start.params["implicit"])
    rated = sorted({{10: 1, 20: 2, 30: 3}[i] for x in users.support_x for i in x["item_id"] if i in (10, 20, 30)})
    assert rated and np.all(moved[rated]) and not np.any(np.delete(moved, rated, axis=0))
