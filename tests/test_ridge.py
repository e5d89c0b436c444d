"""The meta-learned ridge head: each user's head against an explicit NumPy ridge solve,
the meta-gradient (through the solve, the prior and the precisions) against central
differences, a batch against a per-user loop, and padding with NaN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from jaxmeta import algorithms
from jaxmeta.models import biased_mf
from jaxmeta.tasks import RaggedTasks, pad_tasks

from conftest import assert_batch_equals_loop, meta_grad, random_tasks, tiny_model

ITEMS, DIM = 6, 3


def mf_tasks(num_users, seed, dtype=np.float32, empty=()):
    rng = np.random.default_rng(seed)
    parts = []
    for u in range(num_users):
        s = 0 if u in empty else int(rng.integers(1, 7))
        q = int(rng.integers(1, 4))
        parts.append(({"item": rng.integers(0, ITEMS + 2, s).astype(np.int32)}, rng.normal(3, 1, s).astype(dtype),
                      {"item": rng.integers(0, ITEMS + 2, q).astype(np.int32)}, rng.normal(3, 1, q).astype(dtype)))
    return RaggedTasks(*(list(f) for f in zip(*parts)))


def state_of(learner, seed=0, dtype=jnp.float32):
    state = learner.init(jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    params = treedef.unflatten([(a + 0.5 * jax.random.normal(k, a.shape)).astype(dtype) for a, k in zip(leaves, keys)])
    rng = np.random.default_rng(seed)
    hyper = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.5, a.shape), dtype), state.hyper)
    return state._replace(params=params, hyper=hyper, opt_state=optax.sgd(1.0).init((params, hyper)))


def numpy_head(params, log_reg, items, y, implicit=None):
    """The user's (vector, bias) by the normal equations, written out for biased MF; with ``implicit`` (``A``)
    around the prior ``w0 + A [mean design row; log(1 + n)]``."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    known = (items >= 1) & (items <= ITEMS)
    q = np.where(known[:, None], p["items"]["vectors"][np.where(known, items, 0)], 0.0)
    b = np.where(known, p["items"]["biases"][np.where(known, items, 0)], 0.0)
    w0 = np.concatenate([[p["user"]["bias"]], p["user"]["vector"]])  # ravel order: bias, then vector
    design = np.concatenate([np.ones((len(items), 1)), q], axis=1)
    if implicit is not None and len(items):  # the null input, item 0, is unknown: its design row is [1, 0, ...]
        null = np.eye(DIM + 1)[0]
        z = np.concatenate([design.mean(axis=0) - null, [np.log(1 + len(items))]])
        w0 = w0 + np.asarray(implicit, np.float64) @ z
    residual = y - (p["global_bias"] + b + design @ w0)
    w = w0 + np.linalg.solve(design.T @ design + np.diag(np.exp(np.asarray(log_reg, np.float64))), design.T @ residual)
    return w[1:], w[0]


