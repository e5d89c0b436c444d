"""jaxmeta.classic against hand computations, explicit per-user solves and brute-force selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jaxmeta import classic
from jaxmeta.evaluation import evaluation_batches
from jaxmeta.tasks import RaggedTasks, TaskBatch, pad_tasks

# 3 users x 3 items, mu = 18 / 6 = 3
TABLE = pd.DataFrame({"user": [1, 1, 2, 2, 3, 3], "item": [10, 20, 10, 30, 20, 30],
                      "rating": [5.0, 3.0, 4.0, 1.0, 2.0, 3.0]})


def tasks_of(users) -> RaggedTasks:
    """``users``: one ``(support [(item, rating)], query [(item, rating)])`` per user."""
    def part(rows):
        return {"item_id": np.array([i for i, _ in rows], np.int64)}, np.array([r for _, r in rows], np.float32)
    support, query = zip(*[(part(s), part(q)) for s, q in users])
    return RaggedTasks([x for x, _ in support], [y for _, y in support], [x for x, _ in query], [y for _, y in query])


def with_garbage(batch: TaskBatch, rows: int, users: int) -> TaskBatch:
    """``batch`` with ``rows`` more padded support rows per user and ``users`` more padding users, all
    holding garbage: NaN ratings and ids unknown, huge, negative or of a real item."""
    tasks, support, query = batch.num_tasks, batch.support_size, batch.query_size
    ids = np.array([10, -7, 10**12, 30, 0])

    def grow(a, fill, width, extra):
        out = np.empty((tasks + users, width + extra) + a.shape[2:], a.dtype)
        out[...] = fill
        out[:tasks, :width] = a
        return out

    sx = grow(batch.support_x["item_id"], 0, support, rows)
    sx[:, support:] = np.resize(ids, (tasks + users, rows))
    sx[tasks:] = np.resize(ids, sx[tasks:].shape)
    qx = grow(batch.query_x["item_id"], 0, query, 0)
    qx[tasks:] = np.resize(ids, qx[tasks:].shape)
    return TaskBatch({"item_id": sx}, grow(np.asarray(batch.support_y), np.nan, support, rows),
                     grow(np.asarray(batch.support_mask), False, support, rows),
                     {"item_id": qx}, grow(np.asarray(batch.query_y), np.nan, query, 0),
                     grow(np.asarray(batch.query_mask), False, query, 0))


def test_bias_hand_computed():
    model = classic.fit_bias(TABLE, item_reg=1.0)
    # b_i = sum(r - 3) / (1 + n_i): item 10: (2 + 1) / 3 = 1; item 20: (0 - 1) / 3; item 30: (-2 + 0) / 3
    assert model.mean == 3.0 and model.items.tolist() == [10, 20, 30]
    np.testing.assert_allclose(model.item_bias, [1.0, -1 / 3, -2 / 3], rtol=1e-12)
    batch = pad_tasks(tasks_of([
        # user A: residuals 5 - 3 - 1 = 1, 2 - 3 + 2/3 = -1/3, new item 40: 4 - 3 - 0 = 1; b_u = (5/3) / (2 + 3) = 1/3
        ([(10, 5.0), (30, 2.0), (40, 4.0)], [(20, 3.0), (10, 4.0), (50, 3.0)]),
        # user B: residual 1 - 3 + 1/3 = -5/3; b_u = (-5/3) / (2 + 1) = -5/9
        ([(20, 1.0)], [(30, 2.0)]),
    ]))
    predictions = classic.predict_bias(model, batch, user_reg=2.0)
    # A: 3 - 1/3 + 1/3, 3 + 1 + 1/3, new item 50: 3 + 1/3; B: 3 - 2/3 - 5/9
    np.testing.assert_allclose(predictions[0], [3.0, 13 / 3, 10 / 3], rtol=1e-12)
    np.testing.assert_allclose(predictions[1, 0], 16 / 9, rtol=1e-12)
    assert np.isfinite(predictions).all()


def test_bias_item_reg_zero_is_the_item_mean_offset():
    model = classic.fit_bias(TABLE, item_reg=0.0)
    np.testing.assert_allclose(model.item_bias, [4.5 - 3, 2.5 - 3, 2.0 - 3], rtol=1e-12)


def random_factor_model(rng, rank: int, num_items: int = 12) -> classic.FactorModel:
    items = np.sort(rng.choice(1000, num_items, replace=False)).astype(np.int64)
    return classic.FactorModel(3.5, items, rng.normal(0, 0.5, num_items), rng.normal(0, 1, (num_items, rank)),
                               np.arange(1), np.zeros(1), np.zeros((1, rank)), rank, 1.0, np.zeros(1))


def random_tasks(rng, model, support_sizes, query_size: int = 4) -> RaggedTasks:
    """Users whose rows draw from the model's items and from items unknown to it (ids 2000+)."""
    pool = np.concatenate([model.items, [2000, 2001, 2002]])
    return tasks_of([([(int(i), float(r)) for i, r in zip(rng.choice(pool, n), rng.integers(1, 6, n))],
                      [(int(i), float(r)) for i, r in zip(rng.choice(pool, query_size), rng.integers(1, 6, query_size))])
                     for n in support_sizes])


