"""Every bad input a careless user gives: one line naming the file, row or flag, exit status 2.

One table (:data:`CASES`) of cases, each run in this process through ``cli.main``
against a small trained run or files made for the case. Each case asserts the
exit status, that stderr holds exactly one line (no traceback), and the text
that line must name. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import RUN_SETTINGS, jaxmeta

from jaxmeta import cli


def ratings_csv(path: Path, *, users: int = 120, bad: dict[int, str] | None = None, seed: int = 0) -> Path:
    """A 1-5 star table of ``users`` users; ``bad``: {data row: rating text} replaced (row 0 is file line 2)."""
    rng = np.random.default_rng(seed)
    rows = [[u, int(i), int(rng.integers(1, 6))] for u in range(users)
            for i in rng.choice(60, size=int(rng.integers(14, 30)), replace=False)]
    lines = [",".join(map(str, r)) for r in rows]
    for row, text in (bad or {}).items():
        user, item, _ = lines[row].split(",")
        lines[row] = f"{user},{item},{text}"
    path.write_text("user,item,rating\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> Path:
    """A 2-step run on a ratings table (a run that recommend can serve)."""
    folder = tmp_path_factory.mktemp("table")
    path = ratings_csv(folder / "ratings.csv")
    done = jaxmeta("train", "--data", "table", "--path", path, "--out", folder / "run", "--embed-dim", "4",
                   "--hidden", "8", *RUN_SETTINGS[2:], "--steps", "2")
    assert done.returncode == 0, done.stderr
    return folder / "run"


def copy_run(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def step_files(run: Path, step: int) -> list[Path]:
    """The files of a checkpoint step, largest first."""
    files = [p for p in (run / "checkpoints" / str(step)).rglob("*") if p.is_file()]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def data_file(run: Path, step: int) -> Path:
    """The biggest file holding the state's arrays (not orbax's JSON metadata)."""
    return next(p for p in step_files(run, step) if "state" in p.parts and not p.name.startswith("_"))


# ----------------------------------------------------------------------------- the cases
# Each case: (id, setup(tmp_path, trained, table_run) -> argv, what the one line must say)


def _existing_run(tmp, run, table):
    return ["train", "--out", copy_run(run, tmp), *RUN_SETTINGS]


def _out_is_a_file(tmp, run, table):
    (tmp / "file").write_text("x")
    return ["train", "--out", tmp / "file", *RUN_SETTINGS]


def _not_a_run(tmp, run, table):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("mine")
    return ["train", "--out", tmp / "mine", "--overwrite", *RUN_SETTINGS]


def _locked(tmp, run, table):
    folder = copy_run(run, tmp)
    (folder / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename, "since": "now"}))
    return ["train", "--out", folder, "--resume", "--quiet"]


def _resume_and_overwrite(tmp, run, table):
    return ["train", "--out", copy_run(run, tmp), "--resume", "--overwrite", "--quiet"]


def _resume_fewer_steps(tmp, run, table):
    return ["train", "--out", copy_run(run, tmp), "--resume", "--steps", "1", "--quiet"]


def _resume_no_checkpoints(tmp, run, table):
    folder = copy_run(run, tmp)
    shutil.rmtree(folder / "checkpoints")
    return ["train", "--out", folder, "--resume", "--quiet"]


def _resume_other_seed(tmp, run, table):
    return ["train", "--out", copy_run(run, tmp), "--resume", "--seed", "7", "--quiet"]


def _eval_other_seed(tmp, run, table):
    folder = copy_run(run, tmp)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "seed": 7}))
    return ["eval", "--run", folder]


def _eval_other_data(tmp, run, table):
    folder = copy_run(table, tmp)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    other = ratings_csv(tmp / "other.csv", seed=1)
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "path": str(other)}))
    return ["eval", "--run", folder]


def _eval_first(tmp, run, table):
    return ["eval", "--run", run, "--checkpoint", "first"]


def _eval_missing_step(tmp, run, table):
    return ["eval", "--run", run, "--checkpoint", "3"]


def _truncated(tmp, run, table):
    folder = copy_run(run, tmp)
    target = data_file(folder, 4)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    return ["eval", "--run", folder, "--checkpoint", "latest"]


def _flipped(tmp, run, table):
    folder = copy_run(run, tmp)
    target = data_file(folder, 4)
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    return ["eval", "--run", folder, "--checkpoint", "latest"]


def _no_metadata(tmp, run, table):
    folder = copy_run(run, tmp)
    for path in (folder / "checkpoints" / "4").rglob("_METADATA"):
        path.unlink()
    return ["eval", "--run", folder, "--checkpoint", "latest"]


def _config_type(tmp, run, table):
    (tmp / "job.yaml").write_text("steps: twenty\n")
    return ["train", "--config", tmp / "job.yaml", "--quiet"]


def _config_list(tmp, run, table):
    (tmp / "job.toml").write_text("hidden = ['wide']\n")
    return ["train", "--config", tmp / "job.toml", "--quiet"]


def _bad_scale_flag(tmp, run, table):
    return ["train", "--rating-scale", "5", "1", "--quiet"]


def _table(bad: dict[int, str]):
    def setup(tmp, run, table):
        return ["train", "--data", "table", "--path", ratings_csv(tmp / "r.csv", bad=bad), "--quiet", "--steps", "1"]
    return setup


def _describe(bad: dict[int, str]):
    def setup(tmp, run, table):
        return ["data", "describe", ratings_csv(tmp / "r.csv", bad=bad)]
    return setup


def _empty_table(tmp, run, table):
    (tmp / "r.csv").write_text("")
    return ["train", "--data", "table", "--path", tmp / "r.csv", "--quiet"]


def _header_only(tmp, run, table):
    (tmp / "r.csv").write_text("user,item,rating\n")
    return ["train", "--data", "table", "--path", tmp / "r.csv", "--quiet"]


def _table_is_a_folder(tmp, run, table):
    (tmp / "r.csv").mkdir()
    return ["train", "--data", "table", "--path", tmp / "r.csv", "--quiet"]


def _recommend(rating: str):
    def setup(tmp, run, table):
        (tmp / "me.csv").write_text(f"user,item,rating\nnew,1,4\nnew,2,{rating}\nnew,3,5\n")
        return ["recommend", "--run", table, "--ratings", tmp / "me.csv"]
    return setup


def _recommend_synthetic(tmp, run, table):
    (tmp / "me.csv").write_text("user,item,rating\n1,1,5\n")
    return ["recommend", "--run", run, "--ratings", tmp / "me.csv"]


def _recommend_empty(tmp, run, table):
    (tmp / "me.csv").write_text("")
    return ["recommend", "--run", table, "--ratings", tmp / "me.csv"]


CASES: list[tuple[str, Callable, str]] = [
    ("run there, no --resume", _existing_run, "holds a run; pass --resume to continue it, --overwrite"),
    ("--out is a file", _out_is_a_file, "a file is there; pass a folder"),
    ("--out holds other files", _not_a_run, "is not empty and holds no run (notes.txt)"),
    ("another writer", _locked, "is in use by process"),
    ("--resume --overwrite", _resume_and_overwrite, "--resume and --overwrite: pass one"),
    ("--resume, fewer steps", _resume_fewer_steps, "--steps 1: the run in"),
    ("--resume, checkpoints gone", _resume_no_checkpoints, "holds no checkpoint to resume from"),
    ("--resume, another seed", _resume_other_seed, "--resume with seed=7, but the run was made with seed=0"),
    ("eval, another seed", _eval_other_seed, "saved by a run with seed=0, but this run has seed=7"),
    ("eval, other data", _eval_other_data, "differ from those the run was trained on"),
    ("eval --checkpoint first", _eval_first, "--checkpoint 'first': pass 'best', 'latest' or a saved step (2, 4)"),
    ("eval --checkpoint 3", _eval_missing_step, "--checkpoint 3: no checkpoint at that step; saved steps: 2, 4"),
    ("truncated checkpoint", _truncated, "step 4 is damaged"),
    ("flipped checkpoint", _flipped, "step 4 is damaged"),
    ("checkpoint without _METADATA", _no_metadata, "step 4 is damaged"),
    ("config value of the wrong type", _config_type, "job.yaml: steps='twenty': pass a whole number"),
    ("config list of the wrong type", _config_list, "job.toml: hidden=['wide']: pass positive layer widths"),
    ("--rating-scale 5 1", _bad_scale_flag, "rating_scale=(5.0, 1.0): pass two finite numbers"),
    ("table: 1e9", _table({5: "1e9"}), "r.csv, line 7"),
    ("table: inf", _table({5: "inf"}), "r.csv, line 7"),
    ("table: 1e300", _table({5: "1e300"}), "r.csv, line 7"),
    ("table: negative", _table({5: "-3"}), "r.csv, line 7"),
    ("table: not a number", _table({5: "five"}), "r.csv, line 7"),
    ("table: empty file", _empty_table, "r.csv"),
    ("table: header only", _header_only, "r.csv"),
    ("table: a folder", _table_is_a_folder, "r.csv"),
    ("describe: 1e9", _describe({5: "1e9"}), "r.csv, line 7"),
    ("describe: inf", _describe({5: "inf"}), "r.csv, line 7"),
    ("describe: negative", _describe({5: "-3"}), "r.csv, line 7"),
    ("recommend: 1e6", _recommend("1e6"), "line 3"),
    ("recommend: inf", _recommend("inf"), "line 3"),
    ("recommend: negative", _recommend("-2"), "line 3"),
    ("recommend: empty file", _recommend_empty, "me.csv"),
    ("recommend: a synthetic run", _recommend_synthetic, "serve a run trained with --data ml-100k, ml-1m or table"),
]


@pytest.mark.parametrize("setup, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_it(tmp_path, trained, table_run, setup, expected):
    ran = jaxmeta(*setup(tmp_path, trained, table_run), cwd=tmp_path)
    assert ran.returncode == 2, (ran.returncode, ran.stderr[-2000:])
    errors = [line for line in ran.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "Traceback" not in ran.stderr, ran.stderr[-2000:]
    assert errors[0].startswith("jaxmeta ") and ": error: " in errors[0]
    assert expected in errors[0], errors[0]


def test_a_table_run_evaluates_every_scenario_and_serves(table_run, tmp_path):
    run = copy_run(table_run, tmp_path)
    evaluated = jaxmeta("eval", "--run", run, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    scores = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert set(scores) <= {"warm", "user_cold", "item_cold", "user_item_cold"} and "user_cold" in scores
    assert json.loads((run / "result.json").read_text())["config"]["data"] == "table"
    (tmp_path / "me.csv").write_text("user,item,rating\nme,3,5\nme,4,1\nme,7,4\n")
    shown = jaxmeta("recommend", "--run", run, "--ratings", tmp_path / "me.csv", "-k", "5")
    assert shown.returncode == 0, shown.stderr
    items = [r.split()[2] for r in shown.stdout.strip().splitlines()[1:]]
    assert len(items) == 5 and not {"3", "4", "7"} & set(items)


def test_an_unreadable_table_names_the_file(tmp_path, monkeypatch):
    path = ratings_csv(tmp_path / "r.csv")
    real_open = builtins.open

    def refuse(file, *args, **kwargs):  # chmod 000 does not stop root, who runs the CI
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(io, "open", refuse)
    ran = jaxmeta("train", "--data", "table", "--path", path, "--quiet")
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    assert f"{path}: cannot be read (permission denied)" in ran.stderr


def test_a_parquet_file_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "r.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow fails as if not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    ran = jaxmeta("train", "--data", "table", "--path", tmp_path / "r.parquet", "--quiet")
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    assert "r.parquet" in ran.stderr and "pyarrow" in ran.stderr


def test_debug_shows_the_traceback(trained):
    with pytest.raises(ValueError, match="--checkpoint 'first'"):
        cli.main(["eval", "--run", str(trained), "--checkpoint", "first", "--debug"])
