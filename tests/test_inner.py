"""The inner loop against an explicit Python loop of optax updates: adapted weights,
per-step losses, and the gradient through the loop (full, rematerialised and
first order)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmeta.inner import inner_adapt

STEPS = 3
TOL = dict(rtol=1e-5, atol=1e-6)
OPTIMIZERS = {
    "sgd": optax.sgd(0.1),
    "momentum": optax.sgd(0.1, momentum=0.9),
    "adam": optax.adam(0.05),
}

_k = jax.random.split(jax.random.key(0), 5)
X = jax.random.normal(_k[0], (6, 3))
Y = jax.random.normal(_k[1], (6,))
V = jax.random.normal(_k[2], (2,))
X_QUERY = jax.random.normal(_k[3], (4, 3))
Y_QUERY = jax.random.normal(_k[4], (4,))


def mlp(params, x):
    return jnp.tanh(x @ params["w"] + params["b"][None, :]) @ V


def support_loss(params):
    return jnp.mean((mlp(params, X) - Y) ** 2)


def query_loss(params):
    return jnp.mean((mlp(params, X_QUERY) - Y_QUERY) ** 2)


def init_params():
    k = jax.random.split(jax.random.key(1), 2)
    return {"w": jax.random.normal(k[0], (3, 2)), "b": 0.1 * jax.random.normal(k[1], (2,))}


def python_loop(loss_fn, params, optimizer, steps):
    """The reference: one optax update per Python iteration."""
    opt_state = optimizer.init(params)
    losses = []
    for _ in range(steps):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        losses.append(loss)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return params, jnp.stack(losses)


def assert_trees_close(a, b, **tol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **(tol or TOL))


def test_hand_computed_sgd():
    for remat in (False, True):
        adapted, losses = inner_adapt(
            lambda w: (w - 3.0) ** 2, jnp.float32(0.0), optimizer=optax.sgd(0.25), steps=3, remat=remat
        )
        # w: 0 -> 1.5 -> 2.25 -> 2.625; loss before each step: 9, 2.25, 0.5625
        assert float(adapted) == 2.625
        np.testing.assert_array_equal(losses, [9.0, 2.25, 0.5625])


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("jit", [False, True])
def test_equals_python_loop(name, jit):
    optimizer = OPTIMIZERS[name]
    run = lambda p: inner_adapt(support_loss, p, optimizer=optimizer, steps=STEPS)  # noqa: E731
    adapted, losses = (jax.jit(run) if jit else run)(init_params())
    expected, expected_losses = python_loop(support_loss, init_params(), optimizer, STEPS)
    assert losses.shape == (STEPS,)
    np.testing.assert_allclose(losses, expected_losses, **TOL)
    assert_trees_close(adapted, expected)
    assert float(losses[-1]) < float(losses[0])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_meta_gradient_through_the_loop_with_and_without_remat(name):
    optimizer = OPTIMIZERS[name]

    def downstream(params, remat):
        adapted, _ = inner_adapt(support_loss, params, optimizer=optimizer, steps=STEPS, remat=remat)
        return query_loss(adapted)

    grad = jax.jit(jax.grad(downstream), static_argnums=1)
    plain, remat = grad(init_params(), False), grad(init_params(), True)
    reference = jax.grad(lambda p: query_loss(python_loop(support_loss, p, optimizer, STEPS)[0]))(init_params())
    assert_trees_close(plain, reference, rtol=1e-4, atol=1e-6)
    assert_trees_close(remat, plain)
    adapted, losses = inner_adapt(support_loss, init_params(), optimizer=optimizer, steps=STEPS, remat=True)
    expected, expected_losses = python_loop(support_loss, init_params(), optimizer, STEPS)
    assert_trees_close(adapted, expected)
    np.testing.assert_allclose(losses, expected_losses, **TOL)


@pytest.mark.parametrize("name", ["sgd", "adam"])
@pytest.mark.parametrize("remat", [False, True])
def test_first_order_jacobian_is_identity(name, remat):
    optimizer = OPTIMIZERS[name]

    def adapt(params, first_order):
        return inner_adapt(
            support_loss, params, optimizer=optimizer, steps=STEPS, first_order=first_order, remat=remat
        )[0]

    first = jax.grad(lambda p: query_loss(adapt(p, True)))(init_params())
    at_adapted = jax.grad(query_loss)(adapt(init_params(), True))
    assert_trees_close(first, at_adapted)
    assert_trees_close(adapt(init_params(), True), adapt(init_params(), False))  # same forward pass
    second = jax.grad(lambda p: query_loss(adapt(p, False)))(init_params())
    gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)))
    assert gap > 1e-4, "first- and second-order gradients should differ on this loss"


def test_zero_steps_returns_params_unchanged():
    params = init_params()
    adapted, losses = inner_adapt(support_loss, params, optimizer=optax.adam(0.1), steps=0)
    assert_trees_close(adapted, params, rtol=0, atol=0)
    assert losses.shape == (0,) and losses.dtype == jnp.float32
    grad = jax.grad(lambda p: query_loss(inner_adapt(support_loss, p, optimizer=optax.sgd(0.1), steps=0)[0]))(params)
    assert_trees_close(grad, jax.grad(query_loss)(params))


@pytest.mark.parametrize("steps", [-1, -5])
def test_negative_steps_raise(steps):
    with pytest.raises(ValueError, match=f"steps={steps}"):
        inner_adapt(support_loss, init_params(), optimizer=optax.sgd(0.1), steps=steps)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_none_holes_in_params(name):
    optimizer = OPTIMIZERS[name]
    holed = lambda p: support_loss({"w": p["a"]["w"], "b": p["b"]})  # noqa: E731
    params = {"a": {"w": init_params()["w"], "slow": None}, "b": init_params()["b"], "c": None}
    adapted, losses = inner_adapt(holed, params, optimizer=optimizer, steps=STEPS, remat=True)
    assert adapted["c"] is None and adapted["a"]["slow"] is None
    expected, expected_losses = python_loop(support_loss, init_params(), optimizer, STEPS)
    np.testing.assert_allclose(adapted["a"]["w"], expected["w"], **TOL)
    np.testing.assert_allclose(adapted["b"], expected["b"], **TOL)
    np.testing.assert_allclose(losses, expected_losses, **TOL)
    grad = jax.grad(lambda p: jnp.sum(inner_adapt(holed, p, optimizer=optimizer, steps=STEPS)[0]["b"]))(params)
    assert grad["c"] is None and grad["a"]["slow"] is None
    assert np.all(np.isfinite(np.asarray(grad["a"]["w"])))
