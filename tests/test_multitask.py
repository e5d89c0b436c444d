"""Multi-task learning with profiled ridge heads: each head against an explicit NumPy ridge
solve (on the support rows for a new user, on all rows in training), the in-sample objective
by hand and apart from ``ridge``'s episodic one, a batch against a per-user loop, the gradient
against central differences, padding with NaN and garbage, and training on synthetic data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from jaxmeta import algorithms
from jaxmeta.algorithms.multitask import multitask
from jaxmeta.data import synthetic
from jaxmeta.models import Model, embedding_mlp
from jaxmeta.tasks import RaggedTasks, pad_tasks

from conftest import assert_batch_equals_loop, meta_grad, random_tasks, tiny_model

REG = 0.7


def users_of(num_users, seed, *, empty=(), dtype=np.float32):
    """Random users of ``tiny_model``; those in ``empty`` have no support rows."""
    users = random_tasks(num_users, seed=seed, dtype=dtype)
    none = lambda a: a[:0]  # noqa: E731
    return RaggedTasks([none(x) if u in empty else x for u, x in enumerate(users.support_x)],
                       [none(y) if u in empty else y for u, y in enumerate(users.support_y)],
                       users.query_x, users.query_y)


def numpy_predict(params, x, head):
    """``tiny_model`` written out in float64; ``head`` is ``(b, w)``."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = np.tanh(np.concatenate([p["emb"][0][x[:, 0]], p["emb"][1][x[:, 1]]], axis=1) @ p["body"]["w"] + p["body"]["b"])
    return head[0] + h @ head[1], h


def numpy_head(params, x, y, reg=REG):
    """The ridge head ``(b [1], w [3, 1])`` of ``tiny_model`` on rows ``(x, y)``: the least-squares
    solution of the design ``[1, h]`` stacked on ``sqrt(reg) I``, shrunk towards the model's own head."""
    head = jax.tree.map(lambda a: np.asarray(a, np.float64), params["head"])
    w0 = np.concatenate([head["b"], head["w"][:, 0]])
    _, h = numpy_predict(params, x, (w0[0], w0[1:]))
    design = np.concatenate([np.concatenate([np.ones((len(y), 1)), h], axis=1), np.sqrt(reg) * np.eye(4)])
    w = np.linalg.lstsq(design, np.concatenate([y, np.sqrt(reg) * w0]), rcond=None)[0]
    return w[:1], w[1:, None]


def in_sample(params, x, y, reg=REG):
    """One user's training objective by hand: the head fitted on ``(x, y)``, its mean squared
    error on the same rows plus ``reg |w - w0|^2 / rows``."""
    b, w = numpy_head(params, x, y, reg)
    fitted, _ = numpy_predict(params, x, (b, w[:, 0]))
    shift = np.sum((b - np.asarray(params["head"]["b"])) ** 2) + np.sum((w - np.asarray(params["head"]["w"])) ** 2)
    return np.mean((y - fitted) ** 2) + reg * shift / len(y)


def all_rows_of(users, u):
    both = lambda a, b: np.concatenate([a[u], b[u]])  # noqa: E731
    return both(users.support_x, users.query_x), both(users.support_y, users.query_y)


