"""MAE-optimal decoding of scores onto the rating levels: against a brute force over every
monotone staircase, per-user weights as the tables average, padding, and bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jaxmeta import metrics
from jaxmeta.decoding import MAX_LEVELS, CutPoints, fit_cut_points, fit_predictor, is_discrete


def user_mae(predictions, targets, mask):
    """The tables' MAE: per user over real items, then averaged over users (jaxmeta.metrics)."""
    return float(metrics.mean_over_users(metrics.mae(predictions, targets, mask)))


def brute_force(scores, targets, mask):
    """The least MAE of any non-decreasing staircase onto the levels: every placement of the cuts, in order,
    among the places that separate the real scores."""
    real = np.unique(scores[mask])
    places = [-np.inf, *((real[1:] + real[:-1]) / 2), np.inf]
    levels = np.unique(targets[mask])
    best = np.inf
    for cuts in itertools.combinations_with_replacement(places, len(levels) - 1):
        decoded = levels[np.searchsorted(np.array(cuts), scores, side="right")]
        best = min(best, user_mae(decoded, targets, mask))
    return best


def random_table(seed, users=3, items=4, levels=(1.0, 2.0, 4.0, 5.0)):
    rng = np.random.default_rng(seed)
    targets = rng.choice(levels, (users, items))
    scores = np.round(targets + rng.normal(0, 1.2, (users, items)), 1)  # rounded: ties among scores
    mask = rng.random((users, items)) < 0.8
    mask[:, 0] = True
    return scores, targets, mask


@pytest.mark.parametrize("seed", range(8))
def test_cut_points_reach_the_least_mae_of_any_monotone_staircase(seed):
    scores, targets, mask = random_table(seed)
    decode = fit_cut_points(scores, targets, mask)
    got = user_mae(decode(scores), targets, mask)
    assert got == pytest.approx(brute_force(scores, targets, mask), abs=1e-12)
    assert np.all(np.diff(decode.cuts) >= 0) and decode.levels.tolist() == np.unique(targets[mask]).tolist()
    # the raw scores are a monotone map too, and the best monotone map under MAE is a staircase onto the levels
    assert got <= user_mae(scores, targets, mask) + 1e-12


def test_each_user_weighs_the_same_whatever_their_count():
    # every score 3.0: users 0 and 2 rated 5 (three ratings between them), user 1 rated 3 four times. Per user
    # (as the tables average) two users of three say 5; per rating four of seven say 3.
    scores = np.full((3, 4), 3.0)
    targets = np.array([[5.0, 5.0, 0.0, 0.0], [3.0, 3.0, 3.0, 3.0], [5.0, 0.0, 0.0, 0.0]])
    mask = targets > 0
    assert fit_cut_points(scores, targets, mask)(np.array([3.0])).tolist() == [5.0]
    one_user = fit_cut_points(scores[mask][None], targets[mask][None], np.ones((1, 7), bool))
    assert one_user(np.array([3.0])).tolist() == [3.0]


def test_padded_rows_are_ignored_whatever_they_hold():
    scores, targets, mask = random_table(3, users=4, items=6)
    decode = fit_cut_points(scores, targets, mask)
    garbage_scores = np.where(mask, scores, np.nan)
    garbage_targets = np.where(mask, targets, 1e6)  # also not a level
    again = fit_cut_points(garbage_scores, garbage_targets, mask)
    np.testing.assert_array_equal(again.cuts, decode.cuts)
    np.testing.assert_array_equal(again.levels, decode.levels)
    padded = fit_cut_points(np.vstack([scores, np.full((2, 6), 7.0)]), np.vstack([targets, np.zeros((2, 6))]),
                            np.vstack([mask, np.zeros((2, 6), bool)]))  # padding users: no real row
    np.testing.assert_array_equal(padded.cuts, decode.cuts)


def test_a_score_on_a_cut_steps_up_and_shapes_are_kept():
    decode = CutPoints(np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.5]))
    np.testing.assert_array_equal(decode(np.array([[1.4999, 1.5], [2.5, 99.0]])), [[1.0, 2.0], [3.0, 3.0]])
    assert decode(0.0) == 1.0
    always = CutPoints(np.array([1.0, 2.0]), np.array([-np.inf]))
    assert always(np.array([-1e30])).tolist() == [2.0]


def test_a_level_no_score_separates_gets_an_infinite_cut():
    # every score equal: no cut can split them, so each gap takes all of them above (or below) by majority
    scores = np.full((1, 3), 2.0)
    decode = fit_cut_points(scores, np.array([[1.0, 2.0, 2.0]]), np.ones((1, 3), bool))
    assert decode.cuts.tolist() == [-np.inf] and decode(np.array([2.0, -5.0])).tolist() == [2.0, 2.0]


