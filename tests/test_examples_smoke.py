"""The examples beyond quickstart and flax_nnx (those are in test_cli.py), run as a user runs them.

Tiny settings: each run checks that the example works end to end and prints
what its docstring promises, not how well it learns.
"""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA, real

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"\d+\.\d{4}"


def run_example(script: str, *args: str) -> subprocess.CompletedProcess:
    """The example in its own process: for what only a process shows (its exit status and stderr)."""
    return subprocess.run([sys.executable, str(ROOT / "examples" / script), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def run_here(script: str, *args: str, monkeypatch, capsys) -> str:
    """The example's ``__main__`` run in this process (``runpy``); its standard output."""
    path = ROOT / "examples" / script
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(path), run_name="__main__")
    return capsys.readouterr().out


@pytest.mark.slow  # an example run; tests/test_cli.py runs the quickstart example in the default suite
def test_custom_algorithm_trains_and_with_reg_0_is_fomaml(monkeypatch, capsys):
    out = run_here("custom_algorithm.py", "--steps", "5", "--reg", "0", monkeypatch=monkeypatch, capsys=capsys)
    results = {}
    for name in ("fomaml", r"proximal fomaml \(reg=0\)"):
        line = rf"^{name}, 500 new users: query MSE ({NUMBER}) before, ({NUMBER}) after adaptation$"
        found = re.search(line, out, re.MULTILINE)
        assert found, out
        results[name] = found.groups()
    # Without the proximal term the new algorithm is first-order MAML, step for step.
    assert len(set(results.values())) == 1, results


@pytest.mark.slow  # a MovieLens run: pytest -m slow
def test_movielens_cold_start_prints_a_row_per_method(monkeypatch, capsys):
    real("ml-100k")
    out = run_here("movielens_cold_start.py", "--data-dir", str(DATA), "--steps", "5", "--eval-every", "5",
                   monkeypatch=monkeypatch, capsys=capsys)
    assert re.search(rf"^maml: validation MAE {NUMBER} \(step 5\); scoring step 5$", out, re.MULTILINE), out
    for method in ("maml", "no_adaptation"):
        row = re.search(rf"^user_cold +{method} +({NUMBER}) +({NUMBER})$", out, re.MULTILINE)
        assert row, out
        mae, ndcg = map(float, row.groups())
        assert 0 < mae < 4 and 0 < ndcg <= 1, row.group(0)


@pytest.mark.slow  # a MovieLens run: pytest -m slow
def test_adapt_new_user_shows_both_lists_and_the_held_out_scores(monkeypatch, capsys):
    real("ml-100k")
    out = run_here("adapt_new_user.py", "--data-dir", str(DATA), "--steps", "5", monkeypatch=monkeypatch,
                   capsys=capsys)
    assert "top-10 before adaptation" in out and "top-10 after adaptation" in out, out
    assert re.search(r"^\d+ of 10 movies in both lists$", out, re.MULTILINE), out
    line = r"^held-out MAE of this user: \d+\.\d{3} before adaptation, \d+\.\d{3} after$"
    assert re.search(line, out, re.MULTILINE), out


@pytest.mark.parametrize("script", ["movielens_cold_start.py", "adapt_new_user.py"])
def test_movielens_examples_say_when_the_data_is_absent(script, tmp_path):
    out = run_example(script, "--data-dir", str(tmp_path), "--steps", "5")
    assert out.returncode == 1
    assert f"MovieLens data not found: {tmp_path / 'ml-100k'} is not a folder" in out.stderr
    assert "Traceback" not in out.stderr
