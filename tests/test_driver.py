"""The driver: exact resume, checkpoints that survive a kill, NaN stops, Ctrl-C,
the metrics log, config files and the one-line errors of the commands."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jaxmeta, random_tasks, tiny_model

from jaxmeta.checkpoint import CheckpointError, Checkpoints
from jaxmeta.job import TrainConfig, load_config, make_learner, make_model, restore_run
from jaxmeta.tasks import pad_tasks
from jaxmeta.train import (
    BatchStream,
    LogMetrics,
    MetricsLog,
    SaveCheckpoints,
    StopOnNaN,
    TrainingInterrupted,
    Validate,
    fit,
)

CONFIG = TrainConfig(algo="maml", steps=12, batch_size=4, inner_lr=0.3, outer_lr=0.05, num_buckets=2, resplit=True)


def setup():
    learner = make_learner(CONFIG, tiny_model())
    return learner, random_tasks(24, seed=2), [pad_tasks(random_tasks(5, seed=8))]


def stream(tasks, config=CONFIG):
    return BatchStream(tasks, batch_size=config.batch_size, num_buckets=config.num_buckets, seed=config.seed,
                       resplit=config.resplit)


def train(learner, tasks, *, steps=CONFIG.steps, valid=None, store=None, every=None, resume=False):
    """``fit`` with the hooks of a run: NaN stop, validation every 4 steps, checkpoints every ``every``."""
    batches = stream(tasks)
    state = None
    if resume:
        state, saved = store.restore(learner.init(jax.random.key(CONFIG.seed)))
        batches.restore(saved["position"])
    hooks = [StopOnNaN(1, checkpoints=store)]
    validate = None if valid is None else Validate({"users": valid}, learner, every=4)
    hooks += [] if validate is None else [validate]
    if store is not None:
        hooks.append(SaveCheckpoints(store, batches, every=every, seed=CONFIG.seed, validation=validate))
    return fit(learner, batches, steps=steps, seed=CONFIG.seed, state=state, hooks=hooks, progress=False)


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def test_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(tmp_path):
    learner, tasks, valid = setup()
    whole = train(learner, tasks, valid=valid)
    half = Checkpoints(tmp_path / "ckpt")
    train(learner, tasks, steps=7, valid=valid, store=half, every=3)
    assert half.latest_step() == 7
    resumed = train(learner, tasks, valid=valid, store=Checkpoints(tmp_path / "ckpt"), every=3, resume=True)
    assert int(resumed.step) == CONFIG.steps
    for a, b in zip(leaves(whole), leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise: same batches, same order, same arithmetic


def test_batch_stream_position_survives_json_and_continues_exactly():
    tasks = random_tasks(30, seed=4)
    config = TrainConfig(batch_size=4, num_buckets=2, resplit=True, seed=3)
    first = stream(tasks, config)
    expected = [next(first) for _ in range(20)]
    second = stream(tasks, config)
    for _ in range(11):  # into the second epoch (8 batches per epoch)
        next(second)
    third = stream(tasks, config)
    third.restore(json.loads(json.dumps(second.position())))
    for want in expected[11:]:
        got = next(third)
        np.testing.assert_array_equal(got.support_x, want.support_x)
        np.testing.assert_array_equal(got.query_y, want.query_y)


def test_validation_keeps_each_methods_best_state_and_adapts_once_per_check():
    learner, tasks, valid = setup()
    calls = {"n": 0}

    def counted(state):
        calls["n"] += 1
        return lambda batch: learner.predict(state, batch)

    validate = Validate({"users": valid, "other": valid}, {"model": counted}, every=4, keep=True)
    log = LogMetrics(every=6)
    fit(learner, stream(tasks), steps=CONFIG.steps, hooks=[log, validate], progress=False)
    assert calls["n"] == 3  # steps 4, 8, 12: one predictor per check, shared by both sets
    curve = validate.curves["model"]["users"]
    assert [step for step, _ in curve] == [4, 8, 12] and curve == validate.curves["model"]["other"]
    best = validate.chosen("users", "model")
    assert round(best.valid_mae, 4) == min(mae for _, mae in curve) and int(best.state.step) == best.step
    assert [r["step"] for r in log.history] == [6, 12] and log.total_users == 12 * CONFIG.batch_size


def test_nan_loss_stops_with_the_step_and_the_last_good_checkpoint(tmp_path):
    learner, tasks, _ = setup()
    calls = {"n": 0}

    def poisoned(state, batch):
        calls["n"] += 1
        state, metrics = learner.step(state, batch)
        if calls["n"] >= 7:  # from step 7 on the parameters and the loss are NaN
            state = state._replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
            metrics = {**metrics, "loss": jnp.nan}
        return state, metrics

    store = Checkpoints(tmp_path / "ckpt")
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 7; stopped \(last good checkpoint: step 5"):
        train(learner._replace(step=poisoned), tasks, store=store, every=5)
    assert store.all_steps() == [5]  # nothing written from the poisoned steps


def test_a_divergence_at_a_save_is_named_with_its_hint_not_refused_by_the_save(tmp_path):
    """The loss is checked every 50 steps, and also at each step the run saves (``also``): a state that went
    non-finite by step 10, a save step, is reported with the last good checkpoint and the hint, before the
    save would refuse it with a bare 'non-finite values'."""
    learner, tasks, _ = setup()
    calls = {"n": 0}

    def poisoned(state, batch):
        calls["n"] += 1
        state, metrics = learner.step(state, batch)
        if calls["n"] >= 7:
            state = state._replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
            metrics = {**metrics, "loss": jnp.nan}
        return state, metrics

    store, batches = Checkpoints(tmp_path / "ckpt"), stream(tasks)
    hooks = [StopOnNaN(50, checkpoints=store, hint="Lower the rates.", also=(None, 5)),
             SaveCheckpoints(store, batches, every=5, seed=CONFIG.seed)]
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 10; stopped \(last good checkpoint: step 5 .*"
                                                 r"Lower the rates"):
        fit(learner._replace(step=poisoned), batches, steps=CONFIG.steps, seed=CONFIG.seed, hooks=hooks,
            progress=False)
    assert store.all_steps() == [5]


def test_checkpoints_refuse_a_non_finite_state(tmp_path):
    store = Checkpoints(tmp_path)
    with pytest.raises(FloatingPointError, match="non-finite"):
        store.save(1, {"w": jnp.array([1.0, jnp.inf])})
    assert store.all_steps() == []


def test_ctrl_c_finishes_the_step_saves_and_resumes_exactly(tmp_path):
    learner, tasks, _ = setup()
    calls = {"n": 0}

    def interrupted(state, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during step 4
        return learner.step(state, batch)

    store = Checkpoints(tmp_path / "ckpt")
    with pytest.raises(TrainingInterrupted) as stop:
        train(learner._replace(step=interrupted), tasks, store=store, every=10)
    assert stop.value.step == 4 and stop.value.saved and store.all_steps() == [4]
    resumed = train(learner, tasks, store=Checkpoints(tmp_path / "ckpt"), every=10, resume=True)
    whole = train(learner, tasks)
    for a, b in zip(leaves(whole), leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ctrl_c_on_a_validation_step_still_validates_it(tmp_path):
    """Ctrl-C during step 4, a step the run validates: the check runs before the save, so the checkpoint at
    step 4 is scored and can be chosen as the best, as in the run that was not interrupted."""
    learner, tasks, valid = setup()
    calls = {"n": 0}

    def interrupted(state, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return learner.step(state, batch)

    store = Checkpoints(tmp_path / "ckpt")
    with pytest.raises(TrainingInterrupted):
        train(learner._replace(step=interrupted), tasks, valid=valid, store=store, every=10)
    assert store.all_steps() == [4] and store.best_step() == 4  # scored: best_step ranks scored steps only
    whole = Checkpoints(tmp_path / "whole")
    train(learner, tasks, steps=4, valid=valid, store=whole, every=10)
    assert store.best_step() == whole.best_step() == 4


KILLER = textwrap.dedent("""
    import sys, numpy as np
    from jaxmeta.checkpoint import Checkpoints
    store = Checkpoints(sys.argv[1])
    big = {"w": np.ones((64, 1024, 1024), np.float32)}  # 256 MiB: a save takes a while
    store.save(1, {"w": np.full(3, 1.0, np.float32)})
    print("saved", flush=True)
    store.save(2, big)