def explicit_foldin(model, tasks: RaggedTasks, user_reg: float) -> list[np.ndarray]:
    """Per user, a Python loop: the ridge fold-in as an augmented least-squares problem."""
    lookup = {int(i): k for k, i in enumerate(model.items)}
    rank = model.item_factors.shape[1]

    def side(i):
        k = lookup.get(int(i))
        return (0.0, np.zeros(rank)) if k is None else (model.item_bias[k], model.item_factors[k])

    out = []
    for sx, sy, qx in zip(tasks.support_x, tasks.support_y, tasks.query_x):
        rows = [side(i) for i in sx["item_id"]]
        a = np.array([np.append(q, 1.0) for _, q in rows]).reshape(len(rows), rank + 1)
        r = np.array([y - model.mean - b for (b, _), y in zip(rows, sy)])
        stacked = np.vstack([a, np.sqrt(user_reg) * np.eye(rank + 1)])
        w = np.linalg.lstsq(stacked, np.concatenate([r, np.zeros(rank + 1)]), rcond=None)[0]
        out.append(np.array([model.mean + b + q @ w[:rank] + w[rank] for b, q in map(side, qx["item_id"])]))
    return out


@pytest.mark.parametrize("user_reg", [0.3, 5.0])
def test_foldin_matches_explicit_per_user_ridge(user_reg):
    rng = np.random.default_rng(0)
    model = random_factor_model(rng, rank=3)
    tasks = random_tasks(rng, model, support_sizes=[1, 2, 4, 7, 12])
    predictions = classic.predict_foldin(model, pad_tasks(tasks, num_tasks=7), user_reg=user_reg)
    for user, expected in enumerate(explicit_foldin(model, tasks, user_reg)):
        np.testing.assert_allclose(predictions[user, :len(expected)], expected, rtol=1e-10)
    assert predictions.shape == (7, 4) and np.isfinite(predictions).all()


@pytest.mark.parametrize("user_reg", [0.5, 3.0])
def test_foldin_without_factors_is_the_bias_model(user_reg):
    rng = np.random.default_rng(1)
    factors = random_factor_model(rng, rank=4)._replace(item_factors=np.zeros((12, 4)))
    bias = classic.BiasModel(factors.mean, factors.items, factors.item_bias, 1.0)
    batch = pad_tasks(random_tasks(rng, factors, support_sizes=[1, 3, 6]))
    np.testing.assert_allclose(classic.predict_foldin(factors, batch, user_reg=user_reg),
                               classic.predict_bias(bias, batch, user_reg=user_reg), rtol=1e-12)


def test_unknown_query_items_fall_back_to_mean_plus_user_bias():
    rng = np.random.default_rng(2)
    model = random_factor_model(rng, rank=2)
    tasks = tasks_of([([(int(model.items[0]), 5.0), (int(model.items[1]), 1.0), (9999, 4.0)],
                       [(8888, 3.0), (int(model.items[0]), 3.0)])])
    batch = pad_tasks(tasks)
    predictions = classic.predict_foldin(model, batch, user_reg=1.0)
    # b_u is the last coefficient of the explicit solve; the unknown item 8888 gets mu + b_u
    rows = np.array([np.append(model.item_factors[k], 1.0) for k in (0, 1)] + [[0.0, 0.0, 1.0]])
    r = np.array([5.0, 1.0, 4.0]) - model.mean - np.array([model.item_bias[0], model.item_bias[1], 0.0])
    w = np.linalg.solve(rows.T @ rows + np.eye(3), rows.T @ r)
    assert predictions[0, 0] == pytest.approx(model.mean + w[2], rel=1e-12)
    bias = classic.BiasModel(model.mean, model.items, model.item_bias, 0.0)
    # the bias model too: b_u = sum of residuals / (1 + 3)
    assert classic.predict_bias(bias, batch, user_reg=1.0)[0, 0] == pytest.approx(model.mean + r.sum() / 4)


