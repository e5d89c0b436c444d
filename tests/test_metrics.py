"""Metrics against hand-computed values and against brute force.

The references here are independent of jaxmeta.metrics: a tie-aware ranking metric
must equal the mean of the plain metric over every ordering of the items that is
consistent with the scores (``itertools.permutations``), a constant predictor the
mean over all orderings, and AUC a plain count of (positive, negative) pairs.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmeta import metrics
from jaxmeta.metrics import (
    auc,
    constant_predictor,
    mae,
    mean_over_users,
    ndcg,
    pooled_mae,
    pooled_rmse,
    precision,
    random_predictor,
    recall,
    rmse,
)

L3 = math.log2(3)  # the discount of the second position is 1 / log2(3)

# ----------------------------------------------------------- brute-force references


def gain_of(r, gain):
    return 2.0**r - 1 if gain == "exp" else float(r)


def dcg_of_order(order, targets, k, gain):
    """Plain DCG@k of one strict ordering (a sequence of item indices)."""
    return sum(gain_of(targets[i], gain) / math.log2(p + 2) for p, i in enumerate(order[:k]))


def strict_ndcg(order, targets, k, gain):
    ideal = sorted(range(len(targets)), key=lambda i: -targets[i])
    return dcg_of_order(order, targets, k, gain) / dcg_of_order(ideal, targets, k, gain)


def strict_precision(order, targets, k, threshold):
    top = order[:k]
    return sum(targets[i] >= threshold for i in top) / len(top)


def strict_recall(order, targets, k, threshold):
    relevant = sum(t >= threshold for t in targets)
    return sum(targets[i] >= threshold for i in order[:k]) / relevant


STRICT = {
    "ndcg_exp": lambda o, t, k: strict_ndcg(o, t, k, "exp"),
    "ndcg_linear": lambda o, t, k: strict_ndcg(o, t, k, "linear"),
    "precision": lambda o, t, k: strict_precision(o, t, k, 4.0),
    "recall": lambda o, t, k: strict_recall(o, t, k, 4.0),
}

TIE_AWARE = {
    "ndcg_exp": lambda s, t, m, k: ndcg(s, t, m, k, gain="exp"),
    "ndcg_linear": lambda s, t, m, k: ndcg(s, t, m, k, gain="linear"),
    "precision": lambda s, t, m, k: precision(s, t, m, k, threshold=4.0),
    "recall": lambda s, t, m, k: recall(s, t, m, k, threshold=4.0),
}

FLOOR_ARGS = {  # (name for constant/random_predictor, its kwargs given k)
    "ndcg_exp": ("ndcg", lambda k: {"k": k, "gain": "exp"}),
    "ndcg_linear": ("ndcg", lambda k: {"k": k, "gain": "linear"}),
    "precision": ("precision", lambda k: {"k": k}),
    "recall": ("recall", lambda k: {"k": k}),
}


def brute_force_tie_mean(strict, scores, targets, k):
    """Mean of a strict metric over the orderings consistent with the scores: every
    way of breaking the ties, equally likely."""
    values = [
        strict(order, targets, k)
        for order in itertools.permutations(range(len(scores)))
        if all(scores[a] >= scores[b] for a, b in zip(order, order[1:]))
    ]
    return float(np.mean(values))


def brute_force_auc(scores, clicks):
    pos = [s for s, c in zip(scores, clicks) if c >= 0.5]
    neg = [s for s, c in zip(scores, clicks) if c < 0.5]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def one_user(values, width=None, fill=0.0):
    """A [1, width] row holding ``values`` then ``fill``, and its mask."""
    width = len(values) if width is None else width
    row = np.full((1, width), fill, dtype=np.float32)
    row[0, : len(values)] = values
    mask = np.zeros((1, width), bool)
    mask[0, : len(values)] = True
    return row, mask


def scalar(x):
    return float(np.asarray(x).reshape(()))


# -------------------------------------------------------------- hand-computed values


@pytest.mark.parametrize("jit", [False, True])
def test_mae_rmse_hand_values(jit):
    # user 0: |3-4|, |4-4|, |5-2| = 1, 0, 3 -> MAE 4/3, RMSE sqrt((1+0+9)/3)
    # user 1: |1-3| = 2 (two padded items) -> MAE 2, RMSE 2
    # user 2: padding user -> nan
    scores = np.array([[3.0, 4.0, 5.0], [1.0, 7.0, 7.0], [0.0, 0.0, 0.0]], np.float32)
    targets = np.array([[4.0, 4.0, 2.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    mask = np.array([[True, True, True], [True, False, False], [False, False, False]])
    wrap = jax.jit if jit else (lambda f: f)
    np.testing.assert_allclose(wrap(mae)(scores, targets, mask), [4 / 3, 2.0, np.nan], rtol=1e-6)
    np.testing.assert_allclose(wrap(rmse)(scores, targets, mask), [math.sqrt(10 / 3), 2.0, np.nan], rtol=1e-6)
    # per user, then over users: (4/3 + 2) / 2 and (sqrt(10/3) + 2) / 2
    np.testing.assert_allclose(mean_over_users(mae(scores, targets, mask)), 5 / 3, rtol=1e-6)
    np.testing.assert_allclose(mean_over_users(rmse(scores, targets, mask)), (math.sqrt(10 / 3) + 2) / 2, rtol=1e-6)
    # pooled over the 4 real ratings: (1+0+3+2) / 4 and sqrt((1+0+9+4) / 4)
    np.testing.assert_allclose(wrap(pooled_mae)(scores, targets, mask), 1.5, rtol=1e-6)
    np.testing.assert_allclose(wrap(pooled_rmse)(scores, targets, mask), math.sqrt(3.5), rtol=1e-6)
    assert math.isnan(scalar(pooled_rmse(scores, targets, np.zeros_like(mask))))


def test_ndcg_hand_values_without_ties():
    scores = np.array([[0.9, 0.8, 0.3, 0.1]], np.float32)
    ratings = np.array([[3.0, 5.0, 1.0, 4.0]], np.float32)
    mask = np.ones((1, 4), bool)
    # ranked ratings 3, 5, 1, 4; exp gains 7, 31, 1, 15; ideal order 5, 4, 3, 1
    expected = {
        (1, "exp"): 7 / 31,
        (3, "exp"): (7 + 31 / L3 + 1 / 2) / (31 + 15 / L3 + 7 / 2),
        (4, "exp"): (7 + 31 / L3 + 1 / 2 + 15 / math.log2(5)) / (31 + 15 / L3 + 7 / 2 + 1 / math.log2(5)),
        (1, "linear"): 3 / 5,
        (3, "linear"): (3 + 5 / L3 + 1 / 2) / (5 + 4 / L3 + 3 / 2),
    }
    for (k, gain), value in expected.items():
        np.testing.assert_allclose(ndcg(scores, ratings, mask, k=k, gain=gain), [value], rtol=1e-6, err_msg=f"k={k} {gain}")


def test_ndcg_tie_straddling_k_boundary():
    # Item 0 is first; items 1, 2, 3 tie for positions 1, 2, 3; item 4 is last.
    scores = np.array([[2.0, 1.0, 1.0, 1.0, 0.0]], np.float32)
    ratings = np.array([[1.0, 5.0, 3.0, 2.0, 4.0]], np.float32)
    mask = np.ones((1, 5), bool)
    # k=2 cuts the tie: the group (gains 5 + 3 + 2 linear) shares the one discount
    # 1/log2(3) of position 1: DCG = 1 + 10 * (1/log2 3) / 3; IDCG = 5 + 4/log2 3.
    np.testing.assert_allclose(ndcg(scores, ratings, mask, 2, gain="linear"), [(1 + 10 / L3 / 3) / (5 + 4 / L3)], rtol=1e-6)
    # k=3: positions 1 and 2 inside: DCG = 1 + 10 * (1/log2 3 + 1/2) / 3; IDCG = 5 + 4/log2 3 + 3/2.
    np.testing.assert_allclose(
        ndcg(scores, ratings, mask, 3, gain="linear"), [(1 + 10 * (1 / L3 + 0.5) / 3) / (5 + 4 / L3 + 1.5)], rtol=1e-6
    )
    # exp gains 1, 31, 7, 3, 15; k=2: (1 + 41 / log2(3) / 3) / (31 + 15 / log2 3)
    np.testing.assert_allclose(ndcg(scores, ratings, mask, 2), [(1 + 41 / L3 / 3) / (31 + 15 / L3)], rtol=1e-6)
    # The same rows with the tied items in another array order: nothing changes.
    perm = [0, 3, 1, 4, 2]
    np.testing.assert_allclose(ndcg(scores[:, perm], ratings[:, perm], mask, 2), ndcg(scores, ratings, mask, 2), rtol=1e-6)


def test_precision_recall_hand_values_with_ties():
    scores = np.array([[2.0, 1.0, 1.0, 1.0, 0.0], [0.5, 0.4, 0.3, 0.2, 0.1]], np.float32)
    ratings = np.array([[1.0, 5.0, 3.0, 2.0, 4.0], [4.0, 1.0, 5.0, 2.0, 3.0]], np.float32)
    mask = np.ones((2, 5), bool)
    # user 0, relevant (>= 4): item 1 (tied for positions 1-3) and item 4 (last).
    #   k=1: item 0 only -> 0 hits.           precision 0,           recall 0
    #   k=2: item 1 in w.p. 1/3 -> 1/3 hits.  precision (1/3) / 2,   recall (1/3) / 2
    #   k=3: item 1 in w.p. 2/3 -> 2/3 hits.  precision (2/3) / 3,   recall (2/3) / 2
    #   k=5: both -> 2 hits.                  precision 2/5,         recall 1
    # user 1, no ties, relevant items 0 (1st) and 2 (3rd):
    #   k=1: 1 hit; k=2: 1 hit; k=3: 2 hits; k=5: 2 hits.
    expected_p = {1: [0.0, 1.0], 2: [1 / 6, 1 / 2], 3: [2 / 9, 2 / 3], 5: [2 / 5, 2 / 5]}
    expected_r = {1: [0.0, 0.5], 2: [1 / 6, 0.5], 3: [1 / 3, 1.0], 5: [1.0, 1.0]}
    for k in expected_p:
        np.testing.assert_allclose(precision(scores, ratings, mask, k=k), expected_p[k], rtol=1e-6, atol=1e-7, err_msg=f"k={k}")
        np.testing.assert_allclose(recall(scores, ratings, mask, k=k), expected_r[k], rtol=1e-6, atol=1e-7, err_msg=f"k={k}")
    # a lower threshold makes item 2 (3 stars) of user 0 relevant too: k=2 -> 2/3 hits
    np.testing.assert_allclose(precision(scores, ratings, mask, 2, threshold=3.0)[0], 1 / 3, rtol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_auc_hand_values_with_ties(jit):
    fn = jax.jit(auc) if jit else auc
    scores = np.array([[0.9, 0.5, 0.5, 0.2, 0.5], [0.1, 0.2, 0.3, 0.4, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0]], np.float32)
    clicks = np.array([[1.0, 1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0, 0.0]], np.float32)
    mask = np.array([[True] * 5, [True] * 5, [True, True, True, False, False]])
    # user 0: positives 0.9, 0.5 vs negatives 0.5, 0.2, 0.5:
    #   0.9 beats all 3; 0.5 ties 0.5, beats 0.2, ties 0.5 -> (3 + 0.5 + 1 + 0.5) / 6
    # user 1: positives 0.1, 0.2 vs 0.3, 0.4, 0.0: each beats only 0.0 -> 2 / 6
    # user 2: all three real items score 1.0: positives {0, 2}, negative {1}: 2 ties -> 1/2
    np.testing.assert_allclose(fn(scores, clicks, mask), [5 / 6, 2 / 6, 0.5], rtol=1e-6)
    # ratings as labels: positive iff >= threshold
    ratings = np.array([[5.0, 2.0, 4.0, 1.0]], np.float32)
    np.testing.assert_allclose(auc(np.array([[4.0, 3.0, 2.0, 1.0]]), ratings, np.ones((1, 4), bool), threshold=4.0), [3 / 4])


def test_users_with_fewer_than_k_items():
    # Two real items then padding; k = 5 > 2.
    scores, mask = one_user([1.0, 2.0], width=6, fill=0.0)
    ratings, _ = one_user([5.0, 3.0], width=6, fill=0.0)
    # ranking: item 1 (3 stars), then item 0 (5 stars); only 2 positions exist.
    # nDCG@5 = (7 + 31/log2 3) / (31 + 7/log2 3), the same as nDCG@2.
    np.testing.assert_allclose(ndcg(scores, ratings, mask, 5), [(7 + 31 / L3) / (31 + 7 / L3)], rtol=1e-6)
    np.testing.assert_allclose(ndcg(scores, ratings, mask, 5), ndcg(scores, ratings, mask, 2), rtol=1e-6)
    # precision@5 divides by min(5, 2) = 2: one relevant item of 2 -> 1/2 (not 1/5)
    np.testing.assert_allclose(precision(scores, ratings, mask, 5), [0.5])
    np.testing.assert_allclose(recall(scores, ratings, mask, 5), [1.0])
    # A user with one item: every ranking metric is perfect (if defined).
    one_s, one_m = one_user([0.3], width=4, fill=np.nan)
    one_r, _ = one_user([4.0], width=4, fill=np.nan)
    for fn in (ndcg, precision, recall):
        np.testing.assert_allclose(fn(one_s, one_r, one_m, 3), [1.0], err_msg=fn.__name__)


def test_undefined_users_are_nan_and_left_out_of_the_mean():
    scores = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
    ratings = np.array([[5.0, 1.0, 4.0], [2.0, 1.0, 3.0], [5.0, 5.0, 5.0]], np.float32)
    clicks = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
    mask = np.array([[True, True, True], [True, True, True], [False, False, False]])
    # user 1 has no rating >= 4 (recall undefined), no click (AUC, and nDCG on clicks);
    # user 2 is a padding user (everything undefined).
    assert np.isnan(np.asarray(recall(scores, ratings, mask, 2))).tolist() == [False, True, True]
    assert np.isnan(np.asarray(auc(scores, clicks, mask))).tolist() == [False, True, True]
    assert np.isnan(np.asarray(ndcg(scores, clicks, mask, 2))).tolist() == [False, True, True]
    # precision and nDCG on ratings are defined without a relevant item (value 0 / > 0)
    np.testing.assert_allclose(precision(scores, ratings, mask, 2)[:2], [0.5, 0.0])
    assert np.isnan(np.asarray(ndcg(scores, ratings, mask, 2))).tolist() == [False, False, True]
    # user 0, ranked 4, 1, 5 stars: recall@2 = 1/2; the mean over users ignores the rest
    np.testing.assert_allclose(mean_over_users(recall(scores, ratings, mask, 2)), 0.5)


def test_mean_over_users():
    values = np.array([0.5, np.nan, 1.0, np.inf, 0.0], np.float32)
    np.testing.assert_allclose(mean_over_users(values), 0.5)  # (0.5 + 1 + 0) / 3
    np.testing.assert_allclose(mean_over_users(values, np.array([True, True, False, True, True])), 0.25)
    np.testing.assert_allclose(jax.jit(mean_over_users)(values, np.array([False, True, True, True, True])), 0.5)
    assert math.isnan(scalar(mean_over_users(np.array([np.nan, np.nan]))))
    assert math.isnan(scalar(mean_over_users(values, np.zeros(5, bool))))


def test_real_nan_makes_the_user_nan():
    scores = np.array([[1.0, np.nan, 0.0], [1.0, 0.5, 0.0]], np.float32)
    ratings = np.array([[5.0, 4.0, 1.0], [5.0, np.nan, 1.0]], np.float32)
    mask = np.ones((2, 3), bool)
    for name, fn in [("ndcg", ndcg), ("precision", precision), ("recall", recall)]:
        assert np.isnan(np.asarray(fn(scores, ratings, mask, 2))).all(), name
    assert np.isnan(np.asarray(auc(scores, ratings, mask, threshold=4.0))).all()
    assert np.isnan(np.asarray(mae(scores, ratings, mask))).all()


def test_infinite_real_scores_rank_first_and_last():
    # +inf and -inf are legitimate (extreme) scores of real items; padding shares -inf.
    scores, mask = one_user([-np.inf, 1.0, np.inf, -np.inf], width=6, fill=-np.inf)
    ratings, _ = one_user([2.0, 4.0, 5.0, 1.0], width=6, fill=5.0)
    # order: item 2 (5), item 1 (4), then items 0 and 3 tie for positions 2, 3 (2 and 1)
    # linear: DCG@4 = 5 + 4/log2 3 + (2 + 1) * (1/2 + 1/log2 5) / 2; IDCG@4 = 5 + 4/log2 3 + 2/2 + 1/log2 5
    l5 = math.log2(5)
    expected = (5 + 4 / L3 + 1.5 * (0.5 + 1 / l5)) / (5 + 4 / L3 + 1 + 1 / l5)
    np.testing.assert_allclose(ndcg(scores, ratings, mask, 4, gain="linear"), [expected], rtol=1e-6)
    # k=3 cuts the -inf tie: (5 + 4/log2 3 + 3 * (1/2) / 2) / (5 + 4/log2 3 + 2/2)
    np.testing.assert_allclose(ndcg(scores, ratings, mask, 3, gain="linear"), [(5 + 4 / L3 + 0.75) / (5 + 4 / L3 + 1)], rtol=1e-6)
    np.testing.assert_allclose(auc(scores, ratings, mask, threshold=4.0), [1.0])


# ------------------------------------------------------------ padding and jit


def metric_calls():
    return {
        "mae": lambda s, t, m: mae(s, t, m),
        "rmse": lambda s, t, m: rmse(s, t, m),
        "pooled_mae": lambda s, t, m: pooled_mae(s, t, m),
        "pooled_rmse": lambda s, t, m: pooled_rmse(s, t, m),
        "ndcg@3": lambda s, t, m: ndcg(s, t, m, 3),
        "ndcg@2_linear": lambda s, t, m: ndcg(s, t, m, 2, gain="linear"),
        "precision@2": lambda s, t, m: precision(s, t, m, 2),
        "recall@3": lambda s, t, m: recall(s, t, m, 3),
        "auc": lambda s, t, m: auc(s, t, m, threshold=4.0),
    }


WIDTH = 7  # most tests share this padded width (and 5 users), so each metric compiles once


def ragged_batch(seed, users=5, width=WIDTH):
    """Random scores with ties and whole-star ratings; users of 0 to width real items."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(users, width)).astype(np.float32)
    ratings = rng.integers(1, 6, size=(users, width)).astype(np.float32)
    sizes = rng.integers(0, width + 1, size=users)
    sizes[0] = width  # at least one full user
    mask = np.arange(width)[None, :] < sizes[:, None]
    return scores, ratings, mask