def test_a_new_users_head_is_the_ridge_solution_on_the_support_rows():
    learner = multitask(tiny_model(), reg=REG)
    state = learner.init(jax.random.key(0))
    users = users_of(5, seed=1, empty=(2,))
    fast = learner.adapt(state, pad_tasks(users, num_tasks=6))
    for u in range(5):
        if u == 2:  # no support rows: the prior, exactly
            b, w = state.params["head"]["b"], state.params["head"]["w"]
        else:
            b, w = numpy_head(state.params, users.support_x[u], users.support_y[u])
        np.testing.assert_allclose(fast["head"]["b"][u], b, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(fast["head"]["w"][u], w, rtol=2e-4, atol=2e-5)
    assert jax.tree.leaves((fast["body"], fast["emb"])) == []  # the trunk is not adapted
    np.testing.assert_array_equal(fast["head"]["b"][2], state.params["head"]["b"])


def test_adapt_reg_shrinks_only_the_new_users_head():
    users = users_of(4, seed=2)
    batch = pad_tasks(users)
    plain, shrunk = multitask(tiny_model(), reg=REG), multitask(tiny_model(), reg=REG, adapt_reg=25.0)
    state = plain.init(jax.random.key(0))
    fast = shrunk.adapt(state, batch)
    for u in range(4):
        b, w = numpy_head(state.params, users.support_x[u], users.support_y[u], reg=25.0)
        np.testing.assert_allclose(fast["head"]["b"][u], b, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(fast["head"]["w"][u], w, rtol=2e-4, atol=2e-5)
    # training fits every head with reg alone: the same step either way
    jax.tree.map(np.testing.assert_array_equal, meta_grad(plain, state, batch), meta_grad(shrunk, state, batch))


def test_a_training_users_head_is_the_ridge_solution_on_all_their_rows():
    """In training the head is profiled out, so it is read off the gradient in ``w0``:
    ``d/dw0 min_w (|y - f(w)|^2 + reg |w - w0|^2) / rows = -2 reg (w* - w0) / rows``."""
    learner = multitask(tiny_model(), reg=REG, outer_optimizer=optax.sgd(1.0))
    state = learner.init(jax.random.key(1))
    users = users_of(4, seed=3, empty=(1,))
    (grads, _), metrics = meta_grad(learner, state, pad_tasks(users, num_tasks=5))
    want_b, want_w = np.zeros(1), np.zeros((3, 1))
    for u in range(4):
        x, y = all_rows_of(users, u)
        b, w = numpy_head(state.params, x, y)
        want_b += -2 * REG * (b - state.params["head"]["b"]) / len(y) / 4
        want_w += -2 * REG * (w - state.params["head"]["w"]) / len(y) / 4
    np.testing.assert_allclose(grads["head"]["b"], want_b, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(grads["head"]["w"], want_w, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"], np.mean([in_sample(state.params, *all_rows_of(users, u))
                                                         for u in range(4)]), rtol=1e-5)


def test_the_objective_is_in_sample_unlike_ridges_episodic_one():
    users = users_of(6, seed=5)
    batch = pad_tasks(users)
    mine = multitask(tiny_model(), reg=REG)
    theirs = algorithms.ridge(tiny_model(), init_reg=REG)  # the same head solve, precisions all REG
    state, ridge_state = mine.init(jax.random.key(2)), theirs.init(jax.random.key(2))
    _, metrics = mine.step(state, batch)
    _, ridge_metrics = theirs.step(ridge_state, batch)

    def episodic(u):  # fitted on the support rows, scored on the query rows
        b, w = numpy_head(state.params, users.support_x[u], users.support_y[u])
        return np.mean((users.query_y[u] - numpy_predict(state.params, users.query_x[u], (b, w[:, 0]))[0]) ** 2)

    want = np.mean([in_sample(state.params, *all_rows_of(users, u)) for u in range(6)])
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
    np.testing.assert_allclose(ridge_metrics["loss"], np.mean([episodic(u) for u in range(6)]), rtol=1e-5)
    assert abs(float(metrics["loss"]) - float(ridge_metrics["loss"])) > 0.1 * float(ridge_metrics["loss"])
    # At test time the two are the same fold-in: only training differs.
    for key in ("query_loss_before", "query_loss_after"):
        np.testing.assert_allclose(mine.evaluate(state, batch)[key], theirs.evaluate(ridge_state, batch)[key],
                                   rtol=1e-5)


def test_a_batch_equals_a_loop_over_users():
    learner = multitask(tiny_model(), reg=REG, outer_optimizer=optax.sgd(1.0))
    state = learner.init(jax.random.key(3))
    users = users_of(5, seed=7, empty=(3,))
    batch = pad_tasks(users, num_tasks=7)
    assert_batch_equals_loop(learner, state, users, batch)
    predictions, fast = learner.predict(state, batch), learner.adapt(state, batch)
    for u in range(5):
        one = pad_tasks(users.take([u]), support_size=batch.support_size, query_size=batch.query_size)
        np.testing.assert_allclose(predictions[u], learner.predict(state, one)[0], rtol=1e-5, atol=1e-6)
        for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(learner.adapt(state, one))):
            np.testing.assert_allclose(a[u], b[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("staged", [False, True])
def test_gradient_matches_central_differences(staged):
    with jax.enable_x64(True):
        learner = multitask(tiny_model(jnp.float64, staged=staged), reg=REG, outer_optimizer=optax.sgd(1.0))
        state = learner.init(jax.random.key(4))
        batch = pad_tasks(users_of(4, seed=9, empty=(2,), dtype=np.float64), num_tasks=5, dtype=np.float64)
        (grads, _), _ = meta_grad(learner, state, batch)
        flat, unravel = ravel_pytree(state.params)
        loss = jax.jit(lambda v: learner.step(state._replace(params=unravel(v)), batch)[1]["loss"])
        got, eps = ravel_pytree(grads)[0], 1e-6
        assert float(jnp.abs(got).max()) > 1e-3
        for i in range(flat.size):
            e = jnp.zeros_like(flat).at[i].set(eps)
            np.testing.assert_allclose(got[i], (loss(flat + e) - loss(flat - e)) / (2 * eps), rtol=1e-6, atol=1e-9)


def feature_model() -> Model:
    """Float features (not ids) -> tanh layer -> linear head: NaN in a padded row's
    inputs would reach the gradient unless padded rows are zeroed before the model."""

    def init(key):
        k = jax.random.split(key, 2)
        head = {"w": jax.random.normal(k[1], (3, 1)), "b": jnp.ones(1)}
        return {"body": jax.random.normal(k[0], (2, 3)), "head": head}

    return Model(init, lambda p, x: (jnp.tanh(x @ p["body"]) @ p["head"]["w"] + p["head"]["b"][None, :])[:, 0],
                 is_head=lambda path: path[0] == "head")


def as_features(users):
    floats = lambda xs: [x.astype(np.float32) / 4 for x in xs]  # noqa: E731
    return RaggedTasks(floats(users.support_x), users.support_y, floats(users.query_x), users.query_y)


@pytest.mark.parametrize("inputs", ["ids", "features"])
def test_padded_rows_and_users_change_nothing_even_with_nan_and_garbage(inputs):
    model, users = tiny_model(staged=True), users_of(5, seed=11, empty=(0,))
    if inputs == "features":
        model, users = feature_model(), as_features(users)
    learner = multitask(model, reg=REG, outer_optimizer=optax.sgd(1.0))
    state = learner.init(jax.random.key(5))
    batch = pad_tasks(users)
    padded = pad_tasks(users, support_size=batch.support_size + 3, query_size=batch.query_size + 2, num_tasks=8)
    bad = lambda a: np.nan if a.dtype.kind == "f" else 10**6  # noqa: E731  (ids out of range: clamped)
    rows = lambda mask, a: np.where(mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim)), a, bad(a))  # noqa: E731
    padded = padded._replace(support_x=rows(padded.support_mask, padded.support_x),
                             support_y=rows(padded.support_mask, padded.support_y),
                             query_x=rows(padded.query_mask, padded.query_x),
                             query_y=rows(padded.query_mask, padded.query_y))
    # float32: the padded sizes sum in another order, a few ulps apart on gradients of about 0.2
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # noqa: E731
    jax.tree.map(close, meta_grad(learner, state, batch), meta_grad(learner, state, padded))
    jax.tree.map(lambda a, b: close(a, b[:5]), learner.adapt(state, batch), learner.adapt(state, padded))
    close(learner.predict(state, batch), learner.predict(state, padded)[:5, : batch.query_size])


