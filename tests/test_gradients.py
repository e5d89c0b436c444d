"""Meta-gradients against independent references: finite differences, hand-computed
updates and closed forms (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from jaxmeta import algorithms
from jaxmeta.models import Model
from jaxmeta.tasks import RaggedTasks, pad_tasks

from conftest import learner_factories, meta_grad, random_tasks, tiny_model

LR, K = 0.3, 3


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def users_of(tasks: RaggedTasks):
    return list(zip(tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y))


def maml_reference(model, params, users, *, first_order=False, fast_keys=("body", "head")):
    """The MAML objective written plainly: a Python loop over users and inner steps."""
    slow = {k: v for k, v in params.items() if k not in fast_keys}

    def loss(fast, slow, x, y):
        return jnp.mean((model.apply({**fast, **slow}, x) - y) ** 2)

    total = 0.0
    for sx, sy, qx, qy in users:
        fast = {k: params[k] for k in fast_keys}
        for _ in range(K):
            g = jax.grad(loss)(fast, slow, sx, sy)
            if first_order:
                g = jax.lax.stop_gradient(g)
            fast = jax.tree.map(lambda p, gi: p - LR * gi, fast, g)
        total += loss(fast, slow, qx, qy)
    return total / len(users)


def central_differences(f, params, eps=1e-6):
    flat, unravel = ravel_pytree(params)
    f_flat = jax.jit(lambda v: f(unravel(v)))
    grad = np.zeros_like(flat)
    for i in range(flat.size):
        e = jnp.zeros_like(flat).at[i].set(eps)
        grad[i] = (f_flat(flat + e) - f_flat(flat - e)) / (2 * eps)
    return unravel(jnp.asarray(grad))


@pytest.fixture
def setting():
    model = tiny_model(jnp.float64)
    tasks = random_tasks(3, seed=4, dtype=np.float64)
    params = model.init(jax.random.key(1))
    return model, tasks, params


def _state(learner, params):
    state = learner.init(jax.random.key(0))
    return state._replace(params=params, opt_state=optax.sgd(1.0).init((params, state.hyper)))


def test_maml_second_order_matches_finite_differences(setting):
    model, tasks, params = setting
    learner = algorithms.maml(model, inner_optimizer=optax.sgd(LR), inner_steps=K, outer_optimizer=optax.sgd(1.0))
    (grads, _), metrics = meta_grad(learner, _state(learner, params), pad_tasks(tasks, dtype=np.float64))
    users = users_of(tasks)
    numeric = central_differences(lambda p: maml_reference(model, p, users), params)
    np.testing.assert_allclose(float(metrics["loss"]), float(maml_reference(model, params, users)), rtol=1e-10)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(numeric)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def test_first_order_maml_is_stop_gradient_reference_and_differs_from_second_order(setting):
    model, tasks, params = setting
    batch = pad_tasks(tasks, dtype=np.float64)
    kwargs = dict(inner_optimizer=optax.sgd(LR), inner_steps=K, outer_optimizer=optax.sgd(1.0))
    fo = algorithms.fomaml(model, **kwargs)
    so = algorithms.maml(model, **kwargs)
    (fo_grads, _), _ = meta_grad(fo, _state(fo, params), batch)
    (so_grads, _), _ = meta_grad(so, _state(so, params), batch)
    users = users_of(tasks)
    want = jax.grad(lambda p: maml_reference(model, p, users, first_order=True))(params)
    for got, ref in zip(jax.tree.leaves(fo_grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(fo_grads), jax.tree.leaves(so_grads)))
    assert gap > 1e-3, f"first- and second-order MAML gradients should differ, max gap {gap}"


def test_anil_equals_second_order_reference_adapting_the_head_only(setting):
    model, tasks, params = setting
    learner = algorithms.anil(model, inner_optimizer=optax.sgd(LR), inner_steps=K, outer_optimizer=optax.sgd(1.0))
    (grads, _), metrics = meta_grad(learner, _state(learner, params), pad_tasks(tasks, dtype=np.float64))
    users = users_of(tasks)
    reference = lambda p: maml_reference(model, p, users, fast_keys=("head",))  # noqa: E731
    np.testing.assert_allclose(float(metrics["loss"]), float(reference(params)), rtol=1e-10)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(jax.grad(reference)(params))):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def _linear_model() -> Model:
    """pred = x @ w + b + c, with w, b fast and c slow."""

    def init(key):
        return {"w": jax.random.normal(key, (3,), jnp.float64), "b": jnp.float64(0.3), "c": jnp.float64(-0.2)}

    return Model(init, lambda p, x: x @ p["w"] + p["b"] + p["c"], is_fast=lambda path: path[0] != "c")


def _dense_tasks(num_users, seed, support=5, query=4):
    rng = np.random.default_rng(seed)
    rows = lambda n: (rng.normal(size=(n, 3)), rng.normal(size=n))  # noqa: E731
    parts = [rows(support - u % 2) + rows(query + u % 3) for u in range(num_users)]
    return RaggedTasks(*(list(f) for f in zip(*parts)))


def test_reptile_update_equals_hand_computed():
    model, tasks, eps = _linear_model(), _dense_tasks(3, seed=2), 0.5
    learner = algorithms.reptile(model, inner_optimizer=optax.sgd(LR), inner_steps=K, outer_optimizer=optax.sgd(eps))
    state = learner.init(jax.random.key(0))
    new, _ = learner.step(state, pad_tasks(tasks, dtype=np.float64))

    w0, b0, c = (np.asarray(state.params[k]) for k in ("w", "b", "c"))
    adapted, slow_grads = [], []
    for sx, sy, qx, qy in users_of(tasks):
        x, y = np.concatenate([sx, qx]), np.concatenate([sy, qy])
        w, b = w0.copy(), float(b0)
        for _ in range(K):
            r = x @ w + b + c - y
            w, b = w - LR * 2 * x.T @ r / len(y), b - LR * 2 * r.mean()
        adapted.append((w, b))
        slow_grads.append(2 * (x @ w + b + c - y).mean())
    np.testing.assert_allclose(new.params["w"], w0 + eps * (np.mean([a[0] for a in adapted], 0) - w0), rtol=1e-12)
    np.testing.assert_allclose(new.params["b"], b0 + eps * (np.mean([a[1] for a in adapted]) - b0), rtol=1e-12)
    np.testing.assert_allclose(new.params["c"], c - eps * np.mean(slow_grads), rtol=1e-12)


def test_metasgd_learning_rates_receive_gradient(setting):
    model, tasks, params = setting
    learner = algorithms.metasgd(model, inner_optimizer=LR, inner_steps=K, outer_optimizer=optax.sgd(1.0))
    (_, lr_grads), _ = meta_grad(learner, _state(learner, params), pad_tasks(tasks, dtype=np.float64))
    leaves = jax.tree.leaves(lr_grads["log_inner_lr"])
    assert len(leaves) == 4  # body w, b and head w, b; none for the slow embeddings
    for g in leaves:
        assert float(jnp.max(jnp.abs(g))) > 1e-6


def test_metasgd_with_uniform_rates_equals_maml(setting):
    model, tasks, params = setting
    batch = pad_tasks(tasks, dtype=np.float64)
    msgd = algorithms.metasgd(model, inner_optimizer=LR, inner_steps=K, outer_optimizer=optax.sgd(1.0))
    mm = algorithms.maml(model, inner_optimizer=optax.sgd(LR), inner_steps=K, outer_optimizer=optax.sgd(1.0))
    (g1, _), _ = meta_grad(msgd, _state(msgd, params), batch)
    (g2, _), _ = meta_grad(mm, _state(mm, params), batch)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])  # equal for a linear model
@pytest.mark.parametrize("slow_grad", ["implicit", "direct"])
def test_imaml_gradient_equals_closed_form_on_quadratic(curvature, slow_grad):
    reg, lr = 1.5, 0.05
    model, tasks = _linear_model(), _dense_tasks(2, seed=3)
    learner = algorithms.imaml(
        model,
        reg=reg,
        cg_steps=20,
        curvature=curvature,
        slow_grad=slow_grad,
        inner_optimizer=optax.sgd(lr),
        inner_steps=2000,
        outer_optimizer=optax.sgd(1.0),
    )
    state = learner.init(jax.random.key(5))
    (grads, _), _ = meta_grad(learner, state, pad_tasks(tasks, dtype=np.float64))

    theta = np.append(np.asarray(state.params["w"]), state.params["b"])  # fast weights, as one vector
    c = float(state.params["c"])
    want_theta, want_c = [], []
    for sx, sy, qx, qy in users_of(tasks):
        xs, xq = np.c_[sx, np.ones(len(sy))], np.c_[qx, np.ones(len(qy))]
        h = 2 * xs.T @ xs / len(sy)  # Hessian of the support loss
        a = h + reg * np.eye(4)
        phi = np.linalg.solve(a, reg * theta + 2 * xs.T @ (sy - c) / len(sy))  # exact proximal solution
        rq = xq @ phi + c - qy
        gq = 2 * xq.T @ rq / len(qy)
        want_theta.append(reg * np.linalg.solve(a, gq))  # d L_q(phi*) / d theta
        dphi_dc = np.linalg.solve(a, -2 * xs.T @ np.ones(len(sy)) / len(sy))
        want_c.append(2 * rq.mean() + (dphi_dc @ gq if slow_grad == "implicit" else 0.0))
    got_theta = np.append(np.asarray(grads["w"]), grads["b"])
    np.testing.assert_allclose(got_theta, np.mean(want_theta, 0), rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(grads["c"], np.mean(want_c), rtol=1e-7, atol=1e-10)


# anil and maml_remat embed once as maml does: checked in the slow suite
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("anil", "maml_remat") else n
                                  for n in sorted(learner_factories(optax.sgd(1.0)))])
def test_embedding_once_per_task_changes_no_gradient(name):
    # A model that declares its embedding stage is embedded once per task, before the
    # inner loop; the step must equal the one that embeds at every inner step.
    tasks = pad_tasks(random_tasks(4, seed=6, dtype=np.float64), dtype=np.float64)
    factory = learner_factories(optax.sgd(1.0))[name]
    plain, staged = factory(tiny_model(jnp.float64)), factory(tiny_model(jnp.float64, staged=True))
    assert_same_learner(staged, plain, tiny_model(jnp.float64).init(jax.random.key(3)), tasks)


def assert_same_learner(got_learner, want_learner, params, tasks, rtol=1e-10):
    """Same meta-gradient, metrics, adapted weights, predictions and evaluation from the same state."""
    (want, _), want_metrics = meta_grad(want_learner, _state(want_learner, params), tasks)
    (got, _), got_metrics = meta_grad(got_learner, _state(got_learner, params), tasks)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-12)
    for key in want_metrics:
        np.testing.assert_allclose(got_metrics[key], want_metrics[key], rtol=rtol)
    state = _state(got_learner, params)
    np.testing.assert_allclose(got_learner.predict(state, tasks), want_learner.predict(state, tasks), rtol=rtol)
    for a, b in zip(jax.tree.leaves(got_learner.adapt(state, tasks)), jax.tree.leaves(want_learner.adapt(state, tasks))):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-12)
    for key, value in want_learner.evaluate(state, tasks).items():
        np.testing.assert_allclose(got_learner.evaluate(state, tasks)[key], value, rtol=rtol)


def test_an_embedding_stage_with_fast_tables_is_not_used():
    model = tiny_model(jnp.float64, staged=True)
    assert model.staged() and model.staged(lambda path: path[0] == "head")
    assert not model.staged(lambda path: True)  # the tables are adapted too: embed at every inner step
    tasks = pad_tasks(random_tasks(3, seed=2, dtype=np.float64), dtype=np.float64)
    params = model.init(jax.random.key(0))
    grads = []
    for m in (model, tiny_model(jnp.float64)):
        learner = algorithms.maml(m, inner_optimizer=optax.sgd(LR), inner_steps=K, outer_optimizer=optax.sgd(1.0),
                                  is_fast=lambda path: True)
        grads.append(meta_grad(learner, _state(learner, params), tasks)[0])
    for a, b in zip(*(jax.tree.leaves(g) for g in grads)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="Stage.is_embedding is None"):
        model._replace(stage=model.stage._replace(is_embedding=None))


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("remat", [False, True])
def test_dense_layer_in_closed_form_equals_plain_sgd(first_order, remat):
    # plain SGD on a staged model: the first dense layer is adapted in closed form
    # (jaxmeta.inner.inner_adapt_dense); step, metrics, adapted weights and predictions
    # must be those of the plain SGD loop, and the second-order gradient that of the
    # finite-difference-checked reference.
    tasks = pad_tasks(random_tasks(4, seed=9, dtype=np.float64), dtype=np.float64)
    kwargs = dict(inner_steps=K, outer_optimizer=optax.sgd(1.0), first_order=first_order, remat=remat)
    model = tiny_model(jnp.float64, staged=True)
    assert model.dense_fast() and not model.dense_fast(lambda path: path[0] == "head")
    closed = algorithms.maml(model, inner_optimizer=LR, **kwargs)
    plain = algorithms.maml(tiny_model(jnp.float64), inner_optimizer=optax.sgd(LR), **kwargs)
    assert_same_learner(closed, plain, model.init(jax.random.key(5)), tasks, rtol=1e-9)


def test_closed_form_maml_matches_finite_differences():
    model = tiny_model(jnp.float64, staged=True)
    tasks = random_tasks(3, seed=4, dtype=np.float64)
    params = model.init(jax.random.key(1))
    learner = algorithms.maml(model, inner_optimizer=LR, inner_steps=K, outer_optimizer=optax.sgd(1.0))
    (grads, _), _ = meta_grad(learner, _state(learner, params), pad_tasks(tasks, dtype=np.float64))
    numeric = central_differences(lambda p: maml_reference(model, p, users_of(tasks)), params)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(numeric)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("bad", [0.0, -0.1])
def test_a_non_positive_inner_rate_is_refused(bad):
    with pytest.raises(ValueError, match=f"inner_optimizer={bad}: pass a positive SGD rate"):
        algorithms.maml(tiny_model(), inner_optimizer=bad)