@pytest.mark.parametrize("name", list(metric_calls()))
def test_padded_garbage_changes_nothing(name):
    call = metric_calls()[name]
    scores, ratings, mask = ragged_batch(seed=3)
    clean = np.asarray(call(np.where(mask, scores, 0), np.where(mask, ratings, 0), mask))
    for garbage in (np.nan, np.inf, -np.inf, 1e30, 5.0):
        dirty = np.asarray(call(np.where(mask, scores, garbage), np.where(mask, ratings, garbage), mask))
        np.testing.assert_array_equal(dirty, clean, err_msg=f"{name}, padding {garbage}")
    with jax.disable_jit():  # op by op too: no compiler rewrite may be what hides the garbage
        dirty = call(np.where(mask, scores, np.nan), np.where(mask, ratings, np.nan), mask)
    np.testing.assert_allclose(dirty, clean, rtol=1e-6)
    # A padded slot moved to the front of the arrays changes nothing either.
    front = np.roll(np.arange(scores.shape[1]), 1)
    dirty = call(np.where(mask, scores, np.nan)[:, front], np.where(mask, ratings, np.inf)[:, front], mask[:, front])
    np.testing.assert_allclose(dirty, clean, rtol=1e-6)
    # Extra padding columns change nothing.
    wide = [np.pad(a, ((0, 0), (0, 3)), constant_values=v) for a, v in ((scores, np.nan), (ratings, -np.inf), (mask, False))]
    np.testing.assert_allclose(call(*wide), clean, rtol=1e-6)