@pytest.mark.parametrize("scores, targets, mask, message", [
    (np.zeros((2, 3)), np.zeros((2, 2)), np.ones((2, 3), bool), "one shape"),
    (np.zeros(3), np.zeros(3), np.ones(3, bool), "one shape"),
    (np.zeros((2, 3)), np.ones((2, 3)), np.zeros((2, 3), bool), "no real rating"),
    (np.array([[1.0, np.nan]]), np.ones((1, 2)), np.ones((1, 2), bool), "nan or infinite: pass finite predictions"),
    (np.ones((1, 2)), np.array([[1.0, np.inf]]), np.ones((1, 2), bool), "pass finite ratings"),
    (np.ones((1, MAX_LEVELS + 1)), np.arange(MAX_LEVELS + 1.0)[None], np.ones((1, MAX_LEVELS + 1), bool),
     f"{MAX_LEVELS + 1} distinct values"),
])
def test_bad_input_is_refused_with_what_to_pass(scores, targets, mask, message):
    with pytest.raises(ValueError, match=message):
        fit_cut_points(scores, targets, mask)


def test_rounding_in_the_per_user_weights_never_crosses_the_cuts():
    """A table (found by a review) where the sums of 1/n tie two placements up to rounding: taken literally, the
    first gap's cut lands above the second's, and the staircase is no longer monotone."""
    scores = np.array([[-2.0, -2.0, 1.0, -0.0, 2.0, -3.0], [1.0, -0.0, 1.0, 0.0, -2.0, -2.0],
                       [2.0, -3.0, -2.0, 2.0, 2.0, -0.0], [-2.0, 2.0, -2.0, 1.0, 2.0, -2.0]])
    targets = np.array([[1.0, 2.0, 1.0, 1.0, 2.0, 5.0], [3.0, 5.0, 4.0, 1.0, 5.0, 3.0],
                        [1.0, 4.0, 4.0, 5.0, 4.0, 1.0], [2.0, 2.0, 3.0, 5.0, 5.0, 1.0]])
    mask = np.array([[1, 1, 1, 0, 0, 1], [1, 0, 0, 1, 1, 0], [1, 1, 1, 1, 0, 1], [1, 1, 1, 1, 1, 0]], bool)
    decode = fit_cut_points(scores, targets, mask)
    assert np.all(np.diff(decode.cuts) >= 0), decode.cuts
    assert user_mae(decode(scores), targets, mask) == pytest.approx(brute_force(scores, targets, mask), abs=1e-12)


def test_a_cut_between_adjacent_floats_stays_above_the_lower_one_and_nan_stays_nan():
    low = 1.0
    high = np.nextafter(low, 2.0)
    decode = fit_cut_points(np.array([[low, high]]), np.array([[1.0, 2.0]]), np.ones((1, 2), bool))
    assert decode(np.array([low, high])).tolist() == [1.0, 2.0]
    huge = fit_cut_points(np.array([[-1.7e308, 1.7e308]]), np.array([[1.0, 2.0]]), np.ones((1, 2), bool))
    assert np.isfinite(huge.cuts).all() and huge(np.array([-1e308, 1e308])).tolist() == [1.0, 2.0]
    assert np.isnan(decode(np.array([np.nan, low]))).tolist() == [True, False]


def test_only_a_discrete_scale_is_decodable():
    padding = np.linspace(10, 20, MAX_LEVELS)  # more distinct values than a scale has, all on padded rows
    stars = np.concatenate([[1.0, 5.0, 3.0, 4.0, np.nan], padding])[None]
    mask = np.arange(stars.shape[1])[None] < 4
    assert is_discrete(stars, mask) and not is_discrete(stars, stars == stars)  # the padded values are not levels
    floats = np.linspace(1, 5, MAX_LEVELS + 1)[None]
    assert not is_discrete(floats, np.ones_like(floats, bool))
    assert is_discrete(floats[:, 1:], np.ones((1, MAX_LEVELS), bool))


def test_a_predictor_is_fitted_on_its_query_predictions_over_every_batch():
    from jaxmeta.tasks import TaskBatch

    scores, targets, mask = random_table(5, users=6, items=5)
    empty = np.zeros((3, 0))
    batches = [TaskBatch(None, empty, empty.astype(bool), {"s": scores[rows]}, targets[rows], mask[rows])
               for rows in (slice(0, 3), slice(3, 6))]
    decode = fit_predictor(lambda b: b.query_x["s"], batches)  # the batch's own scores as the predictions
    want = fit_cut_points(scores, targets, mask)
    np.testing.assert_array_equal(decode.cuts, want.cuts)
    np.testing.assert_array_equal(decode.levels, want.levels)
