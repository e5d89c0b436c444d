"""The streaming protocol (jaxmeta.stream): replay order, windows, batched and incremental updates, the bias
baseline by hand, the command end to end on a tiny timed table, and (slow) a short real ML-100K run."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
from conftest import RUN_SETTINGS, VOCAB, jaxmeta, real, tiny_model

from jaxmeta import algorithms, classic, stream
from jaxmeta.evaluation import ITEM_KEY, evaluation_batches
from jaxmeta.job import TrainConfig, load_dataset, save_config
from jaxmeta.models import combine, mask_where, partition
from jaxmeta.tasks import RaggedTasks, pad_tasks

# ----------------------------------------------------------------------------- order and windows by hand

# user 1: six ratings, rows shuffled; two pairs share a second (items 4 and 2 at t=20, items 9 and 5 at t=50)
# user 2: three ratings. Rows of user 1 in time order, ties by item: (3,10) (2,20) (4,20) (8,30) (5,50) (9,50).
HAND = pd.DataFrame({
    "user": [1, 2, 1, 1, 2, 1, 1, 2, 1],
    "item": [4, 7, 8, 9, 6, 3, 2, 5, 5],
    "rating": [2.0, 1.0, 4.0, 5.0, 2.0, 1.0, 3.0, 4.0, 4.5],
    "timestamp": [20, 300, 30, 50, 100, 10, 20, 200, 50],
})


def item_inputs(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {ITEM_KEY: frame["item"].to_numpy(np.int64)}


def test_timeline_replays_in_time_order_ties_by_item():
    line = stream.timeline(HAND.sample(frac=1.0, random_state=3), item_inputs)  # the file's row order is irrelevant
    assert line.users.tolist() == [1, 2]
    assert line.x[0][ITEM_KEY].tolist() == [3, 2, 4, 8, 5, 9]
    assert line.y[0].tolist() == [1.0, 3.0, 2.0, 4.0, 4.5, 5.0]
    assert line.times[0].tolist() == [10, 20, 20, 30, 50, 50]
    assert line.x[1][ITEM_KEY].tolist() == [6, 5, 7] and line.y[1].tolist() == [2.0, 4.0, 1.0]
    assert line.lengths.tolist() == [6, 3]


def test_windows_and_users_per_n_by_hand():
    line = stream.timeline(HAND, item_inputs)
    tasks = stream.window(line, [0, 1], 1, 2, 1)
    assert [y.tolist() for y in tasks.support_y] == [[3.0], [4.0]]
    assert [y.tolist() for y in tasks.query_y] == [[2.0], [1.0]]
    assert tasks.query_x[0][ITEM_KEY].tolist() == [4]
    # predicting 0 for every rating: MAE = the mean over users of the mean |rating| of ratings [n, n + 2)
    zero = stream.fixed_method("zero", lambda batch: np.zeros(batch.query_y.shape))
    out = stream.replay([zero], line, ns=(1, 2, 3, 4, 5), horizon=2)
    assert out["users"] == {1: 2, 2: 1, 3: 1, 4: 1, 5: 0}  # user 2 (3 ratings) has n + 2 of them only at n = 1
    assert sorted(r["n"] for r in out["rows"]) == [1, 2, 3, 4]
    mae = {r["n"]: r["mae"] for r in out["rows"]}
    np.testing.assert_allclose([mae[1], mae[2], mae[3], mae[4]],
                               [((3.0 + 2.0) / 2 + (4.0 + 1.0) / 2) / 2, (2.0 + 4.0) / 2, (4.0 + 4.5) / 2,
                                (4.5 + 5.0) / 2])
    with pytest.raises(ValueError, match="keep users with at least 7 ratings"):
        stream.window(line, [0], 0, 5, 2)


@pytest.mark.parametrize("ns, match", [((1, 3, 2), r"ns=\[1, 3, 2\]: pass strictly increasing.*\[1, 2, 3\]"),
                                       ((0, 1), r"ns=0: pass a whole number >= 1"),
                                       ((), r"ns=\(\): pass a non-empty list")])
def test_bad_ns(ns, match):
    with pytest.raises(ValueError, match=match):
        stream.replay([], stream.timeline(HAND, item_inputs), ns=ns)


def test_bad_settings_name_the_value():
    line = stream.timeline(HAND, item_inputs)
    with pytest.raises(ValueError, match="horizon=0: pass a whole number >= 1"):
        stream.replay([], line, ns=(1,), horizon=0)
    with pytest.raises(ValueError, match=r"modes=\('again',\): pass one or both of"):
        stream.replay([], line, ns=(1,), modes=("again",))
    with pytest.raises(ValueError, match="no user has 12 ratings"):
        stream.replay([], line, ns=(2,), horizon=10)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['timestamp'\].*time order"):
        stream.timeline(HAND.drop(columns="timestamp"), item_inputs)
    with pytest.raises(ValueError, match="a window must be shorter than every history"):
        stream.drift([], line, windows=(10, 40), min_history=40)


def test_runs_without_times_are_refused_before_anything_loads(tmp_path):
    for name, config, match in [
        ("synthetic", TrainConfig(), "the synthetic data have no times"),
        ("ml-1m", TrainConfig(data="ml-1m", data_dir=str(tmp_path)), "ratings_no_timestamp.dat"),
    ]:
        (tmp_path / name).mkdir()
        save_config(config, tmp_path / name / "config.yaml")
        with pytest.raises(ValueError, match=match):
            stream.stream_eval([tmp_path / name])
    untimed = tmp_path / "untimed.csv"
    HAND.drop(columns="timestamp").to_csv(untimed, index=False)
    (tmp_path / "table").mkdir()
    save_config(TrainConfig(data="table", path=str(untimed)), tmp_path / "table" / "config.yaml")
    with pytest.raises(ValueError, match=r"untimed.csv: the run's table has no 'timestamp' column"):
        stream.stream_eval([tmp_path / "table"])
    with pytest.raises(ValueError, match="users='all': pass one of"):
        stream.stream_eval([tmp_path / "table"], users="all")


# ----------------------------------------------------------------------------- batched and incremental updates

LR = 0.3


def learners():
    """Gradient learners with an incremental mode, comparable settings; one inner step each."""
    inner = {"inner_optimizer": LR, "inner_steps": 1, "outer_optimizer": optax.sgd(1.0)}
    return {"maml": algorithms.maml, "metasgd": algorithms.metasgd, "finetune": algorithms.finetune}, inner


def random_line(users: int, *, seed: int = 0, lengths=(4, 9)) -> stream.Timeline:
    """Users of the tiny model (two id fields) with ``lengths`` ratings each (cycled), in time order."""
    rng = np.random.default_rng(seed)
    x, y = [], []
    for u in range(users):
        n = lengths[u % len(lengths)]
        x.append(np.stack([rng.integers(VOCAB[0], size=n), rng.integers(VOCAB[1], size=n)], axis=1).astype(np.int32))
        y.append(rng.normal(size=n).astype(np.float32))
    return stream.Timeline(np.arange(users), x, y, [np.arange(len(v)) for v in y])


def one_user(batch, u):
    return jax.tree.map(lambda a: np.asarray(a)[u:u + 1], batch)


def assert_trees_close(a, b, **tol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for left, right in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(left, right, **{"rtol": 1e-5, "atol": 1e-6, **tol})


@pytest.mark.parametrize("name", ["maml", "metasgd", "finetune"])
def test_batched_updates_equal_a_loop_over_users(name):
    factories, inner = learners()
    learner = factories[name](tiny_model(), **inner)
    state = learner.init(jax.random.key(0))
    slow = partition(state.params, mask_where(state.params, learner.is_fast))[1]
    method = stream.learner_method(name, learner, state)
    line = random_line(5, seed=1)
    rows = np.arange(5)
    first = pad_tasks(stream.window(line, rows, 0, 2, 2), support_size=2)
    later = pad_tasks(stream.window(line, rows, 2, 4, 0), support_size=2, query_size=2)  # ratings 2, 3 only
    fast = method.adapt(first)
    resumed = method.resume(fast, later)
    for u in rows:
        assert_trees_close(jax.tree.map(lambda a, u=u: a[u], fast), jax.tree.map(lambda a: a[0], learner.adapt(
            state, one_user(first, u))))
        own = state._replace(params=combine(jax.tree.map(lambda a, u=u: a[u], fast), slow))
        assert_trees_close(jax.tree.map(lambda a, u=u: a[u], resumed),
                           jax.tree.map(lambda a: a[0], learner.adapt(own, one_user(later, u))))
    np.testing.assert_allclose(method.predict(fast, first), learner.predict(state, first), rtol=1e-5, atol=1e-6)


def test_incremental_is_one_sgd_step_from_the_previous_weights_on_the_new_ratings_only():
    learner = algorithms.finetune(tiny_model(), inner_optimizer=LR, inner_steps=1, outer_optimizer=optax.sgd(1.0))
    state = learner.init(jax.random.key(2))
    model = tiny_model()
    line = random_line(3, seed=4, lengths=(9,))
    fast = learner.adapt(state, pad_tasks(stream.window(line, np.arange(3), 0, 3, 0), support_size=3, query_size=1))
    resumed = stream.resume_adapt(learner)(state, fast,
                                           pad_tasks(stream.window(line, np.arange(3), 3, 5, 0), query_size=1))
    slow = partition(state.params, mask_where(state.params, learner.is_fast))[1]
    for u in range(3):
        start = jax.tree.map(lambda a, u=u: a[u], fast)

        def mse(f, u=u):
            return ((model.apply(combine(f, slow), line.x[u][3:5]) - line.y[u][3:5]) ** 2).mean()

        by_hand = jax.tree.map(lambda w, g: w - LR * g, start, jax.grad(mse)(start))
        assert_trees_close(jax.tree.map(lambda a, u=u: a[u], resumed), by_hand)
        assert not np.allclose(jax.tree.leaves(by_hand)[0], jax.tree.leaves(start)[0])  # the step moved it


@pytest.mark.parametrize("name", ["maml", "metasgd"])
def test_incremental_with_no_new_ratings_keeps_the_weights_and_from_init_equals_readapt(name):
    factories, inner = learners()
    learner = factories[name](tiny_model(), **inner)
    state = learner.init(jax.random.key(3))
    method = stream.learner_method(name, learner, state)
    line = random_line(4, seed=5)
    rows = np.arange(4)
    batch = pad_tasks(stream.window(line, rows, 0, 3, 1))
    fast = method.adapt(batch)
    nothing = pad_tasks(stream.window(line, rows, 3, 3, 1), support_size=1)  # no support row: all masked
    assert not np.asarray(nothing.support_mask).any()
    assert_trees_close(method.resume(fast, nothing), fast, rtol=0, atol=0)
    init = jax.tree.map(lambda a: np.broadcast_to(a, (4,) + a.shape),
                        partition(state.params, mask_where(state.params, learner.is_fast))[0])
    assert_trees_close(method.resume(init, batch), fast)


def test_replay_incremental_equals_a_loop_of_per_user_updates():
    """Both modes through replay, against per-user one-task updates: users drop out between the ns
    (lengths 4 and 9, horizon 2: the 4-rating users leave after n = 1), so the incremental states
    are carried over for the users that stay."""
    factories, inner = learners()
    learner = factories["maml"](tiny_model(), **inner)
    state = learner.init(jax.random.key(4))
    slow = partition(state.params, mask_where(state.params, learner.is_fast))[1]
    line = random_line(6, seed=6)
    ns = (1, 3)
    out = stream.replay([stream.learner_method("maml", learner, state)], line, ns=ns, horizon=2, repeats=1)
    assert out["users"] == {1: 6, 3: 3}
    rows = {(r["n"], r["mode"]): r for r in out["rows"]}
    assert rows[(1, "incremental")]["same_as"] == "readapt"
    assert rows[(1, "incremental")]["mae"] == rows[(1, "readapt")]["mae"]

    def task(u, a, b, query):  # one user, padded to one shape for every call (one compilation)
        return pad_tasks(RaggedTasks([line.x[u][a:b]], [line.y[u][a:b]], [line.x[u][b:b + query]],
                                     [line.y[u][b:b + query]]), support_size=5, query_size=2)

    fast = {}
    for i, n in enumerate(ns):
        readapt, incremental = [], []
        for u in range(6):
            if len(line.y[u]) < n + 2:
                continue
            scored = task(u, 0, n, 2)
            new = learner.adapt(state, scored)
            if i > 0:
                own = state._replace(params=combine(jax.tree.map(lambda a, u=u: a[0], fast[u]), slow))
                fast[u] = learner.adapt(own, task(u, ns[i - 1], n, 0))
            else:
                fast[u] = new
            for errors, f in ((readapt, new), (incremental, fast[u])):
                prediction = learner.apply_adapted(state, f, scored.query_x)[0]
                errors.append(np.abs(np.asarray(prediction) - line.y[u][n:n + 2]).mean())
        np.testing.assert_allclose(rows[(n, "readapt")]["mae"], np.mean(readapt), rtol=1e-5)
        np.testing.assert_allclose(rows[(n, "incremental")]["mae"], np.mean(incremental), rtol=1e-5)
    assert rows[(3, "incremental")]["mae"] != rows[(3, "readapt")]["mae"]
    assert rows[(3, "incremental")]["vs_readapt"]["mae"][2] == 3  # paired over the 3 users kept
    assert all(r["ms_per_user"] > 0 for r in out["rows"])


def test_learners_without_an_incremental_mode_are_reported_in_readapt_only():
    learner = algorithms.maml(tiny_model())
    state = learner.init(jax.random.key(0))
    why = stream.NOT_INCREMENTAL["conditioned"]
    method = stream.learner_method("conditioned", learner, state, incremental=False, note=why)
    assert method.resume is None and "set encoder" in method.note
    out = stream.replay([method], random_line(3), ns=(1, 2), horizon=2, repeats=1)
    assert [(r["n"], r["mode"]) for r in out["rows"]] == [(1, "readapt"), (2, "readapt")]
    assert "ridge" not in stream.NOT_INCREMENTAL


@pytest.mark.parametrize("implicit", [False, True, "own rows"])
def test_ridge_incremental_carries_the_solve_and_equals_readapt(implicit):
    """``ridge_method``: readapt is the algorithm's own solve (predictions equal ``learner.predict``); the
    sums of ratings [0, 2) plus those of [2, 5) give the head of ratings [0, 5); through replay the
    incremental rows equal the readapt rows (users drop out between the ns). With ``implicit=True`` the
    prior moves with the items rated, from sums carried too; ``"own rows"``: through the model's own implicit
    rows (``Model.implicit``, here the row's two field embeddings, as wide as the head)."""
    model = tiny_model()
    if implicit == "own rows":
        model = model._replace(implicit=lambda p, x: jnp.concatenate([p["emb"][0][x[:, 0]], p["emb"][1][x[:, 1]]], 1))
    learner = algorithms.ridge(model, implicit=bool(implicit))
    state = learner.init(jax.random.key(5))
    keys = iter(jax.random.split(jax.random.key(6), 2))
    state = state._replace(hyper=jax.tree.map(lambda a: a + jax.random.normal(next(keys), a.shape), state.hyper))
    method = stream.ridge_method("ridge", learner, state, model)
    line = random_line(5, seed=7, lengths=(9,))
    rows = np.arange(5)
    whole = pad_tasks(stream.window(line, rows, 0, 5, 2))
    direct = method.adapt(whole)
    assert len(direct) == 5  # J^T J, J^T r, J's row sum, count, head
    np.testing.assert_allclose(method.predict(direct, whole), learner.predict(state, whole), rtol=1e-5, atol=1e-5)
    first = method.adapt(pad_tasks(stream.window(line, rows, 0, 2, 0), query_size=1))
    resumed = method.resume(first, pad_tasks(stream.window(line, rows, 2, 5, 0), query_size=1))
    for carried, whole_sums in zip(resumed, direct):
        np.testing.assert_allclose(carried, whole_sums, rtol=1e-4, atol=1e-5)
    assert not np.allclose(first[-1], direct[-1], atol=1e-3)  # the new ratings moved the head
    out = stream.replay([method], random_line(6, seed=6), ns=(1, 3), horizon=2, repeats=1)
    by = {(r["n"], r["mode"]): r for r in out["rows"]}
    assert set(by) == {(1, "readapt"), (1, "incremental"), (3, "readapt"), (3, "incremental")}
    for metric in ("mae", "rmse", "ndcg@3"):
        np.testing.assert_allclose(by[(3, "incremental")][metric], by[(3, "readapt")][metric], rtol=1e-5)
    assert "same_as" not in by[(3, "incremental")] and by[(3, "incremental")]["vs_readapt"]["mae"][2] == 3


# ----------------------------------------------------------------------------- the bias baseline by hand


def test_bias_baseline_by_hand():
    # mu = 3.5; b_7 = 4.5 - 3.5 = 1, b_9 = 2.5 - 3.5 = -1 (item_reg 0); item 8 is unknown: b_8 = 0
    warm = pd.DataFrame({"user": [1, 1, 2, 2], "item": [7, 9, 7, 9], "rating": [5.0, 3.0, 4.0, 2.0]})
    valid = RaggedTasks([{ITEM_KEY: np.array([7])}], [np.array([5.0])], [{ITEM_KEY: np.array([9])}],
                        [np.array([2.75])])
    chosen = classic.choose_bias(warm, evaluation_batches([valid], 1)[0], item_regs=(0.0,), user_regs=(0.0, 1.0))
    assert chosen.user_reg == 1.0
    new = pd.DataFrame({"user": [5, 5, 5], "item": [9, 7, 8], "rating": [2.0, 5.0, 4.0], "timestamp": [2, 1, 3]})
    out = stream.replay([stream.bias_method(chosen)], stream.timeline(new, item_inputs), ns=(1, 2), horizon=1,
                        repeats=1)
    mae = {r["n"]: r["mae"] for r in out["rows"]}
    # n = 1: seen (7, 5): b_u = (5 - 3.5 - 1) / (1 + 1) = 0.25; next (9, 2): 3.5 - 1 + 0.25 = 2.75, error 0.75
    # n = 2: seen (7, 5), (9, 2): b_u = (0.5 - 0.5) / (1 + 2) = 0; next (8, 4): 3.5, error 0.5
    np.testing.assert_allclose([mae[1], mae[2]], [0.75, 0.5])
    assert [r["mode"] for r in out["rows"]] == ["readapt", "readapt"]


# ----------------------------------------------------------------------------- drift


def test_drift_users_and_windows_by_hand():
    day = 86400
    # user 0: 8 ratings on days 0..7, then 2 on day 100 (gap 96.5 days from the history's median day 3.5)
    # user 1: 10 ratings on days 0..9 (gap 8 - 3.5 = 4.5 days); user 2: too short (5 ratings)
    times = [np.r_[np.arange(8), 100, 100] * day, np.arange(10) * day, np.arange(5) * day]
    ys = [np.r_[np.full(8, 1.0), 5.0, 5.0], np.arange(10, dtype=float), np.ones(5)]
    line = stream.Timeline(np.arange(3), [np.arange(len(t)) for t in times], [y.astype(np.float32) for y in ys],
                           times)
    drifted, control, gap = stream.drift_users(line, horizon=2, min_history=6, days=30)
    assert drifted.tolist() == [0] and control.tolist() == [1]
    np.testing.assert_allclose(gap[:2], [96.5, 4.5])
    assert np.isnan(gap[2])

    # a "model" predicting the mean of the support ratings: whole history against its last 3 ratings
    def mean_of_support(batch):
        return np.sum(np.where(batch.support_mask, batch.support_y, 0), 1) / batch.support_mask.sum(1)

    method = stream.Method("mean", adapt=mean_of_support, resume=None,
                           predict=lambda means, batch: np.broadcast_to(np.asarray(means)[:, None],
                                                                        batch.query_y.shape))
    out = stream.drift([method], line, horizon=2, windows=(3,), min_history=6, days=30, ks=())
    rows = {(r["group"], r["history"]): r for r in out["rows"]}
    assert out["users"] == {"drift": 1, "control": 1}
    np.testing.assert_allclose(rows[("drift", "all")]["mae"], 4.0)  # predicts 1, the last ratings are 5
    np.testing.assert_allclose(rows[("control", "all")]["mae"], abs(3.5 - 8) / 2 + abs(3.5 - 9) / 2)
    np.testing.assert_allclose(rows[("control", "last 3")]["mae"], abs(6 - 8) / 2 + abs(6 - 9) / 2)
    np.testing.assert_allclose(rows[("control", "last 3")]["vs_all"]["mae"][0], 2.5 - 5.0)


# ----------------------------------------------------------------------------- the command end to end


def timed_table(path: Path) -> dict[int, int]:
    """A ratings table whose users are told apart by their number of ratings (user u: 13 + u; user 99
    rates every item first, at time 0, so that no item is cold and a new user's task holds all of
    their ratings). Even users rate their last 3 items 60 days later (drift). Returns {user: ratings}."""
    rng = np.random.default_rng(0)
    rows, counts = [], {}
    items = 60
    for u in range(40):
        count = 13 + u
        counts[u] = count
        for k in range(count):
            late = u % 2 == 0 and k >= count - 3
            when = 1000 + 3600 * k + (60 * 86400 if late else 0)
            rows.append((u, 1 + (7 * u + k) % items, float(rng.integers(1, 6)), when))
    rows += [(99, 1 + i, float(rng.integers(1, 6)), 0) for i in range(items)]
    counts[99] = items
    pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).to_csv(path, index=False)
    return counts


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    counts = timed_table(folder / "ratings.csv")
    done = jaxmeta("train", "--data", "table", "--path", folder / "ratings.csv", "--hidden", "8", "--embed-dim", "4",
                   "--out", folder / "run", *RUN_SETTINGS)
    assert done.returncode == 0, done.stderr
    return folder, counts