@pytest.mark.parametrize("name", ["bias", "mf"])
def test_padded_rows_and_padding_users_change_nothing(name):
    rng = np.random.default_rng(3)
    model = random_factor_model(rng, rank=3)
    if name == "bias":
        model = classic.BiasModel(model.mean, model.items, model.item_bias, 0.0)
        predict = lambda b: classic.predict_bias(model, b, user_reg=0.0)  # user_reg 0: the hardest case
    else:
        predict = lambda b: classic.predict_foldin(model, b, user_reg=0.7)
    tasks = random_tasks(rng, model, support_sizes=[2, 5, 9])
    tight = pad_tasks(tasks)
    clean = predict(tight)
    messy = predict(with_garbage(tight, rows=4, users=2))
    mask = np.asarray(tight.query_mask)
    np.testing.assert_array_equal(np.where(mask, messy[:3], 0.0), np.where(mask, clean, 0.0))
    assert np.isfinite(messy).all()
    # a user without support rows is predicted by the item side alone
    alone = predict(pad_tasks(tasks_of([([], [(int(model.items[2]), 3.0), (4242, 1.0)])]), support_size=2))
    np.testing.assert_allclose(alone[0], [model.mean + model.item_bias[2], model.mean], rtol=1e-12)


def test_als_lowers_the_objective_and_fits_a_full_table():
    rng = np.random.default_rng(4)
    truth = rng.normal(0, 1, (8, 3)) @ rng.normal(0, 1, (3, 6)) + 3.0
    users, items = np.meshgrid(np.arange(8), np.arange(100, 106), indexing="ij")
    ratings = pd.DataFrame({"user": users.ravel(), "item": items.ravel(), "rating": truth.ravel()})

    def objective(m):  # from the stored factors, independently of fit_mf's own bookkeeping
        u = np.searchsorted(m.users, ratings["user"].to_numpy())
        i = np.searchsorted(m.items, ratings["item"].to_numpy())
        fit = m.mean + m.user_bias[u] + m.item_bias[i] + np.einsum("nk,nk->n", m.user_factors[u], m.item_factors[i])
        sse = float(((ratings["rating"].to_numpy() - fit) ** 2).sum())
        penalty = sum(float((a**2).sum()) for a in (m.user_factors, m.item_factors, m.user_bias, m.item_bias))
        return sse, sse + m.reg * penalty

    model = classic.fit_mf(ratings, rank=2, reg=0.5, iterations=20, seed=1)
    assert np.all(np.diff(model.loss) <= 1e-9 * model.loss[0])
    assert objective(model)[1] == pytest.approx(model.loss[-1], rel=1e-9)
    first = classic.fit_mf(ratings, rank=2, reg=0.5, iterations=1, seed=1)
    assert first.loss[0] == pytest.approx(model.loss[0], rel=1e-12)  # the same first sweep
    assert objective(model)[0] < 0.5 * objective(first)[0]
    # rank 3 plus biases can represent the table: with a tiny ridge the training error all but vanishes
    exact = classic.fit_mf(ratings, rank=4, reg=1e-6, iterations=200)
    assert np.sqrt(objective(exact)[0] / len(ratings)) < 1e-3