def test_padding_users_are_nan_and_do_not_move_the_mean():
    scores, ratings, mask = ragged_batch(seed=4, users=3)
    padded = [np.concatenate([a, np.full((2, a.shape[1]), v, a.dtype)]) for a, v in ((scores, np.nan), (ratings, np.nan), (mask, False))]
    for name, call in metric_calls().items():
        if name.startswith("pooled"):
            np.testing.assert_allclose(call(*padded), call(scores, ratings, mask), rtol=1e-6)
            continue
        values = np.asarray(call(*padded))
        assert np.isnan(values[-2:]).all(), name
        np.testing.assert_allclose(mean_over_users(values), mean_over_users(call(scores, ratings, mask)), rtol=1e-6)


@pytest.mark.parametrize("name", list(metric_calls()))
def test_jit_matches_op_by_op_and_compiles_once(name):
    # The metrics jit themselves; disable_jit runs the same code primitive by primitive.
    call = metric_calls()[name]
    jitted = jax.jit(call)  # k is a Python int in the closure, as static_argnames makes it
    for seed in (5, 6):
        scores, ratings, mask = ragged_batch(seed)
        with jax.disable_jit():
            reference = call(scores, ratings, mask)
        np.testing.assert_allclose(jitted(scores, ratings, mask), reference, rtol=1e-6)
        np.testing.assert_allclose(call(scores, ratings, mask), reference, rtol=1e-6)
    assert jitted._cache_size() == 1  # new values, same shapes: no recompilation


