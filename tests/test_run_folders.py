"""Run folders are never lost: refusals leave them byte-identical, one writer at a time, resume keeps
everything (the best checkpoint through kills, the saved steps, no duplicated records), no stale plots."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_bad_input import RUN_SETTINGS, jaxmeta

from jaxmeta.checkpoint import CheckpointError
from jaxmeta.cli import main
from jaxmeta.job import TrainConfig, read_config, save_config
from jaxmeta.rundir import RunLock, RunLocked, clear, prepare

EXE = str(Path(sys.executable).with_name("jaxmeta"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_rerun_without_resume_refuses_and_leaves_the_run_byte_identical(trained, tmp_path):
    before = snapshot(trained)
    again = jaxmeta("train", "--out", trained, *RUN_SETTINGS)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert snapshot(trained) == before


def test_overwrite_replaces_the_run_and_keeps_other_files(trained, tmp_path):

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "notes.txt").write_text("mine")
    done = jaxmeta("train", "--out", run, "--overwrite", *RUN_SETTINGS, "--steps", "2")
    assert done.returncode == 0, done.stderr
    assert max(r["step"] for r in records(run)) == 2  # only the new run's records
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    assert (run / "notes.txt").read_text() == "mine" and not (run / ".lock").exists()


def test_an_overwrite_that_cannot_start_leaves_the_old_run_in_place(trained, tmp_path, capsys):
    """The new run's settings are checked (data, scenario, devices) before anything of the old run is deleted;
    a resume refused late leaves the saved settings as they were."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = snapshot(run)
    for bad in (["--scenario", "nosuch"], ["--devices", "5"]):
        assert main(["train", "--out", str(run), "--overwrite", *map(str, RUN_SETTINGS), *bad]) == 2
        assert snapshot(run) == before, bad
    assert main(["train", "--out", str(run), "--resume", "--steps", "6", "--devices", "5", "--quiet"]) == 2
    assert "devices=5" in capsys.readouterr().err and snapshot(run) == before


