"""Every algorithm, table-driven: batching over users equals a per-user loop,
chunking and padding change nothing, and the step compiles once.

The per-user loop here runs the library's step on one user at a time; the
independent references (plain Python loops over users and inner steps, finite
differences, hand-computed and closed-form updates) are in test_gradients.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmeta import algorithms
from jaxmeta.models import Model, embedding_mlp
from jaxmeta.tasks import RaggedTasks, pad_tasks

from conftest import ALGORITHMS, learner_factories, meta_grad, random_tasks, tiny_model

TOL = dict(rtol=1e-5, atol=1e-5)


def make(name, **extra):
    return learner_factories(optax.sgd(1.0), **extra)[name](tiny_model())


def assert_trees_close(a, b, **tol):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **(tol or TOL))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_batched_step_equals_python_loop_over_users(name, tasks, batch):
    learner = make(name)
    state = learner.init(jax.random.key(0))
    grads, metrics = meta_grad(learner, state, batch)
    one = lambda u: pad_tasks(tasks.take([u]), support_size=batch.support_size, query_size=batch.query_size)  # noqa: E731
    singles = [meta_grad(learner, state, one(u)) for u in range(len(tasks))]
    loop_grads = jax.tree.map(lambda *g: sum(g) / len(g), *[g for g, _ in singles])
    assert_trees_close(grads, loop_grads)
    assert float(metrics["tasks"]) == len(tasks)
    for key in metrics:
        if key != "tasks":
            np.testing.assert_allclose(metrics[key], np.mean([m[key] for _, m in singles]), **TOL)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_chunked_equals_unchunked(name, batch):
    whole, chunked = make(name), make(name, chunk_size=3)  # 7 users: chunks of 3, 3 and 1 (+2 padding)
    state = whole.init(jax.random.key(0))
    assert_trees_close(meta_grad(whole, state, batch), meta_grad(chunked, state, batch))
    assert_trees_close(whole.evaluate(state, batch), chunked.evaluate(state, batch))
    assert_trees_close(whole.adapt(state, batch), chunked.adapt(state, batch))
    assert_trees_close(whole.predict(state, batch), chunked.predict(state, batch))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_padding_rows_and_users_change_nothing(name, tasks, batch):
    learner = make(name)
    state = learner.init(jax.random.key(0))
    padded = pad_tasks(tasks, support_size=batch.support_size + 3, query_size=batch.query_size + 2, num_tasks=11)
    # Garbage in padded rows must not leak either: fill them with other valid ids and NaN targets.
    fill = lambda a, m: np.where(np.expand_dims(m, tuple(range(m.ndim, a.ndim))), a, np.ones_like(a) * (2 if a.dtype.kind == "i" else np.nan))  # noqa: E731
    padded = padded._replace(
        support_x=fill(padded.support_x, padded.support_mask),
        support_y=fill(padded.support_y, padded.support_mask),
        query_x=fill(padded.query_x, padded.query_mask),
        query_y=fill(padded.query_y, padded.query_mask),
    )
    # Padding changes float32 summation order; implicit MAML's conjugate gradient
    # amplifies that rounding to ~1e-5 (in float64 the two agree to 1e-13).
    tol = dict(rtol=1e-4, atol=5e-5) if name == "imaml" else TOL
    assert_trees_close(meta_grad(learner, state, batch), meta_grad(learner, state, padded), **tol)
    assert_trees_close(learner.evaluate(state, batch), learner.evaluate(state, padded), **tol)
    real = lambda tree: jax.tree.map(lambda a: a[: len(tasks)], tree)  # noqa: E731
    assert_trees_close(learner.adapt(state, batch), real(learner.adapt(state, padded)))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_no_recompilation_on_later_steps(name):
    traces = []
    base = tiny_model()

    def counting_apply(params, x):
        traces.append(1)  # runs only while JAX traces
        return base.apply(params, x)

    learner = learner_factories(optax.adam(1e-2))[name](base._replace(apply=counting_apply))
    state = learner.init(jax.random.key(0))
    batches = [pad_tasks(random_tasks(5, seed=s), support_size=6, query_size=4) for s in range(4)]
    state, _ = learner.step(state, batches[0])
    learner.evaluate(state, batches[0])
    after_first = len(traces)
    for b in batches[1:]:
        state, metrics = learner.step(state, b)
        learner.evaluate(state, b)
    assert len(traces) == after_first, "later same-shaped steps re-traced the model"
    assert int(state.step) == 4 and np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_adapt_returns_per_user_fast_weights(name, batch):
    learner = make(name)
    state = learner.init(jax.random.key(0))
    fast = learner.adapt(state, batch)
    assert fast["emb"] == [None, None]  # slow weights are never copied per user
    head = fast["head"]["w"]
    assert head.shape == (batch.num_tasks,) + state.params["head"]["w"].shape
    moved = float(jnp.max(jnp.abs(head - state.params["head"]["w"][None])))
    if name == "no_adaptation":
        assert moved == 0.0
    else:
        assert moved > 1e-4
    if name == "anil":
        assert fast["body"] == {"w": None, "b": None}
    else:
        assert fast["body"]["w"].shape[0] == batch.num_tasks


def test_evaluate_before_is_the_unadapted_model(batch):
    learner = make("maml")
    state = learner.init(jax.random.key(0))
    metrics = learner.evaluate(state, batch)
    model = tiny_model()
    per_user = [float(jnp.mean((model.apply(state.params, qx) - qy) ** 2)) for qx, qy in _query(batch)]
    np.testing.assert_allclose(metrics["query_loss_before"], np.mean(per_user), rtol=1e-5)
    assert float(metrics["query_loss_after"]) != float(metrics["query_loss_before"])


def dense_model() -> Model:
    """``x @ w + b`` on float inputs ``[rows, 3]``; all weights fast but a slow offset."""

    def init(key):
        return {"w": jax.random.normal(key, (3,)), "b": jnp.zeros(()), "c": jnp.full((), 0.1)}

    return Model(init, lambda p, x: x @ p["w"] + p["b"] + p["c"], is_fast=lambda path: path[0] != "c", is_head=lambda path: path[0] == "b")


@pytest.mark.parametrize("name", ALGORITHMS)
def test_non_finite_padded_inputs_and_targets_do_not_leak(name):
    rng = np.random.default_rng(0)
    rows = lambda n: (rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=n).astype(np.float32))  # noqa: E731
    parts = [rows(2 + u) + rows(1 + u % 2) for u in range(4)]
    tasks = RaggedTasks(*(list(f) for f in zip(*parts)))
    clean = pad_tasks(tasks, num_tasks=5)
    dirty = clean._replace(
        support_x=np.where(clean.support_mask[..., None], clean.support_x, np.nan),
        support_y=np.where(clean.support_mask, clean.support_y, np.inf),
        query_x=np.where(clean.query_mask[..., None], clean.query_x, -np.inf),
        query_y=np.where(clean.query_mask, clean.query_y, np.nan),
    )
    learner = learner_factories(optax.sgd(1.0))[name](dense_model())
    state = learner.init(jax.random.key(0))
    got, want = meta_grad(learner, state, dirty), meta_grad(learner, state, clean)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(got))
    assert_trees_close(got, want)
    assert_trees_close(learner.evaluate(state, dirty), learner.evaluate(state, clean))


@pytest.mark.parametrize(
    "inner",
    [
        optax.sgd(0.3),
        optax.adam(0.1),
        optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.3)),  # no derivative at a zero gradient
    ],
    ids=["sgd", "adam", "clip_by_global_norm"],
)
def test_any_inner_optimizer_with_padding_users_and_chunks(inner, tasks, batch):
    """Padding users and chunk padding have zero support gradients; second-order
    meta-gradients through a non-smooth inner optimizer must not turn NaN."""
    make = lambda **kw: algorithms.maml(tiny_model(), inner_optimizer=inner, inner_steps=2, outer_optimizer=optax.sgd(1.0), **kw)  # noqa: E731
    learner, chunked = make(), make(chunk_size=3)
    state = learner.init(jax.random.key(0))
    want = meta_grad(learner, state, batch)
    padded = pad_tasks(tasks, num_tasks=9)
    for got in (meta_grad(learner, state, padded), meta_grad(chunked, state, batch), meta_grad(chunked, state, padded)):
        assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(got))
        assert_trees_close(got, want)


def _query(batch):
    return [
        (np.asarray(x)[m], np.asarray(y)[m])
        for x, y, m in zip(batch.query_x, batch.query_y, batch.query_mask)
    ]


def test_binary_cross_entropy_loss_trains_clicks():
    model = embedding_mlp([3, 5], embed_dim=2, hidden=(4,))
    tasks = random_tasks(6, seed=3)
    clicks = tasks.__class__(
        tasks.support_x, [(y > 0).astype(np.float32) for y in tasks.support_y],
        tasks.query_x, [(y > 0).astype(np.float32) for y in tasks.query_y],
    )
    learner = algorithms.maml(model, loss="bce", outer_optimizer=optax.adam(1e-2))
    state = learner.init(jax.random.key(0))
    batch = pad_tasks(clicks)
    first = None
    for _ in range(30):
        state, metrics = learner.step(state, batch)
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < first
    assert np.isclose(first, np.log(2), atol=0.3)  # logits start near 0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: algorithms.maml(tiny_model(), inner_steps=0), "inner_steps=0"),
        (lambda: algorithms.maml(tiny_model(), chunk_size=0), "chunk_size=0"),
        (lambda: algorithms.anil(Model(lambda k: {}, lambda p, x: x)), "is_head"),
        (lambda: algorithms.imaml(tiny_model(), reg=0.0), "reg=0.0"),
        (lambda: algorithms.maml(tiny_model(), loss="mae"), "'mae'"),
    ],
)
def test_bad_arguments_raise_with_the_value_and_a_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call()