def test_a_new_cut_off_or_threshold_does_not_recompile():
    scores, ratings, mask = ragged_batch(seed=9)
    ndcg(scores, ratings, mask, 1)
    precision(scores, ratings, mask, 1)
    sizes = metrics._ndcg_batch._cache_size(), metrics._precision_batch._cache_size()
    for k in (2, 3, 10):
        ndcg(scores, ratings, mask, k)
        precision(scores, ratings, mask, k, threshold=3.0)
    assert (metrics._ndcg_batch._cache_size(), metrics._precision_batch._cache_size()) == sizes


def test_per_user_values_match_a_loop_over_users():
    scores, ratings, mask = ragged_batch(seed=7)
    for name, call in metric_calls().items():
        if name.startswith("pooled"):
            continue
        looped = [scalar(call(scores[u : u + 1], ratings[u : u + 1], mask[u : u + 1])) for u in range(5)]
        np.testing.assert_allclose(call(scores, ratings, mask), looped, rtol=1e-6, err_msg=name)


# --------------------------------------------------------- ties against brute force


@pytest.mark.parametrize("name", list(STRICT))
@pytest.mark.parametrize(
    "ratings",
    [
        [5.0, 4.0, 4.0, 2.0, 1.0, 3.0],
        [1.0, 1.0, 5.0, 2.0, 4.0],
        [3.0, 5.0, 4.0],
        [4.0, 4.0, 4.0, 4.0],
    ],
)
def test_constant_predictor_is_the_mean_over_all_permutations(name, ratings):
    n = len(ratings)
    targets, mask = one_user(ratings, width=WIDTH, fill=np.nan)
    metric, kwargs = FLOOR_ARGS[name]
    for k in (1, 2, 3, 5, 10):
        everything = brute_force_tie_mean(STRICT[name], [0.0] * n, ratings, k)  # all n! orders
        constant = TIE_AWARE[name](np.where(mask, 0.25, np.nan), targets, mask, k)
        np.testing.assert_allclose(constant, [everything], rtol=1e-5, err_msg=f"k={k}")
        np.testing.assert_allclose(constant_predictor(metric, targets, mask, **kwargs(k)), [everything], rtol=1e-5)
        np.testing.assert_allclose(random_predictor(metric, targets, mask, **kwargs(k)), [everything], rtol=1e-5)