def test_each_head_is_the_ridge_solution_and_an_empty_support_keeps_the_prior():
    learner = algorithms.ridge(biased_mf(ITEMS, dim=DIM))
    state = state_of(learner)
    users = mf_tasks(5, seed=1, empty=(2,))
    fast = learner.adapt(state, pad_tasks(users, num_tasks=6))
    for u in range(5):
        vector, bias = numpy_head(state.params, state.hyper, users.support_x[u]["item"], users.support_y[u])
        np.testing.assert_allclose(fast["user"]["vector"][u], vector, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(fast["user"]["bias"][u], bias, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(fast["user"]["bias"][2], state.params["user"]["bias"])


def test_the_implicit_prior_moves_each_head_to_the_ridge_solution_around_it_and_starts_at_the_fixed_prior():
    """``implicit=True``: each head against the NumPy solve around ``w0 + A z``; with ``A`` zero (as
    initialised) the heads are the fixed prior's; an empty support keeps ``w0``; the bias's column of ``J``,
    constant, is left out of ``z``: ``A``'s column for it gets no meta-gradient (it would only duplicate ``w0``)."""
    fixed = algorithms.ridge(biased_mf(ITEMS, dim=DIM))
    learner = algorithms.ridge(biased_mf(ITEMS, dim=DIM), outer_optimizer=optax.sgd(1.0), implicit=True)
    start = learner.init(jax.random.key(0))
    assert start.hyper["implicit"].shape == (DIM + 1, DIM + 2) and not np.any(start.hyper["implicit"])
    state = state_of(learner)
    users = mf_tasks(5, seed=1, empty=(2,))
    batch = pad_tasks(users, num_tasks=6)
    fast = learner.adapt(state, batch)
    for u in range(5):
        vector, bias = numpy_head(state.params, state.hyper["log_reg"], users.support_x[u]["item"],
                                  users.support_y[u], implicit=state.hyper["implicit"])
        np.testing.assert_allclose(fast["user"]["vector"][u], vector, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(fast["user"]["bias"][u], bias, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(fast["user"]["bias"][2], state.params["user"]["bias"])
    zero = state._replace(hyper={**state.hyper, "implicit": jnp.zeros_like(state.hyper["implicit"])})
    as_fixed = state._replace(hyper=state.hyper["log_reg"])
    for a, b in zip(jax.tree.leaves(learner.adapt(zero, batch)), jax.tree.leaves(fixed.adapt(as_fixed, batch))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    grads, _ = meta_grad(learner, state, batch)
    assert not np.any(grads[1]["implicit"][:, 0]) and np.all(np.abs(grads[1]["implicit"][:, 1:]) > 0)


def assert_meta_gradient_is_central_differences(learner, state, batch, eps=1e-6):
    """Every coordinate of the meta-gradient of (params, hyper) against central differences of the query loss."""
    grads, _ = meta_grad(learner, state, batch)
    flat, unravel = ravel_pytree((state.params, state.hyper))
    loss = jax.jit(lambda v: learner.evaluate(state._replace(params=unravel(v)[0], hyper=unravel(v)[1]),
                                              batch)["query_loss_after"])
    got = ravel_pytree(grads)[0]
    for i in range(flat.size):
        e = jnp.zeros_like(flat).at[i].set(eps)
        np.testing.assert_allclose(got[i], (loss(flat + e) - loss(flat - e)) / (2 * eps), rtol=1e-5, atol=1e-8)


def test_meta_gradient_matches_central_differences():
    with jax.enable_x64(True):
        learner = algorithms.ridge(biased_mf(ITEMS, dim=DIM), outer_optimizer=optax.sgd(1.0))
        state = state_of(learner, seed=3, dtype=jnp.float64)
        batch = pad_tasks(mf_tasks(4, seed=4, dtype=np.float64, empty=(1,)), dtype=np.float64)
        assert_meta_gradient_is_central_differences(learner, state, batch)


def test_the_implicit_priors_meta_gradient_matches_central_differences():
    with jax.enable_x64(True):
        learner = algorithms.ridge(biased_mf(ITEMS, dim=DIM), outer_optimizer=optax.sgd(1.0), implicit=True)
        state = state_of(learner, seed=7, dtype=jnp.float64)
        batch = pad_tasks(mf_tasks(4, seed=8, dtype=np.float64, empty=(1,)), dtype=np.float64)
        assert_meta_gradient_is_central_differences(learner, state, batch)


def test_the_query_loss_is_chosen_and_the_support_fit_stays_least_squares():
    """With ``loss="mae"`` the heads are the same ridge solutions; the query loss and its
    meta-gradient (against central differences) are the absolute error's."""
    with jax.enable_x64(True):
        mse = algorithms.ridge(biased_mf(ITEMS, dim=DIM), outer_optimizer=optax.sgd(1.0))
        mae = algorithms.ridge(biased_mf(ITEMS, dim=DIM), outer_optimizer=optax.sgd(1.0), loss="mae")
        state = state_of(mse, seed=5, dtype=jnp.float64)
        users = mf_tasks(4, seed=6, dtype=np.float64)
        batch = pad_tasks(users, dtype=np.float64)
        for a, b in zip(jax.tree.leaves(mse.adapt(state, batch)), jax.tree.leaves(mae.adapt(state, batch))):
            np.testing.assert_array_equal(a, b)
        predictions = np.asarray(mse.predict(state, batch))
        errors = [np.abs(predictions[u] - batch.query_y[u])[batch.query_mask[u]].mean() for u in range(4)]
        np.testing.assert_allclose(mae.evaluate(state, batch)["query_loss_after"], np.mean(errors), rtol=1e-10)
        assert_meta_gradient_is_central_differences(mae, state, batch)


@pytest.mark.parametrize("implicit", [False, True])
def test_a_batch_equals_a_loop_over_users_and_padding_with_nan_changes_nothing(implicit):
    learner = algorithms.ridge(tiny_model(), outer_optimizer=optax.sgd(1.0), implicit=implicit)
    state = state_of(learner) if implicit else learner.init(jax.random.key(0))
    users = random_tasks(5, seed=2)
    batch = pad_tasks(users, num_tasks=7)
    grads = assert_batch_equals_loop(learner, state, users, batch)
    dirty = batch._replace(support_y=np.where(batch.support_mask, batch.support_y, np.nan),
                           query_y=np.where(batch.query_mask, batch.query_y, np.nan))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(meta_grad(learner, state, dirty)[0])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs, match", [
    ({"inner_steps": 5}, "ridge: inner_steps=5 does not apply"),
    ({"loss": "bce"}, "loss='bce'"),
    ({"init_reg": 0.0}, "init_reg=0.0"),
    ({"implicit": "no"}, "implicit='no'; pass True or False"),
])
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        algorithms.ridge(biased_mf(ITEMS, dim=DIM), **kwargs)


def test_a_models_implicit_rows_must_have_one_column_per_head_coordinate():
    model = biased_mf(ITEMS, dim=DIM)
    wrong = model._replace(implicit=lambda params, x: jnp.ones((x["item"].shape[0], DIM)))
    learner = algorithms.ridge(wrong, implicit=True)
    with pytest.raises(ValueError, match=rf"implicit rows have shape \(6, {DIM}\) for 6 rows, and ridge solves {DIM + 1}"):
        learner.adapt(learner.init(jax.random.key(0)), pad_tasks(mf_tasks(2, seed=0)))
    right = algorithms.ridge(model._replace(implicit=lambda params, x: jnp.ones((x["item"].shape[0], DIM + 1))),
                             implicit=True)
    heads = right.adapt(right.init(jax.random.key(0)), pad_tasks(mf_tasks(2, seed=0)))
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(heads))


def test_a_training_job_builds_the_implicit_prior_and_refuses_it_for_other_algorithms():
    """``jaxmeta train --implicit-prior`` (``TrainConfig.implicit_prior``) builds ``ridge(implicit=True)``; any other
    algorithm is refused with the value named."""
    from jaxmeta.cli import _parser, _settings
    from jaxmeta.job import TrainConfig, make_learner

    args = _parser().parse_args(["train", "--algo", "ridge", "--implicit-prior"])
    config = TrainConfig(**_settings(args))
    assert config.implicit_prior
    state = make_learner(config, biased_mf(ITEMS, dim=DIM)).init(jax.random.key(0))
    assert set(state.hyper) == {"log_reg", "implicit"}
    assert not TrainConfig(**_settings(_parser().parse_args(["train", "--algo", "ridge"]))).implicit_prior
    with pytest.raises(ValueError, match="implicit_prior=True with algo='maml'"):
        TrainConfig(algo="maml", implicit_prior=True)
    vectors = _parser().parse_args(["train", "--algo", "ridge", "--implicit-prior", "--implicit-vectors"])
    with pytest.raises(ValueError, match="implicit_vectors=True with implicit_prior=True, model='mlp': the free "
                                         "vectors are hybrid MeLU's"):
        TrainConfig(**_settings(vectors))
    with pytest.raises(ValueError, match="implicit_vectors=True with implicit_prior=False"):
        TrainConfig(algo="ridge", data="ml-100k", model="hybrid", implicit_vectors=True)