def test_a_few_steps_lower_the_loss_without_recompiling():
    data = synthetic.generate(num_train_users=48, num_new_users=16, num_items=40, seed=0)
    learner = multitask(embedding_mlp(data.vocab_sizes, hidden=(16,), output_bias=data.mean_rating),
                        outer_optimizer=optax.adam(1e-2))
    state = learner.init(jax.random.key(0))
    halves = [pad_tasks(data.train.take(list(idx)), support_size=20, query_size=10)
              for idx in (range(24), range(24, 48))]
    new = pad_tasks(data.new)
    first = [float(learner.step(state, half)[1]["loss"]) for half in halves]
    new_before = float(learner.evaluate(state, new)["query_loss_after"])
    for i in range(60):
        state, _ = learner.step(state, halves[i % 2])
    last = [float(learner.step(state, half)[1]["loss"]) for half in halves]
    assert learner.step._cache_size() == 1  # new values, same shapes
    assert max(last[i] / first[i] for i in range(2)) < 0.7, (first, last)
    assert float(learner.evaluate(state, new)["query_loss_after"]) < new_before


@pytest.mark.parametrize("kwargs, match", [
    ({"inner_steps": 5}, "multitask: inner_steps=5 does not apply"),
    ({"inner_optimizer": 0.03}, "multitask: inner_optimizer=0.03 does not apply"),
    ({"backend": "xla"}, "multitask: backend='xla' does not apply"),
    ({"loss": "bce"}, "loss='bce'"),
    ({"reg": 0.0}, "reg=0.0"),
    ({"reg": float("nan")}, "reg=nan"),
    ({"adapt_reg": -1.0}, "adapt_reg=-1.0"),
])
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        multitask(tiny_model(), **kwargs)


def test_a_model_without_a_head_needs_is_fast():
    with pytest.raises(ValueError, match="multitask needs a head"):
        multitask(tiny_model()._replace(is_head=None))
    learner = multitask(tiny_model()._replace(is_head=None), is_fast=lambda path: path[0] == "head")
    assert learner.is_fast(("head", "w")) and not learner.is_fast(("body", "w"))