def test_constant_predictor_auc_is_one_half():
    clicks, mask = one_user([1.0, 0.0, 0.0, 1.0, 0.0], width=6, fill=np.nan)
    np.testing.assert_allclose(auc(np.full((1, 6), 3.0), clicks, mask), [0.5])
    np.testing.assert_allclose(constant_predictor("auc", clicks, mask), [0.5])
    np.testing.assert_allclose(random_predictor(auc, clicks, mask), [0.5])
    assert np.isnan(np.asarray(random_predictor("auc", np.ones((1, 3)), np.ones((1, 3), bool)))).all()


def test_floor_over_a_batch_matches_the_constant_predictor():
    _, ratings, mask = ragged_batch(seed=8)
    for name, (metric, kwargs) in FLOOR_ARGS.items():
        for k in (1, 3, 10):
            np.testing.assert_allclose(
                random_predictor(metric, ratings, mask, **kwargs(k)),
                constant_predictor(metric, ratings, mask, **kwargs(k)),
                rtol=1e-5,
                err_msg=f"{name} k={k}",
            )


@st.composite
def tied_user(draw, labels=st.integers(1, 5)):
    n = draw(st.integers(1, 6))
    scores = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))  # many ties
    targets = draw(st.lists(labels, min_size=n, max_size=n))
    return [float(s) for s in scores], [float(t) for t in targets]