def test_each_als_half_step_is_the_exact_ridge_solution():
    """Every item's [q_i; b_i] solves its own ridge given the users' side, and every user's [p_u; b_u] the one
    given the items' side of the sweep before (the same seed, one sweep fewer): np.linalg.solve per row group,
    with the bias penalised like the factors and a ridge that does not grow with the count (not ALS-WR)."""
    rng = np.random.default_rng(7)
    ratings = pd.DataFrame({"user": rng.integers(0, 9, 80), "item": rng.integers(50, 57, 80),
                            "rating": rng.integers(1, 6, 80).astype(float)})
    reg = 0.7
    before = classic.fit_mf(ratings, rank=2, reg=reg, iterations=3, seed=2)
    model = classic.fit_mf(ratings, rank=2, reg=reg, iterations=4, seed=2)
    r = ratings["rating"].to_numpy() - model.mean
    for side, other, ids, fixed in (("item", "user", model.items, model), ("user", "item", model.users, before)):
        fixed_ids = getattr(fixed, f"{other}s")
        fixed_rows = np.concatenate([getattr(fixed, f"{other}_factors"), getattr(fixed, f"{other}_bias")[:, None]], 1)
        solved = np.concatenate([getattr(model, f"{side}_factors"), getattr(model, f"{side}_bias")[:, None]], 1)
        for n, one in enumerate(ids):
            rows = ratings[side].to_numpy() == one
            a = fixed_rows[np.searchsorted(fixed_ids, ratings[other].to_numpy()[rows])]
            target = r[rows] - a[:, -1]  # the other side's bias is fixed; this side's enters through the ones
            a = np.concatenate([a[:, :-1], np.ones((len(a), 1))], 1)
            want = np.linalg.solve(a.T @ a + reg * np.eye(3), a.T @ target)
            np.testing.assert_allclose(solved[n], want, rtol=1e-9, atol=1e-12)


def test_selection_ties_go_to_the_earlier_grid_point():
    """Training ratings all at the mean: every item shrinkage gives b_i = 0, so the item grid ties; the first
    point listed wins (10, not the smallest)."""
    ratings, _, batches = selection_data()
    flat = ratings.assign(rating=3.0)
    chosen = classic.choose_bias(flat, batches, item_regs=(10.0, 0.0, 3.0), user_regs=(1.0,))
    assert len({p["valid_mae"] for p in chosen.grid}) == 1 and chosen.settings["item_reg"] == 10.0


def direct_mae(predictions: np.ndarray, tasks: RaggedTasks) -> float:
    """Per user mean absolute error over the real query rows, then the mean over users, by a loop."""
    return float(np.mean([np.abs(p[:len(y)] - y).mean() for p, y in zip(predictions, tasks.query_y)]))


def selection_data(seed: int = 5):
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 1, (30, 2)) @ rng.normal(0, 1, (2, 15)) + rng.normal(0, 0.5, 15) + 3.0
    keep = rng.random(truth.shape) < 0.6
    users, items = np.nonzero(keep)
    ratings = pd.DataFrame({"user": users[users < 24], "item": items[users < 24] + 100,
                            "rating": truth[keep][users < 24]})
    valid = tasks_of([([(int(i) + 100, float(truth[u, i])) for i in np.flatnonzero(keep[u])[:3]],
                       [(int(i) + 100, float(truth[u, i])) for i in np.flatnonzero(keep[u])[3:]])
                      for u in range(24, 30)])
    return ratings, valid, evaluation_batches([valid], 4)[0]  # two batches, the second with padding users


