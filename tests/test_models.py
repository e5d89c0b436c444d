"""Models: the Model record checked when built, the embedding MLP against a NumPy
forward pass, the fast/slow split, and the Flax bridges, which must give the very
same MAML step as a pure-dict model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx

from jaxmeta import algorithms
from jaxmeta.algorithms import MetaState
from jaxmeta.models import (Model, Stage, combine, embedding_mlp, from_linen, from_nnx, mask_where, partition,
                            path_names)
from jaxmeta.tasks import RaggedTasks, pad_tasks

TOL = dict(rtol=1e-5, atol=1e-5)


def assert_trees_close(a, b, **tol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **(tol or TOL))


# --------------------------------------------------------------------------- Model


def stage_of(model: Model, **changes) -> Stage:
    return model.stage._replace(**changes)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"embed": None}, "Stage.embed is None"),
        ({"apply_embedded": None}, "Stage.apply_embedded is None"),
        ({"is_embedding": None}, "Stage.is_embedding is None"),
        ({"after_dense": None}, "Stage.after_dense is None while dense is set"),
        ({"dense": None}, "Stage.dense is None while after_dense is set"),
        ({"dense": "layers"}, "Stage.dense='layers': pass a parameter path as a tuple of strings"),
        ({"mlp": ("layers", 0)}, r"Stage.mlp=\('layers', 0\)"),
    ],
)
def test_a_stage_missing_a_partner_is_refused_when_the_model_is_built(changes, match):
    model = embedding_mlp([3, 5], embed_dim=2, hidden=(4,))
    with pytest.raises(ValueError, match=match):
        Model(model.init, model.apply, stage=stage_of(model, **changes))
    with pytest.raises(ValueError, match=match):  # _replace builds a new Model: checked again
        model._replace(stage=stage_of(model, **changes))
    with pytest.raises(TypeError, match="Model.stage="):
        Model(model.init, model.apply, stage=tuple(model.stage))
    with pytest.raises(TypeError, match="Model.implicit=3: pass a function of"):
        Model(model.init, model.apply, implicit=3)


def test_parameter_shapes_are_traced_once_per_model():
    base = embedding_mlp([3, 5], embed_dim=2, hidden=(4,))
    traces = []

    def init(key):
        traces.append(1)  # runs only while JAX traces (nothing here calls init for real)
        return base.init(key)

    model = base._replace(init=init)
    assert model.staged() and model.dense_fast() and not model.staged(lambda path: True)
    assert not model.dense_fast(lambda path: path[:2] == ("layers", "1"))
    for factory in (algorithms.maml, algorithms.reptile, algorithms.finetune, algorithms.metasgd):
        factory(model, inner_optimizer=optax.sgd(0.1))
    assert len(traces) == 1
    shapes = jax.tree.map(lambda s: s.shape, model.param_shapes())
    assert shapes == jax.tree.map(jnp.shape, base.init(jax.random.key(0)))


# --------------------------------------------------------------------------- embedding_mlp


def test_embedding_mlp_param_shapes_and_output_bias():
    model = embedding_mlp([3, 5], embed_dim=4, hidden=(8, 6), output_bias=3.5)
    params = model.init(jax.random.key(0))
    assert [t.shape for t in params["embeddings"]] == [(3, 4), (5, 4)]
    assert [layer["w"].shape for layer in params["layers"]] == [(8, 8), (8, 6), (6, 1)]
    assert [layer["b"].shape for layer in params["layers"]] == [(8,), (6,), (1,)]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    np.testing.assert_array_equal(params["layers"][2]["b"], [3.5])
    assert not params["layers"][0]["b"].any() and not params["layers"][1]["b"].any()
    other = model.init(jax.random.key(1))
    assert not np.allclose(params["layers"][0]["w"], other["layers"][0]["w"])


def test_embedding_mlp_fast_and_head_leaves():
    model = embedding_mlp([3, 5], embed_dim=4, hidden=(8, 6))
    params = model.init(jax.random.key(0))
    assert mask_where(params, model.is_fast) == {
        "embeddings": [False, False],
        "layers": [{"w": True, "b": True}] * 3,
    }
    assert mask_where(params, model.is_head) == {
        "embeddings": [False, False],
        "layers": [{"w": False, "b": False}, {"w": False, "b": False}, {"w": True, "b": True}],
    }
    no_hidden = embedding_mlp([3], hidden=())
    assert mask_where(no_hidden.init(jax.random.key(0)), no_hidden.is_head) == {
        "embeddings": [False],
        "layers": [{"w": True, "b": True}],
    }


def numpy_embedding_mlp(params, x):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = np.concatenate([table[x[:, f]] for f, table in enumerate(p["embeddings"])], axis=-1)
    for layer in p["layers"][:-1]:
        h = np.maximum(h @ layer["w"] + layer["b"], 0.0)
    return (h @ p["layers"][-1]["w"] + p["layers"][-1]["b"])[:, 0]


def test_embedding_mlp_apply_matches_numpy_and_vmaps():
    model = embedding_mlp([3, 5], embed_dim=4, hidden=(8, 6), output_bias=1.0)
    params = model.init(jax.random.key(0))
    for i, layer in enumerate(params["layers"]):  # init biases are 0: make every term count
        layer["b"] = layer["b"] + 0.3 * jax.random.normal(jax.random.key(10 + i), layer["b"].shape)
    x = np.array([[0, 4], [2, 1], [1, 0], [2, 4]], np.int32)
    out = model.apply(params, jnp.asarray(x))
    assert out.shape == (4,) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, numpy_embedding_mlp(params, x), **TOL)
    tasks = jnp.asarray(np.stack([x, x[::-1]]))  # [tasks, rows, fields]
    batched = jax.jit(jax.vmap(model.apply, in_axes=(None, 0)))(params, tasks)
    expected = np.stack([numpy_embedding_mlp(params, x), numpy_embedding_mlp(params, x[::-1])])
    np.testing.assert_allclose(batched, expected, **TOL)


@pytest.mark.parametrize("shape", [(4,), (2, 4, 2), (4, 3)])
def test_embedding_mlp_rejects_wrong_input_shape(shape):
    model = embedding_mlp([3, 5], embed_dim=4, hidden=(8,))
    params = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match=rf"shape \[rows, 2\], got \({shape[0]},"):
        model.apply(params, jnp.zeros(shape, jnp.int32))


@pytest.mark.parametrize("vocab", [[], [3, 0]])
def test_embedding_mlp_rejects_bad_vocab(vocab):
    with pytest.raises(ValueError, match="vocab_sizes="):
        embedding_mlp(vocab)


# --------------------------------------------------------------------------- partition / combine


def nested_params():
    a = lambda *s: jnp.arange(np.prod(s), dtype=jnp.float32).reshape(s) + len(s)  # noqa: E731
    layers = [{"w": a(4, 3), "b": a(3)}, {"w": a(3, 1), "b": a(1)}]
    return {"emb": [a(3, 2), a(5, 2)], "net": {"layers": layers}, "scale": a(1)}


@pytest.mark.parametrize(
    "predicate",
    [
        lambda p: p[0] == "net",
        lambda p: p[-1] == "w",
        lambda p: p[:3] == ("net", "layers", "1"),
        lambda p: True,
        lambda p: False,
    ],
    ids=["subtree", "leaf_name", "one_layer", "all", "none"],
)
def test_partition_combine_round_trip(predicate):
    params = nested_params()
    fast, slow = partition(params, mask_where(params, predicate))
    for part, chosen in ((fast, True), (slow, False)):
        # a leaf belongs in this part iff the predicate says `chosen`; it is None otherwise
        misplaced = jax.tree_util.tree_map_with_path(
            lambda p, x: (x is None) == (predicate(path_names(p)) == chosen), part, is_leaf=lambda x: x is None
        )
        assert not any(jax.tree.leaves(misplaced)), "a leaf is on the wrong side of the split"
    for tree in (combine(fast, slow), combine(slow, fast)):
        assert jax.tree.structure(tree) == jax.tree.structure(params)
        for x, y in zip(jax.tree.leaves(tree), jax.tree.leaves(params)):
            assert x is y


def test_partition_hand_example_and_path_names():
    params = {"a": [1.0, {"b": 2.0}], "c": 3.0}
    fast, slow = partition(params, {"a": [True, {"b": False}], "c": True})
    assert fast == {"a": [1.0, {"b": None}], "c": 3.0}
    assert slow == {"a": [None, {"b": 2.0}], "c": None}
    assert combine(fast, slow) == params
    paths = [path_names(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert paths == [("a", "0"), ("a", "1", "b"), ("c",)]


# --------------------------------------------------------------------------- Flax bridges

IN, HIDDEN = 3, 4


def pure_model(params) -> Model:
    """``tanh`` layer then linear head, parameters in Flax's layout and names."""

    def apply(p, x):
        h = jnp.tanh(x @ p["body"]["kernel"] + p["body"]["bias"][None, :])
        return (h @ p["head"]["kernel"] + p["head"]["bias"][None, :])[:, 0]

    return Model(init=lambda key: params, apply=apply)


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.body = nnx.Linear(IN, HIDDEN, rngs=rngs)
        self.head = nnx.Linear(HIDDEN, 1, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.tanh(self.body(x)))[:, 0]