def test_a_resume_refused_by_its_checkpoint_leaves_the_settings_unsaved(trained, tmp_path, monkeypatch, capsys):
    """The data's fingerprint is checked against the checkpoint inside training: config.yaml is written only
    after that check, so a refused resume with --steps 6 leaves steps: 4 saved."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "config.yaml").read_text()
    monkeypatch.setattr("jaxmeta.runs.data_fingerprint", lambda data: {"changed": True})
    assert main(["train", "--out", str(run), "--resume", "--steps", "6", "--quiet"]) == 2
    assert "differ from those the run was trained on" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == before


def test_a_lock_whose_write_fails_is_not_kept_and_an_interrupted_clear_keeps_the_config(trained, tmp_path,
                                                                                        monkeypatch):
    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        RunLock(tmp_path).acquire()
    monkeypatch.undo()
    with RunLock(tmp_path, notice=lambda m: None):  # the failed taker let go of it
        pass
    run = tmp_path / "run"
    shutil.copytree(trained, run)

    def killed(path, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        clear(run)
    monkeypatch.undo()
    assert read_config(run) == read_config(trained)  # still a run that --overwrite may replace
    assert prepare(run, resume=False, overwrite=True) is True


def test_overwrite_replaces_only_a_folder_whose_config_is_a_jaxmeta_runs(tmp_path, capsys):
    """Files that merely share a run's names (checkpoints/, result.json), with no config.yaml or another tool's,
    are never deleted by --overwrite."""
    for name, config in (("no-config", None), ("other-tool", "lr: 0.1\nnet: resnet50\n"), ("damaged", "steps: [\n")):
        folder = tmp_path / name
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "model.pt").write_text("weights")
        (folder / "result.json").write_text("{}")
        if config is not None:
            (folder / "config.yaml").write_text(config)
        before = snapshot(folder)
        assert main(["train", "--out", str(folder), "--overwrite", *map(str, RUN_SETTINGS)]) == 2
        assert "--overwrite replaces a jaxmeta run" in capsys.readouterr().err and snapshot(folder) == before


def test_the_config_is_written_whole_or_not_at_all_and_a_damaged_one_is_one_line(trained, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "config.yaml").read_text()

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        save_config(TrainConfig(steps=99), run / "config.yaml")
    monkeypatch.undo()
    assert (run / "config.yaml").read_text() == before and sorted(p.name for p in run.glob(".config*")) == []
    for damaged in ("", "steps: [\n", "- 1\n- 2\n", "stepz: 3\n"):
        (run / "config.yaml").write_text(damaged)
        with pytest.raises(CheckpointError, match="config.yaml is damaged .*cannot be read"):
            read_config(run)


def test_seeds_and_table_lists_out_of_range_are_refused_naming_them():
    for fields, message in (({"seed": -1}, "seed=-1: pass a whole number from 0"),
                            ({"data_seed": 10**20}, "data_seed=100000000000000000000: pass a whole number"),
                            ({"shard_tables": 5}, "shard_tables=5: pass 'all' or a list of table names")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**fields)


def test_an_empty_lock_file_is_taken_and_a_lock_is_the_systems_not_the_files(tmp_path):
    """A lock file left empty (a kill between its creation and its content) does not block the run; a lock
    held by a live process is refused whatever its file says."""
    (tmp_path / ".lock").write_text("")
    with RunLock(tmp_path, notice=lambda m: None):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from jaxmeta.rundir import RunLock\n"
        f"lock = RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (tmp_path / ".lock").write_text("")  # its content lost: the system's lock still holds
        with pytest.raises(RunLocked, match="is in use by another process"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path, notice=lambda m: None):  # the holder is gone: taken
        pass


def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    notices = []
    with RunLock(tmp_path, notice=notices.append):
        with pytest.raises(RunLocked, match=f"in use by process {os.getpid()} on "):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": gone.pid, "host": os.uname().nodename, "since": "then"}))
    with RunLock(tmp_path, notice=notices.append):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert len(notices) == 1 and f"taking over the lock of process {gone.pid}, which is gone" in notices[0]


def test_resume_without_steps_finishes_at_the_saved_steps_with_no_duplicate_records(trained, tmp_path):

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    full = records(trained)
    shutil.rmtree(run / "checkpoints" / "4")  # as if killed after step 3: the last checkpoint is step 2
    shutil.rmtree(run / "baseline")
    resumed = jaxmeta("train", "--out", run, "--resume", "--quiet", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert "steps: 4" in (run / "config.yaml").read_text()
    result = json.loads(resumed.stdout.strip().splitlines()[-1])  # --json: the last line
    assert set(result) == {"algo", "query_mse", "new_users", "seconds", "devices", "processes"}
    assert f"{result['query_mse']['after']:9.4f}" in resumed.stdout  # the table shows the same numbers
    assert max(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == 4
    again = records(run)
    keys = [(r["kind"], r["step"]) for r in again]
    assert len(keys) == len(set(keys)) and keys == [(r["kind"], r["step"]) for r in full]
    # the retaken steps give the records of the uninterrupted run (the clock aside)
    for a, b in zip(again, full):
        assert {k: v for k, v in a.items() if k not in ("wall_time", "users_per_s")} == pytest.approx(
            {k: v for k, v in b.items() if k not in ("wall_time", "users_per_s")})


def test_eval_says_its_step_and_plot_never_shows_stale_figures(trained, tmp_path):

    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    skipped = jaxmeta("plot", "--run", run, "--no-eval")  # before any eval: says what it skipped
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped adaptation.png, scenarios.png (the run has no evaluation files yet" in skipped.stderr
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["learning_curves.png"]
    evaluated = jaxmeta("eval", "--run", run, "--checkpoint", "latest")
    assert evaluated.returncode == 0 and "checkpoint step 4 (the latest; the run's latest: 4)" in evaluated.stdout
    # the built-in ratings are continuous: nothing to decode onto, so no decoded MAE (a dash in the table)
    assert all(m["mae_decoded"] is None for s in json.loads((run / "eval.json").read_text()).values()
               for m in s.values())
    assert "mae_decoded" in evaluated.stdout and evaluated.stdout.count("–") >= 3
    resumed = jaxmeta("train", "--out", run, "--resume", "--steps", "6", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    plotted = jaxmeta("plot", "--run", run)  # eval.json scored step 4 of a run now at step 6: made again
    assert plotted.returncode == 0, plotted.stderr
    assert "made at step 4; the run is now at step 6; evaluating the run first" in plotted.stderr
    assert json.loads((run / "adaptation.json").read_text())["run_step"] == 6
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["adaptation.png", "learning_curves.png",
                                                                  "scenarios.png"]


# ----------------------------------------------------------------------------- real processes (slow)

KILL_SETTINGS = ("--steps", "60", "--eval-every", "5", "--checkpoint-every", "10", "--batch-size", "8",
                 "--num-buckets", "1", "--keep-last", "1", "--quiet")


def _train(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([EXE, "train", "--out", str(out), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _steps_logged(run: Path) -> int:
    try:
        return max((json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
                    if line.strip()), default=0)
    except (OSError, ValueError, KeyError):
        return 0


def _eval(run: Path) -> tuple[str, dict]:
    done = subprocess.run([EXE, "eval", "--run", str(run), "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    return lines[0], json.loads(lines[-1])


@pytest.mark.slow  # five training processes
def test_resume_after_three_kills_evaluates_like_the_uninterrupted_run(tmp_path):
    whole = _train(tmp_path / "whole", *KILL_SETTINGS)
    assert whole.wait(timeout=600) == 0, whole.stderr.read()
    run, rng = tmp_path / "killed", np.random.default_rng(0)
    first = True
    for target in sorted(rng.choice(np.arange(8, 52), size=3, replace=False)):
        process = _train(run, *KILL_SETTINGS) if first else _train(run, "--resume", "--quiet")
        first = False
        deadline = time.monotonic() + 600
        while _steps_logged(run) < target and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read()
        process.send_signal(signal.SIGKILL)
        process.wait()
    last = _train(run, "--resume", "--quiet")  # no --steps: the saved 60
    assert last.wait(timeout=600) == 0, last.stderr.read()
    assert json.loads((run / "result.json").read_text())["config"]["steps"] == 60
    said, scores = _eval(run)
    said_whole, scores_whole = _eval(tmp_path / "whole")
    assert said.split("checkpoint step")[1] == said_whole.split("checkpoint step")[1]
    assert scores == scores_whole


@pytest.mark.slow  # two training processes at once
def test_two_writers_at_once_one_refuses(tmp_path):
    settings = ("--steps", "30", "--batch-size", "8", "--num-buckets", "1", "--quiet")
    a, b = _train(tmp_path / "run", *settings), _train(tmp_path / "run", *settings)
    codes = sorted([a.wait(timeout=600), b.wait(timeout=600)])
    errors = a.stderr.read() + b.stderr.read()
    assert codes == [0, 2], errors
    assert "is in use by process" in errors or "holds a run; pass --resume" in errors
    assert json.loads((tmp_path / "run" / "result.json").read_text())["config"]["steps"] == 30


@pytest.mark.slow  # its own process: what orbax leaves behind prints at exit, which only a process shows
def test_a_damaged_checkpoint_is_one_line_in_a_real_process_and_resume_falls_back(trained, tmp_path):

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    data = run / "checkpoints" / "4" / "state" / "ocdbt.process_0" / "d"
    biggest = max(data.iterdir(), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    done = subprocess.run([EXE, "eval", "--run", str(run), "--checkpoint", "latest"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[:2500] + "\n[...]\n" + done.stderr[-1500:]
    assert "the checkpoint of step 4 is damaged" in done.stderr and "--checkpoint 2" in done.stderr
    resumed = subprocess.run([EXE, "train", "--out", str(run), "--resume", "--steps", "6", "--quiet"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint step 4 is damaged" in resumed.stderr and "resuming from step 2" in resumed.stderr