def test_choose_bias_picks_the_lowest_validation_mae():
    ratings, valid, batches = selection_data()
    item_regs, user_regs = (0.0, 2.0, 20.0), (0.0, 1.0, 10.0)
    chosen = classic.choose_bias(ratings, batches, item_regs=item_regs, user_regs=user_regs)
    expected = []
    for item_reg in item_regs:
        model = classic.fit_bias(ratings, item_reg=item_reg)
        for user_reg in user_regs:
            predictions = np.concatenate([classic.predict_bias(model, b, user_reg=user_reg) for b in batches])
            expected.append(direct_mae(predictions, valid))
    assert [p["valid_mae"] for p in chosen.grid] == pytest.approx(expected, rel=1e-5)  # the metrics run in float32
    assert [(p["item_reg"], p["user_reg"]) for p in chosen.grid] == [(i, u) for i in item_regs for u in user_regs]
    best = int(np.argmin(expected))
    assert chosen.valid_mae == pytest.approx(min(expected), rel=1e-5)
    assert chosen.settings == {"item_reg": item_regs[best // 3], "user_reg": user_regs[best % 3]}
    assert chosen.model.item_reg == chosen.settings["item_reg"] and chosen.user_reg == chosen.settings["user_reg"]
    np.testing.assert_array_equal(chosen.predict(batches[0]),
                                  classic.predict_bias(chosen.model, batches[0], user_reg=chosen.user_reg))


def test_choose_mf_picks_the_lowest_validation_mae():
    ratings, valid, batches = selection_data()
    ranks, regs, user_regs = (1, 2), (0.3, 3.0), (0.5, 5.0)
    chosen = classic.choose_mf(ratings, batches, ranks=ranks, regs=regs, user_regs=user_regs, iterations=4)
    expected = []
    for rank in ranks:
        for reg in regs:
            model = classic.fit_mf(ratings, rank=rank, reg=reg, iterations=4)
            for user_reg in user_regs:
                predictions = np.concatenate([classic.predict_foldin(model, b, user_reg=user_reg) for b in batches])
                expected.append(direct_mae(predictions, valid))
    assert [p["valid_mae"] for p in chosen.grid] == pytest.approx(expected, rel=1e-5)  # the metrics run in float32
    best = int(np.argmin(expected))
    point = chosen.grid[best]
    assert chosen.settings == {k: point[k] for k in ("rank", "reg", "user_reg")}
    assert (chosen.model.rank, chosen.model.reg) == (point["rank"], point["reg"])
    np.testing.assert_array_equal(chosen.predict(batches[1]),
                                  classic.predict_foldin(chosen.model, batches[1], user_reg=point["user_reg"]))


@pytest.mark.parametrize("call, error, match", [
    (lambda: classic.fit_bias(TABLE.iloc[:0], item_reg=1.0), ValueError, "empty"),
    (lambda: classic.fit_bias(TABLE.drop(columns="rating"), item_reg=1.0), ValueError, "rating"),
    (lambda: classic.fit_bias(TABLE.assign(item=TABLE["item"] * 1.5), item_reg=1.0), TypeError, "integer"),
    (lambda: classic.fit_bias(TABLE.assign(rating=np.nan), item_reg=1.0), ValueError, "non-finite"),
    (lambda: classic.fit_bias(TABLE, item_reg=-1.0), ValueError, "item_reg=-1.0"),
    (lambda: classic.fit_bias(TABLE, item_reg=float("nan")), ValueError, "item_reg=nan"),
    (lambda: classic.fit_mf(TABLE, rank=0, reg=1.0), ValueError, "rank=0"),
    (lambda: classic.fit_mf(TABLE, rank=2, reg=-0.1), ValueError, "reg=-0.1"),
    (lambda: classic.fit_mf(TABLE, rank=2, reg=0.0), ValueError, "reg=0.0: pass a finite number > 0"),
    (lambda: classic.fit_mf(TABLE, rank=2, reg=1.0, iterations=0), ValueError, "iterations=0"),
    (lambda: classic.predict_foldin(classic.fit_mf(TABLE, rank=1, reg=1.0, iterations=1),
                                    pad_tasks(tasks_of([([(10, 4.0)], [(20, 3.0)])])), user_reg=0.0),
     ValueError, "user_reg=0.0: pass a finite number > 0"),
    (lambda: classic.predict_bias(classic.fit_bias(TABLE, item_reg=1.0),
                                  pad_tasks(RaggedTasks([np.zeros((1, 1))], [np.ones(1)], [np.zeros((1, 1))],
                                                        [np.ones(1)])), user_reg=1.0),
     ValueError, "with_item_ids"),
    (lambda: classic.choose_bias(TABLE, pad_tasks(tasks_of([([(10, 4.0)], [(20, 3.0)])]))), TypeError, "sequence"),
    (lambda: classic.choose_bias(TABLE, []), ValueError, "non-empty"),
    (lambda: classic.choose_bias(TABLE, [pad_tasks(tasks_of([([(10, 4.0)], [(20, 3.0)])]))], item_regs=()),
     ValueError, "item_regs"),
    (lambda: classic.choose_mf(TABLE, [pad_tasks(tasks_of([([(10, 4.0)], [(20, 3.0)])]))], user_regs=(0.0, 1.0)),
     ValueError, "user_regs=0.0"),
    (lambda: classic.choose_mf(TABLE, [pad_tasks(tasks_of([([(10, 4.0)], [(20, 3.0)])]))], ranks=(4, 0)),
     ValueError, "ranks=0"),
])
def test_bad_arguments_raise(call, error, match):
    with pytest.raises(error, match=match):
        call()