class LinenNet(linen.Module):
    @linen.compact
    def __call__(self, x):
        h = jnp.tanh(linen.Dense(HIDDEN, name="body")(x))
        return linen.Dense(1, name="head")(h)[:, 0]


def reference_params():
    k = jax.random.split(jax.random.key(42), 4)
    return {
        "body": {"kernel": jax.random.normal(k[0], (IN, HIDDEN)), "bias": 0.3 * jax.random.normal(k[1], (HIDDEN,))},
        "head": {"kernel": jax.random.normal(k[2], (HIDDEN, 1)), "bias": 0.3 * jax.random.normal(k[3], (1,))},
    }


def float_tasks(num_users=4, seed=0) -> RaggedTasks:
    rng = np.random.default_rng(seed)

    def rows(n):
        return rng.normal(size=(n, IN)).astype(np.float32), rng.normal(size=n).astype(np.float32)

    users = [rows(int(rng.integers(2, 6))) + rows(int(rng.integers(1, 4))) for _ in range(num_users)]
    return RaggedTasks(*(list(f) for f in zip(*users)))


def test_flax_bridges_init_like_flax():
    key = jax.random.key(3)
    x = jnp.ones((2, IN))
    nnx_params = from_nnx(NnxNet).init(key)
    _, expected = nnx.split(NnxNet(nnx.Rngs(key)), nnx.Param)
    assert_trees_close(nnx_params, nnx.to_pure_dict(expected), rtol=0, atol=0)
    linen_params = from_linen(LinenNet(), x).init(key)
    assert_trees_close(linen_params, LinenNet().init(key, x)["params"], rtol=0, atol=0)
    shapes = jax.tree.map(jnp.shape, reference_params())
    assert jax.tree.map(jnp.shape, nnx_params) == shapes
    assert jax.tree.map(jnp.shape, dict(linen_params)) == shapes