def test_main_end_to_end_on_a_tiny_timed_run(tiny_run, capsys):
    folder, counts = tiny_run
    parser = argparse.ArgumentParser()
    stream.add_arguments(parser)
    args = parser.parse_args(["--run", str(folder / "run"), "--out", str(folder / "out"), "--ns", "1", "30",
                              "--horizon", "3", "--windows", "4", "--drift-min-history", "5", "--repeats", "1",
                              "--quiet"])
    assert stream.main(args) == 0
    assert (folder / "out" / "stream.png").stat().st_size > 0
    results = json.loads((folder / "out" / "stream.json").read_text())
    # the run's new users, told apart by their number of ratings, independently of the stream's own matching
    data = load_dataset(TrainConfig(data="table", path=str(folder / "ratings.csv")))
    sizes = data.scenarios["user_cold"].support_sizes + data.scenarios["user_cold"].query_sizes
    new_users = [u for u, c in counts.items() if c in set(sizes.tolist())]
    assert sorted(counts[u] for u in new_users) == sorted(sizes.tolist())
    assert results["stream"]["users"] == {str(n): sum(counts[u] >= n + 3 for u in new_users) for n in (1, 30)}
    shown = {(r["method"], r["mode"]) for r in results["stream"]["rows"]}
    assert shown == {("maml", "readapt"), ("maml", "incremental"), ("finetune", "readapt"),
                     ("finetune", "incremental"), ("bias", "readapt"), ("no_adaptation", "none")}
    for row in results["stream"]["rows"]:
        assert all(np.isfinite(row[m]) for m in ("mae", "rmse")), row
        assert row["method"] == "no_adaptation" or row["ms_per_user"] > 0
        assert (row["method"] == "bias") == ("vs_bias" not in row)
    assert results["methods"]["bias"]["settings"].keys() == {"item_reg", "user_reg"}
    # the drift pool: users the run neither trained nor validated on (here, the new users); drift: the even ones
    assert results["settings"]["drift_pool"] == len(new_users)
    assert results["drift"]["users"] == {"drift": sum(u % 2 == 0 and u < 99 for u in new_users),
                                         "control": sum(u % 2 == 1 or u == 99 for u in new_users)}
    assert {r["history"] for r in results["drift"]["rows"]} == {"all", "last 4"}
    assert "| maml (incremental) |" in capsys.readouterr().out