""")


def test_a_kill_during_a_save_leaves_the_last_checkpoint_usable(tmp_path):
    folder = tmp_path / "ckpt"
    child = subprocess.Popen([sys.executable, "-c", KILLER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "saved"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # kill while step 2 is being written (its temporary folder exists)
            if any("tmp" in p.name for p in folder.iterdir()) or (folder / "2").exists():
                break
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    store = Checkpoints(folder)
    assert store.all_steps() == [1], sorted(p.name for p in folder.iterdir())
    state, _ = store.restore({"w": np.zeros(3, np.float32)})
    np.testing.assert_array_equal(state["w"], np.ones(3))


def test_restoring_into_another_model_is_a_clear_error(tmp_path):
    store = Checkpoints(tmp_path)
    store.save(1, {"w": jnp.zeros(3)})
    with pytest.raises(CheckpointError, match="does not fit|other shapes"):
        store.restore({"w": jnp.zeros(4)})
    with pytest.raises(CheckpointError, match="no checkpoint at step 9"):
        store.restore({"w": jnp.zeros(3)}, step=9)


def test_metrics_log_records_and_resumed_clock(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.write("train", 1, loss=0.5, users_per_s=10)
    log.write("valid", 1, loss=0.4, mae=0.3, rmse=0.35)
    with path.open("a") as f:
        f.write('{"kind": "train", "st')  # a half-written line after a crash
    records = [json.loads(line) for line in path.read_text().splitlines()[:2]]
    assert [r["kind"] for r in records] == ["train", "valid"] and records[1]["mae"] == 0.3
    assert all(r["wall_time"] >= 0 for r in records)
    resumed = MetricsLog(path, offset=MetricsLog.last_wall_time(path) + 100)
    assert resumed.write("train", 2, loss=0.1)["wall_time"] >= 100


def test_config_files_toml_and_yaml(tmp_path):
    (tmp_path / "a.toml").write_text('algo = "fomaml"\nsteps = 7\nhidden = [4, 4]\n')
    (tmp_path / "b.yaml").write_text("algo: anil\ninner_lr: 0.2\n")
    assert load_config(tmp_path / "a.toml") == {"algo": "fomaml", "steps": 7, "hidden": [4, 4]}
    assert load_config(tmp_path / "b.yaml") == {"algo": "anil", "inner_lr": 0.2}
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ValueError, match="must end in .toml, .yaml or .yml"):
        load_config(tmp_path / "c.json")
    (tmp_path / "d.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="a table of settings"):
        load_config(tmp_path / "d.yaml")
    (tmp_path / "e.toml").write_text("steps = = 3\n")
    with pytest.raises(ValueError, match="cannot parse it"):
        load_config(tmp_path / "e.toml")


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """One 20-step run on the built-in data (from a config file and a flag), shared by the module's tests."""
    folder = tmp_path_factory.mktemp("synthetic")
    (folder / "job.toml").write_text("steps = 30\neval_every = 10\ncheckpoint_every = 10\nbatch_size = 16\n"
                                     "num_buckets = 1\n")
    first = jaxmeta("train", "--config", folder / "job.toml", "--steps", "20", "--out", folder / "run", "--quiet")
    assert first.returncode == 0, first.stderr
    return folder