@pytest.mark.parametrize("is_fast", [None, lambda p: p[0] == "head"], ids=["all_fast", "head_fast"])
def test_flax_bridges_give_the_same_maml_step(is_fast):
    params = reference_params()
    x = jnp.zeros((2, IN))
    models = {"dict": pure_model(params), "nnx": from_nnx(NnxNet), "linen": from_linen(LinenNet(), x)}
    batch = pad_tasks(float_tasks(), num_tasks=5)  # one padding user
    outer = optax.sgd(1.0)
    results = {}
    for name, model in models.items():
        x0 = batch.query_x[0]
        np.testing.assert_allclose(model.apply(params, x0), models["dict"].apply(params, x0), **TOL)
        learner = algorithms.maml(
            model, inner_optimizer=optax.sgd(0.1), inner_steps=2, outer_optimizer=outer, is_fast=is_fast
        )
        state = MetaState(params, (), outer.init((params, ())), jnp.zeros((), jnp.int32))
        results[name] = learner.step(state, batch)
    new_dict, metrics_dict = results["dict"]
    moved = max(float(jnp.max(jnp.abs(a - b))) 
                for a, b in zip(jax.tree.leaves(new_dict.params), jax.tree.leaves(params)))
    assert moved > 1e-3, "the reference step did not change the weights"
    assert int(metrics_dict["tasks"]) == 4
    for name in ("nnx", "linen"):
        new, metrics = results[name]
        assert_trees_close(jax.tree.map(np.asarray, new.params), jax.tree.map(np.asarray, new_dict.params))
        assert sorted(metrics) == sorted(metrics_dict)
        for key in metrics:
            np.testing.assert_allclose(metrics[key], metrics_dict[key], **TOL)


def test_from_nnx_rejects_non_param_state():
    class WithBatchNorm(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(IN, 2, rngs=rngs)
            self.norm = nnx.BatchNorm(2, rngs=rngs)

        def __call__(self, x):
            return self.norm(self.linear(x))[:, 0]

    with pytest.raises(ValueError, match=r"non-Param state at .*norm"):
        from_nnx(WithBatchNorm)


def test_from_nnx_rejects_foreign_params():
    model = from_nnx(NnxNet)
    params = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match="got 2 parameter arrays, the module has 4"):
        model.apply({"body": params["body"]}, jnp.ones((2, IN)))


def test_from_linen_rejects_mutable_collections():
    class WithBatchNorm(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.BatchNorm(use_running_average=True)(linen.Dense(2)(x))[:, 0]

    model = from_linen(WithBatchNorm(), jnp.ones((2, IN)))
    with pytest.raises(ValueError, match=r"mutable collections \['batch_stats'\]"):
        model.init(jax.random.key(0))
