"""Elementwise losses against their formulas, and the masked mean: hand values, the
all-masked case, and NaN in padded rows reaching neither the value nor the gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmeta.losses import (LOSSES, absolute_error, binary_cross_entropy, get_loss, huber, masked_mean,
                            squared_error)


@pytest.mark.parametrize("jit", [False, True])
def test_squared_error_hand_values(jit):
    fn = jax.jit(squared_error) if jit else squared_error
    out = fn(jnp.array([[1.0, -2.0, 0.5]]), jnp.array([[3.0, -2.0, 0.0]]))
    np.testing.assert_allclose(out, [[4.0, 0.0, 0.25]])


@pytest.mark.parametrize("jit", [False, True])
def test_binary_cross_entropy_matches_formula(jit):
    fn = jax.jit(binary_cross_entropy) if jit else binary_cross_entropy
    logits = np.array([-3.0, -0.7, 0.0, 0.4, 2.5, 5.0])
    targets = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.3])  # soft targets follow the same formula
    s = 1.0 / (1.0 + np.exp(-logits))
    expected = -(targets * np.log(s) + (1 - targets) * np.log(1 - s))
    out = fn(jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(fn(jnp.float32(0.0), jnp.float32(1.0))), np.log(2.0), rtol=1e-6)


def test_binary_cross_entropy_is_stable_for_large_logits():
    out = binary_cross_entropy(jnp.array([100.0, -100.0, 100.0]), jnp.array([0.0, 1.0, 1.0]))
    np.testing.assert_allclose(out, [100.0, 100.0, 0.0], atol=1e-5)  # the naive formula gives inf


def test_masked_mean_hand_values():
    values = jnp.array([[1.0, 3.0, 5.0], [2.0, 4.0, 6.0], [7.0, 8.0, 9.0]])
    mask = jnp.array([[True, True, False], [False, False, True], [False, False, False]])
    np.testing.assert_allclose(masked_mean(values, mask), [2.0, 6.0, 0.0])
    np.testing.assert_allclose(masked_mean(values[0], jnp.ones(3, bool)), 3.0)
    np.testing.assert_allclose(jax.jit(masked_mean)(values, mask), [2.0, 6.0, 0.0])


def test_masked_mean_all_masked_is_zero_even_with_nan():
    values = jnp.array([jnp.nan, jnp.inf, 1.0])
    assert float(masked_mean(values, jnp.zeros(3, bool))) == 0.0
    grad = jax.grad(masked_mean)(values, jnp.zeros(3, bool))
    np.testing.assert_array_equal(grad, [0.0, 0.0, 0.0])


def test_masked_mean_nan_in_padding_leaks_nowhere():
    mask = jnp.array([True, False, True, False])
    values = jnp.array([1.0, jnp.nan, 4.0, -jnp.inf])
    assert float(masked_mean(values, mask)) == 2.5
    np.testing.assert_array_equal(jax.grad(masked_mean)(values, mask), [0.5, 0.0, 0.5, 0.0])

    # Through an elementwise loss: the padded prediction is NaN, the real ones get
    # exactly d/dp mean((p - y)^2) = (p - y) over the 2 real rows.
    predictions = jnp.array([2.0, jnp.nan, 1.0, 0.0])
    targets = jnp.array([1.0, 0.0, 3.0, jnp.nan])
    loss = lambda p: masked_mean(squared_error(p, targets), mask)  # noqa: E731
    value, grad = jax.value_and_grad(loss)(predictions)
    assert float(value) == pytest.approx((1.0 + 4.0) / 2)
    np.testing.assert_allclose(grad[mask], [1.0, -2.0])


def test_get_loss_names_callables_and_errors():
    assert get_loss("mse") is squared_error
    assert get_loss("bce") is binary_cross_entropy
    assert get_loss("mae") is absolute_error
    assert get_loss("huber") is huber
    assert sorted(LOSSES) == ["bce", "huber", "mae", "mse"]
    custom = lambda p, y: jnp.abs(p - y)  # noqa: E731
    assert get_loss(custom) is custom
    with pytest.raises(ValueError, match=r"unknown loss 'l1'.*\['bce', 'huber', 'mae', 'mse'\]"):
        get_loss("l1")


def test_absolute_error_and_huber_by_hand():
    predictions = jnp.array([3.0, 1.0, 4.5, 2.0])
    targets = jnp.array([5.0, 1.5, 4.0, 2.0])
    # residuals -2, -0.5, 0.5, 0: |r| = 2, 0.5, 0.5, 0; Huber(1): |r| - 1/2 beyond one star, r^2 / 2 within
    np.testing.assert_allclose(absolute_error(predictions, targets), [2.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(huber(predictions, targets), [1.5, 0.125, 0.125, 0.0])
    # the gradient of the absolute error is the residual's sign; Huber's is the residual clipped to one star
    np.testing.assert_allclose(jax.grad(lambda p: absolute_error(p, targets)[:3].sum())(predictions)[:3],
                               [-1.0, -1.0, 1.0])
    np.testing.assert_allclose(jax.grad(lambda p: huber(p, targets).sum())(predictions), [-1.0, -0.5, 0.5, 0.0])


def test_nan_target_in_padded_row_does_not_reach_parameter_gradient():
    from jaxmeta.algorithms._core import rows_loss
    from jaxmeta.models import Model

    model = Model(init=lambda key: jnp.zeros(2), apply=lambda w, x: x @ w)
    w = jnp.array([0.5, -1.0])
    x = jnp.array([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]])  # the third row is padding (zero inputs, as pad_tasks makes)
    y = jnp.array([1.0, 2.0, jnp.nan])  # e.g. a missing rating left as NaN under a False mask
    mask = jnp.array([True, True, False])
    value, grad = jax.value_and_grad(lambda w: rows_loss(model, squared_error, w, x, y, mask))(w)
    # 2 real rows: residuals x @ w - y = [-2.5, -4.5]; loss = mean(r^2); grad = x^T r (2 / 2)
    assert float(value) == pytest.approx((2.5**2 + 4.5**2) / 2)
    np.testing.assert_allclose(grad, [-2.5 * 1 - 4.5 * 3, -2.5 * 2 - 4.5 * 4], rtol=1e-6)