@settings(max_examples=60, deadline=None)
@given(user=tied_user())
def test_tie_aware_equals_brute_force_over_tie_breaks(user):
    scores, ratings = user
    s, mask = one_user(scores, width=WIDTH, fill=np.nan)
    t, _ = one_user(ratings, width=WIDTH, fill=np.inf)
    for name, strict in STRICT.items():
        for k in range(1, WIDTH + 1):
            value = scalar(TIE_AWARE[name](s, t, mask, k))
            if name == "recall" and not any(r >= 4 for r in ratings):
                assert math.isnan(value)
                continue
            expected = brute_force_tie_mean(strict, scores, ratings, k)
            assert value == pytest.approx(expected, rel=1e-5, abs=1e-6), (name, k)


@settings(max_examples=40, deadline=None)
@given(user=tied_user(labels=st.integers(0, 1)))
def test_auc_equals_brute_force_pair_count(user):
    scores, clicks = user
    s, mask = one_user(scores, width=WIDTH, fill=np.inf)
    c, _ = one_user(clicks, width=WIDTH, fill=1.0)
    value = scalar(auc(s, c, mask))
    if len(set(clicks)) < 2:
        assert math.isnan(value)
    else:
        assert value == pytest.approx(brute_force_auc(scores, clicks), rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(user=tied_user(), seed=st.integers(0, 2**16))
def test_array_order_of_items_does_not_matter(user, seed):
    scores, ratings = user
    perm = np.random.default_rng(seed).permutation(WIDTH)
    s, mask = one_user(scores, width=WIDTH, fill=np.nan)
    t, _ = one_user(ratings, width=WIDTH, fill=np.nan)
    for name in ("ndcg_exp", "precision"):
        fn = TIE_AWARE[name]
        np.testing.assert_allclose(fn(s[:, perm], t[:, perm], mask[:, perm], 2), fn(s, t, mask, 2), rtol=1e-6)


# ------------------------------------------------------------------------- errors


@pytest.mark.parametrize("k", [0, -1, 2.5, "3", True, None])
@pytest.mark.parametrize("fn", [ndcg, precision, recall])
def test_bad_k_raises(fn, k):
    ones = np.ones((1, 3))
    with pytest.raises(ValueError, match=r"k=.*positive"):
        fn(ones, ones, ones.astype(bool), k)


def test_traced_k_says_to_make_it_static():
    ones = np.ones((1, 3))
    with pytest.raises(ValueError, match="static_argnames"):
        jax.jit(ndcg)(ones, ones, ones.astype(bool), 2)


def test_bad_gain_raises():
    ones = np.ones((1, 3))
    with pytest.raises(ValueError, match=r"unknown gain 'exponential'.*'exp', 'linear'"):
        ndcg(ones, ones, ones.astype(bool), 2, gain="exponential")


@pytest.mark.parametrize(
    "call",
    [
        lambda s, t, m: mae(s, t, m),
        lambda s, t, m: rmse(s, t, m),
        lambda s, t, m: ndcg(s, t, m, 2),
        lambda s, t, m: precision(s, t, m, 2),
        lambda s, t, m: recall(s, t, m, 2),
        lambda s, t, m: auc(s, t, m),
    ],
)
def test_mismatched_or_wrong_rank_shapes_raise(call):
    with pytest.raises(ValueError, match=r"shapes differ.*targets \(2, 4\)"):
        call(np.ones((2, 3)), np.ones((2, 4)), np.ones((2, 3), bool))
    with pytest.raises(ValueError, match=r"shape \(3,\).*\[users, items\]"):
        call(np.ones(3), np.ones(3), np.ones(3, bool))


def test_floor_helpers_reject_unknown_metrics():
    ones = np.ones((1, 3))
    for helper in (constant_predictor, random_predictor):
        with pytest.raises(ValueError, match=r"unknown ranking metric 'rmse'.*'auc', 'ndcg'"):
            helper("rmse", ones, ones.astype(bool))
        with pytest.raises(ValueError, match="unknown ranking metric"):
            helper(metrics.mae, ones, ones.astype(bool))


def test_mean_over_users_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        mean_over_users(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"user_mask has shape \(2,\)"):
        mean_over_users(np.ones(3), np.ones(2, bool))


def test_jax_arrays_and_integer_inputs_are_accepted():
    scores = jnp.array([[3, 1, 2]])  # integer scores and ratings
    ratings = jnp.array([[5, 2, 4]])
    mask = jnp.array([[1, 1, 0]])  # a 0/1 mask is read as bool
    np.testing.assert_allclose(ndcg(scores, ratings, mask, 2), [1.0])
    np.testing.assert_allclose(mae(scores, ratings, mask), [1.5])  # (2 + 1) / 2