@pytest.mark.slow  # tests/test_run_folders.py covers resume, eval and plot in the default suite
def test_train_resume_eval_and_plot_commands(synthetic_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(synthetic_run / "run", run)
    config = synthetic_run / "job.toml"
    assert "steps: 20" in (run / "config.yaml").read_text()  # the flag overrode the file
    resumed = jaxmeta("train", "--config", config, "--out", run, "--resume", "--quiet", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["algo"] == "maml"
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 30
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in records if r["kind"] == "valid"} == {10, 20, 30}
    other = jaxmeta("train", "--config", config, "--out", run, "--resume", "--inner-lr", "0.5", "--quiet")
    assert other.returncode == 2 and "inner_lr=0.5" in other.stderr and "Traceback" not in other.stderr
    evaluated = jaxmeta("eval", "--run", run, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    last = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert set(last) == {"user_cold"} and {"mae", "rmse", "ndcg@3"} <= set(last["user_cold"])
    curve = json.loads((run / "adaptation.json").read_text())
    assert len(curve["curves"]) == 2 and all(len(v) == len(curve["inner_steps"]) for v in curve["curves"].values())
    pytest.importorskip("matplotlib")
    plotted = jaxmeta("plot", "--run", run)
    assert plotted.returncode == 0, plotted.stderr
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["adaptation.png", "learning_curves.png",
                                                                  "scenarios.png"]


@pytest.mark.slow  # tests/test_cli.py runs the console script in the default suite
def test_the_console_script_runs_in_its_own_process(synthetic_run):
    exe = Path(sys.executable).with_name("jaxmeta")
    out = subprocess.run([str(exe), "eval", "--run", str(synthetic_run / "nowhere")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and "not a run folder" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--resume", "--steps", "5"], "--resume needs --out"),
        (["train", "--config", "missing.toml"], "missing.toml: no such config file"),
        (["train", "--steps", "0"], "steps=0"),
        (["train", "--eval-every", "0"], "eval_every=0"),
        (["eval", "--run", "nowhere"], "nowhere: not a run folder"),
        (["plot", "--run", "nowhere"], "nowhere"),
    ],
)
def test_bad_input_gives_one_line(tmp_path, args, message):
    out = jaxmeta(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow  # a MovieLens run: pytest -m slow
def test_recommend_and_describe_on_movielens_100k(tmp_path):
    from conftest import real

    folder = real("ml-100k")
    run = tmp_path / "run"
    trained = jaxmeta("train", "--data", "ml-100k", "--data-dir", str(folder.parent), "--steps", "10",
                      "--eval-every", "10", "--out", str(run), "--quiet")
    assert trained.returncode == 0, trained.stderr
    (tmp_path / "me.csv").write_text("user,item,rating\n1,1,5\n1,50,5\n1,100,4\n1,181,1\n")
    shown = jaxmeta("recommend", "--run", str(run), "--ratings", str(tmp_path / "me.csv"), "-k", "3")
    assert shown.returncode == 0, shown.stderr
    rows = shown.stdout.strip().splitlines()
    assert rows[0].split() == ["user", "rank", "item", "score", "title"] and len(rows) == 4
    assert not {"1", "50", "100", "181"} & {r.split()[2] for r in rows[1:]}  # rated items are not recommended
    (tmp_path / "bad.csv").write_text("who,what\n1,2\n")
    bad = jaxmeta("recommend", "--run", str(run), "--ratings", str(tmp_path / "bad.csv"))
    assert bad.returncode == 2 and "missing column(s)" in bad.stderr
    described = jaxmeta("data", "describe", str(folder))
    assert described.returncode == 0 and "943" in described.stdout and "users kept" in described.stdout

    # A new user, unknown to the run, with five ratings: ten titled movies, with and without features
    from jaxmeta.data.movielens import load_ml100k_items

    titles = dict(zip(*load_ml100k_items(folder)[["item", "title"]].to_numpy().T))
    (tmp_path / "new.csv").write_text("user,item,rating\nnewcomer,1,5\nnewcomer,50,5\nnewcomer,100,4\n"
                                      "newcomer,181,1\nnewcomer,258,2\n")
    (tmp_path / "features.csv").write_text("user,gender,age,occupation,zip\nnewcomer,F,31,writer,02139\n")
    shown = {}
    for name, extra in [("plain", []), ("flags", ["--gender", "F", "--age", "31", "--occupation", "writer"]),
                        ("file", ["--user-features", str(tmp_path / "features.csv")]),
                        ("file and a flag", ["--user-features", str(tmp_path / "features.csv"), "--age", "31"])]:
        out = jaxmeta("recommend", "--run", str(run), "--ratings", str(tmp_path / "new.csv"), *extra)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert lines[0].split()[:5] == ["user", "rank", "item", "score", "title"] and len(lines) == 11
        items = [int(line.split()[2]) for line in lines[1:]]
        assert all(line.split()[0] == "newcomer" for line in lines[1:])
        assert all(titles[i] in line for i, line in zip(items, lines[1:]))  # each row shows its movie's title
        assert not {1, 50, 100, 181, 258} & set(items)
        shown[name] = out.stdout
    assert shown["flags"] != shown["plain"] and shown["file"] != shown["plain"]  # the features count
    assert shown["file and a flag"] == shown["file"]  # the flag sets the file's own value: one row, merged


@pytest.mark.slow  # tests/test_bad_input.py trains, evaluates and serves a table run in the default suite
def test_train_and_eval_on_any_ratings_table(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(u, int(i), int(rng.integers(1, 6)), 1000 * u + int(i))
            for u in range(240) for i in rng.choice(120, size=int(rng.integers(14, 40)), replace=False)]
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating,timestamp\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    run = tmp_path / "run"
    trained = jaxmeta("train", "--data", "table", "--path", str(path), "--steps", "6", "--eval-every", "3",
                      "--num-buckets", "1", "--out", str(run), "--quiet")
    assert trained.returncode == 0, trained.stderr
    assert "(table, user_cold)" in trained.stdout
    evaluated = jaxmeta("eval", "--run", str(run), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    scores = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert set(scores) <= {"warm", "user_cold", "item_cold", "user_item_cold"} and "user_cold" in scores
    missing = jaxmeta("train", "--data", "table", "--quiet")
    assert missing.returncode == 2 and "--data table --path FILE" in missing.stderr


@pytest.mark.slow  # biased MF through the command line; tests/test_recsys_models.py checks MF in the default suite
def test_model_flag_trains_serves_and_guards_resume(tmp_path):
    rng = np.random.default_rng(1)
    rows = [(u, int(i), int(rng.integers(1, 6))) for u in range(200) for i in rng.choice(80, size=int(rng.integers(14, 30)),
                                                                                         replace=False)]
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    run = tmp_path / "run"
    trained = jaxmeta("train", "--data", "table", "--path", str(path), "--model", "mf", "--embed-dim", "4",
                      "--steps", "4", "--eval-every", "2", "--num-buckets", "1", "--out", str(run), "--quiet")
    assert trained.returncode == 0, trained.stderr
    saved = load_config(run / "config.yaml")
    assert saved["model"] == "mf" and saved["embed_dim"] == 4 and saved["hidden"] is None
    restored = restore_run(run)
    data, state = restored.data, restored.state
    warm = {int(i) for xs in (data.train.support_x, data.train.query_x) for x in xs for i in x["item_id"]}
    assert 40 < len(warm) < 80  # the cold items (a random 20%) are not among them
    assert state.params["items"]["vectors"].shape == (1 + len(warm), 4)  # biased MF: the OOV row and the warm items
    (tmp_path / "me.csv").write_text("user,item,rating\nme,3,5\nme,4,1\nme,7,4\n")
    shown = jaxmeta("recommend", "--run", str(run), "--ratings", str(tmp_path / "me.csv"), "-k", "5")
    assert shown.returncode == 0, shown.stderr
    items = [r.split()[2] for r in shown.stdout.strip().splitlines()[1:]]
    assert len(items) == 5 and not {"3", "4", "7"} & set(items)
    other = jaxmeta("train", "--model", "melu", "--steps", "6", "--out", str(run), "--resume", "--quiet")
    assert other.returncode == 2 and "--resume with model='melu', but the run was made with model='mf'" in other.stderr
    resumed = jaxmeta("train", "--data", "table", "--path", str(path), "--model", "mf", "--embed-dim", "4",
                      "--steps", "6", "--eval-every", "2", "--num-buckets", "1", "--out", str(run), "--resume",
                      "--quiet")
    assert resumed.returncode == 0, resumed.stderr


HYBRID_RUN = ("--model", "hybrid", "--algo", "ridge", "--embed-dim", "4", "--hidden", "8", "--factors", "3",
              "--known-min-ratings", "30", "--eval-every", "2", "--num-buckets", "1", "--quiet")


def _hybrid_table(tmp_path: Path) -> tuple[list[tuple[int, int, int]], Path]:
    """Whole-star ratings of 150 users, 14 to 23 each on 60 common items and a few on 10 rare ones, and the CSV
    table holding them."""
    rng = np.random.default_rng(2)
    rows = [(u, int(i), int(rng.integers(1, 6))) for u in range(150) for i in rng.choice(60, size=int(rng.integers(14, 24)),
                                                                                         replace=False)]
    rows += [(u, int(rng.integers(60, 70)), int(rng.integers(1, 6))) for u in range(150) if rng.random() < 0.3]  # rare items
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return rows, path


def test_hybrid_model_trains_under_ridge_and_serves(tmp_path):
    """``--model hybrid`` (hybrid MeLU: an id row for each item with ``--known-min-ratings`` or more training
    ratings, the rest scored from features) trains under ``ridge`` and serves through ``recommend``; its sizes
    are saved, and a resume that changes them is refused, also for a run whose file predates them; string
    ids are refused."""
    rows, path = _hybrid_table(tmp_path)
    run = tmp_path / "run"
    trained = jaxmeta("train", "--data", "table", "--path", str(path), *HYBRID_RUN, "--steps", "4", "--out", str(run))
    assert trained.returncode == 0, trained.stderr
    saved = load_config(run / "config.yaml")
    assert (saved["model"], saved["factors"], saved["known_min_ratings"]) == ("hybrid", 3, 30)
    restored = restore_run(run)
    counts = restored.data.warm_ratings["item"].value_counts()
    known = int((counts >= 30).sum())
    assert 0 < known < int((counts >= 10).sum()) < len(counts)  # 30, not the default 10, chose the id rows
    assert restored.state.params["items"]["vectors"].shape == (1 + known, 3)  # the OOV row first
    (tmp_path / "me.csv").write_text("user,item,rating\nme,3,5\nme,4,1\nme,7,4\n")
    shown = jaxmeta("recommend", "--run", str(run), "--ratings", str(tmp_path / "me.csv"), "-k", "5")
    assert shown.returncode == 0, shown.stderr
    items = [r.split()[2] for r in shown.stdout.strip().splitlines()[1:]]
    assert len(items) == 5 and not {"3", "4", "7"} & set(items)
    resumed = jaxmeta("train", "--out", str(run), "--resume", "--steps", "6", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    changed = jaxmeta("train", "--out", str(run), "--resume", "--steps", "8", "--factors", "8", "--quiet")
    assert changed.returncode == 2 and "--resume with factors=8, but the run was made with factors=3" in changed.stderr
    # a file from before the fields: they read as the values of that time (16, 10), and the run is left alone
    old = "".join(line for line in (run / "config.yaml").read_text().splitlines(keepends=True)
                  if not line.startswith(("factors:", "known_min_ratings:")))
    (run / "config.yaml").write_text(old)
    changed = jaxmeta("train", "--out", str(run), "--resume", "--steps", "8", "--factors", "3", "--quiet")
    assert changed.returncode == 2 and "--resume with factors=3, but the run was made with factors=16" in changed.stderr
    assert (run / "config.yaml").read_text() == old
    named = tmp_path / "named.csv"
    named.write_text("user,item,rating\n" + "\n".join(f"{u},m{i},{r}" for u, i, r in rows) + "\n")
    refused = jaxmeta("train", "--data", "table", "--path", str(named), "--model", "hybrid", "--steps", "2", "--quiet")
    assert refused.returncode == 2 and "model='hybrid' reads integer item ids" in refused.stderr


@pytest.mark.slow  # one more compiled training; the library tests of the vectors run in the default suite
def test_free_implicit_vectors_are_rebuilt_from_the_saved_config(tmp_path):
    """``--implicit-prior --implicit-vectors``: the table is built from the saved config on restore, one row per
    id row, one column per head coordinate."""
    _, path = _hybrid_table(tmp_path)
    free = tmp_path / "free"
    trained = jaxmeta("train", "--data", "table", "--path", str(path), *HYBRID_RUN, "--steps", "2", "--implicit-prior",
                      "--implicit-vectors", "--out", str(free))
    assert trained.returncode == 0, trained.stderr
    restored = restore_run(free)
    counts = restored.data.warm_ratings["item"].value_counts()
    known = int((counts >= 30).sum())
    assert 0 < known < len(counts)
    assert restored.config.implicit_vectors and restored.model.implicit is not None
    assert restored.state.params["implicit"].shape == (1 + known, 4) and set(restored.state.hyper) == {"log_reg",
                                                                                                       "implicit"}


def test_a_run_with_a_rating_scale_resumes(tmp_path):
    """config.yaml keeps the scale as a list; the resume check compares it with the flags' tuple as equal. Its
    whole stars are a discrete scale: eval decodes them (the synthetic data's eval does not)."""
    rng = np.random.default_rng(3)
    rows = [(u, int(i), int(rng.integers(1, 6))) for u in range(120) for i in rng.choice(50, size=16, replace=False)]
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    common = ("train", "--data", "table", "--path", str(path), "--rating-scale", "1", "5", "--embed-dim", "4",
              "--hidden", "8", "--eval-every", "2", "--num-buckets", "1", "--out", str(tmp_path / "run"), "--quiet")
    first = jaxmeta(*common, "--steps", "2")
    assert first.returncode == 0, first.stderr
    resumed = jaxmeta(*common, "--steps", "4", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    other = jaxmeta(*common[:5], "--rating-scale", "0", "5", *common[8:], "--steps", "6", "--resume")
    assert other.returncode == 2 and "rating_scale=[0.0, 5.0], but the run was made with rating_scale=[1.0, 5.0]" \
        in other.stderr
    # whole stars: eval decodes each method's predictions by cut points fitted on the validation users
    from jaxmeta.decoding import fit_cut_points
    from jaxmeta.evaluation import evaluation_batches, predict_tasks, query_metrics
    from jaxmeta.job import baseline_learners
    from jaxmeta.runs import EVAL_BATCH, evaluate_run, format_eval

    run = tmp_path / "run"
    scored = evaluate_run(run)
    meta = restore_run(run)
    base = restore_run(run, which="latest", name="baseline", data=meta.data)
    glob, tune = baseline_learners(meta.config, meta.model)
    valid, *scenarios = evaluation_batches([meta.data.valid["users"], *meta.data.scenarios.values()], EVAL_BATCH)
    new_users = scenarios[list(meta.data.scenarios).index("user_cold")]
    written = json.loads((run / "eval.json").read_text())["user_cold"]
    for method, learner, state in ((meta.config.algo, meta.learner, meta.state), ("no_adaptation", glob, base.state),
                                   ("finetune", tune, base.state)):
        on_valid, valid_queries = predict_tasks(lambda b, lrn=learner, st=state: lrn.predict(st, b), valid)
        decode = fit_cut_points(on_valid, valid_queries.query_y, valid_queries.query_mask)
        predictions, queries = predict_tasks(lambda b, lrn=learner, st=state: lrn.predict(st, b), new_users)
        want = query_metrics(decode(predictions), queries, ks=())["mae"]
        assert scored.results["user_cold"][method]["mae_decoded"] == pytest.approx(want, abs=1e-6), method
        assert written[method]["mae_decoded"] == pytest.approx(want, abs=1e-6), method
    assert "mae_decoded" in format_eval(scored.results).splitlines()[1]


def test_an_unknown_scenario_names_the_ones_there(tmp_path):
    out = jaxmeta("train", "--steps", "2", "--scenario", "item_cold", "--quiet", cwd=tmp_path)
    assert out.returncode == 2 and "['user_cold']" in out.stderr and "scenario='item_cold'" in out.stderr


@pytest.mark.slow  # tests/test_kernels.py checks the kernel against XLA in the default suite
@pytest.mark.parametrize("algo", ["fomaml", "reptile"])
def test_the_kernel_backend_trains_like_xla(algo):
    from jaxmeta.data import datasets

    config = TrainConfig(algo=algo, batch_size=8)
    data = datasets.synthetic(num_train_users=9, num_new_users=2, seed=0)
    model, batch = make_model(config, data), pad_tasks(data.train)
    states, losses = {}, {}
    for backend in ("xla", "pallas"):
        learner = make_learner(dataclasses.replace(config, backend=backend), model)
        state = learner.init(jax.random.key(0))
        for _ in range(2):
            state, metrics = learner.step(state, batch)
        states[backend], losses[backend] = state, float(metrics["loss"])
    assert abs(losses["pallas"] - losses["xla"]) < 1e-5
    for a, b in zip(jax.tree.leaves(states["pallas"].params), jax.tree.leaves(states["xla"].params)):
        # Adam's early steps move a weight by about the rate whatever its gradient's size, so the float32
        # rounding of a near-zero gradient shows up at ~1e-5 after two steps of rate 3e-3
        assert jnp.allclose(a, b, atol=1e-4)
