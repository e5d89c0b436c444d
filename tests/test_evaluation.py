"""jaxmeta.evaluation against hand-computed values on tiny batches."""

from __future__ import annotations

import math

import jax
import numpy as np
import optax
import pandas as pd
import pytest

from jaxmeta import evaluation as ev
from jaxmeta.data import splits
from jaxmeta.data.features import FeatureEncoder
from jaxmeta.tasks import TaskBatch

LOG3 = math.log2(3)


def query_batch(targets, mask, items=None) -> TaskBatch:
    targets, mask = np.asarray(targets, np.float32), np.asarray(mask, bool)
    empty = np.zeros((len(targets), 0), np.float32)
    x = None if items is None else {"item_id": np.asarray(items, np.int64)}
    return TaskBatch(None, empty, empty.astype(bool), x, targets, mask)


# user A: 3 real items; user B: 2 real items and a padded slot; user C: padding user
TARGETS = [[5, 3, 1], [4, 2, 0], [0, 0, 0]]
MASK = [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
PREDICTIONS = [[4, 3, 2], [2, 2, np.nan], [np.nan, np.inf, 7]]  # garbage on padded rows must not matter


def test_query_metrics_hand_computed():
    m = ev.query_metrics(np.array(PREDICTIONS), query_batch(TARGETS, MASK), ks=(1, 3))
    # A: errors (1, 0, 1); B: errors (2, 0); per user, then the mean over the two real users
    assert m["mae"] == pytest.approx((2 / 3 + 1) / 2, rel=1e-6)
    assert m["rmse"] == pytest.approx((math.sqrt(2 / 3) + math.sqrt(2)) / 2, rel=1e-6)
    # A ranks perfectly; B's two items tie: expected gain (15 + 3) / 2 at the top, ideal 15
    assert m["ndcg@1"] == pytest.approx((1 + 9 / 15) / 2, rel=1e-6)
    ndcg_b = (15 + 3) * (1 + 1 / LOG3) / 2 / (15 + 3 / LOG3)
    assert m["ndcg@3"] == pytest.approx((1 + ndcg_b) / 2, rel=1e-6)
    assert set(m) == {"mae", "rmse", "ndcg@1", "ndcg@3"}


def test_query_metrics_default_keys_and_ranking_only():
    batch = query_batch(TARGETS, MASK)
    assert set(ev.query_metrics(np.array(PREDICTIONS), batch)) == {"mae", "rmse", "ndcg@3", "ndcg@5"}
    ranking = ev.query_metrics(np.array(PREDICTIONS), batch, ratings=False)
    assert ranking["mae"] is None and ranking["rmse"] is None and ranking["ndcg@3"] > 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_query_metrics_rejects_non_finite_real_predictions(bad):
    predictions = np.array(PREDICTIONS)
    predictions[1, 1] = bad
    with pytest.raises(ValueError, match="not finite"):
        ev.query_metrics(predictions, query_batch(TARGETS, MASK))


def test_query_metrics_rejects_wrong_shape():
    with pytest.raises(ValueError, match="one prediction per query row"):
        ev.query_metrics(np.zeros((3, 2)), query_batch(TARGETS, MASK))


def test_floor_is_constant_scores():
    batch = query_batch(TARGETS, MASK)
    floor = ev.floor_metrics(batch, ks=(1, 3))
    flat = ev.query_metrics(np.zeros((3, 3)), batch, ks=(1, 3))
    for name in ("constant", "random"):
        assert floor[name]["mae"] is None and floor[name]["rmse"] is None
        for k in ("ndcg@1", "ndcg@3"):
            assert floor[name][k] == pytest.approx(flat[k], rel=1e-6)
    # A: mean gain (31 + 7 + 1) / 3 at the top over the ideal 31; B: 9 / 15
    assert floor["random"]["ndcg@1"] == pytest.approx((13 / 31 + 9 / 15) / 2, rel=1e-6)


WARM = pd.DataFrame({"user": [1, 1, 2, 3], "item": [10, 20, 10, 40], "rating": [4.0, 5.0, 2.0, 3.0]})


def test_item_stats_and_predictions():
    stats = ev.fit_item_stats(WARM)
    assert stats.items.tolist() == [10, 20, 40]
    assert stats.means.tolist() == [3.0, 5.0, 3.0]
    assert stats.counts.tolist() == [2, 1, 1]
    assert stats.global_mean == pytest.approx(3.5)
    items = np.array([[20, 30, 10], [5, 40, 99]])  # 30, 5 and 99 are unseen
    assert ev.item_mean_predictions(stats, items).tolist() == [[5.0, 3.5, 3.0], [3.5, 3.0, 3.5]]
    assert ev.global_mean_predictions(stats, items).tolist() == [[3.5] * 3] * 2
    assert ev.popularity_scores(stats, items).tolist() == [[1, 0, 2], [0, 1, 0]]


def test_baseline_metrics_hand_computed():
    stats = ev.fit_item_stats(WARM)
    # one user, query items 10, 20, 30 (unseen) rated 3, 5, 4; a second user is padding
    batch = query_batch([[3, 5, 4], [0, 0, 0]], [[1, 1, 1], [0, 0, 0]], items=[[10, 20, 30], [0, 0, 0]])
    out = ev.baseline_metrics(stats, batch, ks=(1,))
    assert set(out) == {"global_mean", "item_mean", "popularity", "constant", "random"}
    # item mean predicts (3, 5, 3.5): errors (0, 0, 0.5)
    assert out["item_mean"]["mae"] == pytest.approx(0.5 / 3, rel=1e-6)
    assert out["item_mean"]["rmse"] == pytest.approx(math.sqrt(0.25 / 3), rel=1e-6)
    assert out["item_mean"]["ndcg@1"] == pytest.approx(1.0)  # item 20 (rated 5) first
    # global mean 3.5 everywhere: errors (0.5, 1.5, 0.5)
    assert out["global_mean"]["mae"] == pytest.approx(2.5 / 3, rel=1e-6)
    assert out["global_mean"]["ndcg@1"] == pytest.approx(out["constant"]["ndcg@1"], rel=1e-6)
    # popularity scores (2, 1, 0): item 10, rated 3, first: gain 7 over the ideal 31
    assert out["popularity"]["ndcg@1"] == pytest.approx(7 / 31, rel=1e-6)
    assert out["popularity"]["mae"] is None


def test_baseline_metrics_needs_item_ids():
    with pytest.raises(ValueError, match="with_item_ids"):
        ev.baseline_metrics(ev.fit_item_stats(WARM), query_batch(TARGETS, MASK))


@pytest.fixture
def tiny_split():
    rng = np.random.default_rng(0)
    rows = [(u, i, float(rng.integers(1, 6))) for u in (1, 2, 3) for i in rng.choice(50, size=13 + u, replace=False)]
    ratings = pd.DataFrame(rows, columns=["user", "item", "rating"])
    users = pd.DataFrame({"user": [1, 2, 3], "gender": ["F", "M", "F"]})
    items = pd.DataFrame({"item": np.arange(50), "genres": [("a",) if i % 2 else ("b", "c") for i in range(50)]})
    encoder = FeatureEncoder.fit(users, items, user_categorical=["gender"], item_multi=["genres"])
    table = splits.select_queries(ratings, rng=1, query_size=4)
    return ev.with_item_ids(splits.build_tasks(table, encoder), table), table


def test_with_item_ids_follows_the_table(tiny_split):
    tasks, table = tiny_split
    for i, (user, rows) in enumerate(table.groupby("user", sort=False)):
        support, query = rows[~rows["query"]], rows[rows["query"]]
        assert tasks.support_x[i]["item_id"].tolist() == support["item"].tolist()
        assert tasks.query_x[i]["item_id"].tolist() == query["item"].tolist()
        assert tasks.query_y[i].tolist() == query["rating"].tolist()
        assert set(tasks.query_x[i]) == {"genres", "gender", "item_id"}


def test_with_item_ids_rejects_another_table(tiny_split):
    tasks, table = tiny_split
    with pytest.raises(ValueError, match="pass the task table"):
        ev.with_item_ids(tasks, table.iloc[1:])


def test_evaluation_batches_cover_every_user_once_in_one_shape(tiny_split):
    tasks, _ = tiny_split
    (batches,) = ev.evaluation_batches([tasks], 2)
    assert all(b.num_tasks == 2 for b in batches)
    predictions, queries = ev.predict_tasks(lambda b: np.asarray(b.query_y) + 1.0, batches)
    assert int(np.asarray(queries.query_mask).any(axis=1).sum()) == len(tasks)
    got = sorted(tuple(y[m].tolist()) for y, m in zip(queries.query_y, queries.query_mask) if m.any())
    assert got == sorted(tuple(y.tolist()) for y in tasks.query_y)
    m = ev.query_metrics(predictions, queries)
    assert m["mae"] == pytest.approx(1.0) and m["rmse"] == pytest.approx(1.0)
    assert len({(b.support_size, b.query_size) for b in batches}) == 1
    # several sets share one shape: the largest support and query sets of all of them
    small = tasks.take(np.arange(1))
    a, b = ev.evaluation_batches([small, tasks], 3)
    assert {(x.support_size, x.query_size) for x in a + b} == {
        (int(tasks.support_sizes.max()), int(tasks.query_sizes.max()))}
    assert [len(a), len(b)] == [1, -(-len(tasks) // 3)]
    with pytest.raises(TypeError, match=r"pass \[tasks\]"):
        ev.evaluation_batches(tasks, 2)


def test_adaptation_curve_is_the_query_loss_of_plain_sgd_step_by_step():
    from conftest import random_tasks, tiny_model

    from jaxmeta import algorithms
    from jaxmeta.tasks import pad_tasks

    model, batch = tiny_model(), pad_tasks(random_tasks(5, seed=3), num_tasks=8)
    params = model.init(jax.random.key(0))
    curve = ev.adaptation_curve(model, params, [batch], learning_rate=0.2, steps=3)
    for k in range(4):  # an independent reference: the fine-tuning baseline with k inner steps
        tune = algorithms.finetune(model, inner_optimizer=optax.sgd(0.2), inner_steps=k) if k else None
        state = algorithms.no_adaptation(model).init(jax.random.key(0))
        want = (tune.evaluate(state, batch)["query_loss_after"] if k
                else algorithms.no_adaptation(model).evaluate(state, batch)["query_loss_before"])
        assert curve[k] == pytest.approx(float(want), rel=1e-5), k