def test_a_run_on_its_training_users_is_refused_and_runs_in_folders_of_one_name_stay_apart(tiny_run, tmp_path):
    """--scenario warm streams the users the run trained on: their ratings would be predicted by models fitted
    on them, so the stream refuses it (a copy of the run, its config changed). Three runs of one algorithm in
    folders of one name get three method names."""
    folder, _ = tiny_run
    for parent in "abc":
        shutil.copytree(folder / "run", tmp_path / parent / "run")
    config = tmp_path / "a" / "run" / "config.yaml"
    config.write_text(config.read_text().replace("scenario: user_cold", "scenario: warm"))
    assert "scenario: warm" in config.read_text()
    with pytest.raises(ValueError, match="scenario 'warm' holds .* of the users it trained or validated on"):
        stream.stream_eval([tmp_path / "a" / "run"], ns=(1,), horizon=3, windows=(4,), drift_min_history=5,
                           repeats=1, progress=False)
    results = stream.stream_eval([tmp_path / p / "run" for p in "bc"] + [folder / "run"], ns=(1,), horizon=3,
                                 windows=(4,), drift_min_history=5, repeats=1, progress=False)
    assert {"maml", "maml (run)", "maml (run) #1"} <= set(results["methods"])


# ----------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_real_ml100k_short_run(tmp_path):
    data_dir = real("ml-100k").parent
    done = jaxmeta("train", "--data", "ml-100k", "--data-dir", data_dir, "--model", "mf", "--algo", "maml",
                   "--steps", "20", "--eval-every", "10", "--checkpoint-every", "10", "--quiet",
                   "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    results = stream.stream_eval([tmp_path / "run"], ns=(1, 5, 20), repeats=1)
    data = load_dataset(TrainConfig(data="ml-100k", data_dir=str(data_dir), model="mf"))
    test = data.scenarios["user_cold"]
    sizes = test.support_sizes + test.query_sizes  # on ML-100K a new user's task holds all of their ratings
    assert results["stream"]["users"] == {n: int((sizes >= n + 10).sum()) for n in (1, 5, 20)}
    assert results["settings"]["users_total"] == len(test) == 58
    assert results["settings"]["drift_pool"] == 943 - len(data.train) - len(data.valid["users"])
    assert results["drift"]["users"]["drift"] > 20
    rows = {(r["n"], r["method"], r["mode"]): r for r in results["stream"]["rows"]}
    assert rows[(20, "bias", "readapt")]["mae"] < rows[(20, "no_adaptation", "none")]["mae"]
    assert all(np.isfinite(r["mae"]) for r in results["stream"]["rows"])
