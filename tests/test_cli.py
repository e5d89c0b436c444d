"""The ``jaxmeta`` command and the examples, run as a user runs them.

Everything runs in this process (``jaxmeta.cli.main(argv)``, the examples' ``__main__``
through ``runpy``): a subprocess would only add an interpreter and a jax import per case.
One test runs the installed console script, for what only a process shows: the script
exists, starts, and turns ``main``'s return value into the exit status.
"""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jaxmeta.cli import main

ROOT = Path(__file__).resolve().parents[1]


def jaxmeta(*argv: str) -> int:
    """``jaxmeta ARGV`` in this process: its exit status (argparse's own errors and ``--help`` exit)."""
    try:
        return main(list(argv))
    except SystemExit as done:
        return done.code


def test_the_console_script_is_installed_and_exits_with_mains_status():
    exe = shutil.which("jaxmeta", path=str(Path(sys.executable).parent))
    assert exe, "the jaxmeta console script is not installed next to this Python: pip install -e ."
    out = subprocess.run([exe, "train", "--quiet", "--steps", "0"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr
    assert "jaxmeta train: error: steps=0" in out.stderr and out.stdout == ""


@pytest.mark.slow  # the default suite checks the --json line in tests/test_run_folders.py
def test_train_prints_table_and_json_last_line(capsys):
    assert jaxmeta("train", "--algo", "fomaml", "--steps", "40", "--quiet", "--json") == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert "query MSE on 500 new users" in lines[0]
    for label in ("fomaml, before adaptation", "fomaml, after adaptation", "no adaptation", "fine-tune"):
        assert label in out
    result = json.loads(lines[-1])
    assert set(result) == {"algo", "query_mse", "new_users", "seconds", "devices", "processes"}
    assert result["algo"] == "fomaml" and result["new_users"] == 500
    assert set(result["query_mse"]) == {"before", "after", "no_adaptation", "finetune"}
    # The table shows the same numbers as the JSON.
    assert f"{result['query_mse']['after']:9.4f}" in out


@pytest.mark.parametrize(
    "argv, shown",
    [
        (["--help"], ("train", "reproduce", "bench")),
        (["train", "--help"], ("--algo", "imaml")),
        (["reproduce", "--help"], ("--dataset", "ml-100k")),
        (["bench", "--help"], ("--workload", "--variant", "bench/README.md")),
    ],
)
def test_help_lists_the_commands(capsys, argv, shown):
    assert jaxmeta(*argv) == 0
    out = capsys.readouterr().out
    for text in shown:
        assert text in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--algo", "sgd"], "invalid choice: 'sgd'"),
        (["--steps", "0"], "steps=0"),
        (["--inner-steps", "0"], "inner_steps=0"),
        (["--chunk-size", "0"], "chunk_size=0"),
        (["--algo", "metasgd", "--inner-lr", "0"], "inner_lr=0.0"),
        (["--hidden", "0"], "hidden=(0,)"),
        (["--devices", "0"], "devices=0: pass a positive number of devices"),
        (["--devices", "3"], "devices=3: this process has 1 device(s); pass at most 1."),
        (["--model", "melu"], "model='melu' reads featured data"),
        (["--model", "mf"], "model='mf' reads featured data"),
        (["--model", "hybrid"], "model='hybrid' reads featured data"),
        (["--data", "ml-100k", "--factors", "8"], "factors=8, known_min_ratings=10: only hybrid MeLU has them"),
        (["--data", "ml-100k", "--model", "hybrid", "--factors", "0"], "factors=0"),
        (["--data", "ml-100k", "--model", "hybrid", "--algo", "conditioned"],
         "algo='conditioned' with model='hybrid': its set encoder reads MeLU's dense input"),
        (["--model", "svd"], "invalid choice: 'svd'"),
        (["--data", "table", "--path", "r.csv", "--model", "mlp"], "model='mlp' reads the synthetic data's integer ids"),
        (["--data", "table", "--path", "r.csv", "--model", "mf", "--hidden", "8"], "biased MF has no hidden layers"),
        (["--backend", "cuda"], "invalid choice: 'cuda'"),
        (["--backend", "pallas", "--algo", "anil"], "the fused kernel runs the inner loop of ('maml', 'fomaml', "
                                                    "'reptile'), not algo='anil'"),
        (["--shard-tables", "actor"], "this model has no table 'actor'; pass 'all' or some of ['item', "
                                      "'item_genre', 'user_group']"),
        (["--shard-tables", "all", "item"], "pass 'all' alone"),
        (["--data", "ml-100k", "--text-tokens", "1"], "text_tokens=1: pass a whole number >= 2"),
        (["--text", "all-MiniLM-L6-v2"], "item text comes from MovieLens titles, genres and metadata; pass "
                                         "data='ml-100k' or 'ml-1m'"),
    ],
)
def test_bad_flags_fail_with_a_message(capsys, args, message):
    assert jaxmeta("train", "--quiet", *args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "ml-1m", "--keep-heavy"], "keep_heavy=True with dataset='ml-1m'"),
        (["--dataset", "ml-100k", "--heavy-users"], "heavy_users=True on ml-100k"),
        (["--algos", "ridge", "multitask", "--loss", "mae"], "loss='mae' with multitask or students"),
        (["--loss", "l1"], "invalid choice: 'l1'"),
    ],
)
def test_bad_reproduce_flags_fail_with_a_message(capsys, args, message):
    """The reproduction's flags reach its settings, which refuse them before any data is read."""
    assert jaxmeta("reproduce", "--quiet", "--data-dir", "/nonexistent", *args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "script, expected",
    [("quickstart.py", "500 new users: query MSE"),
     pytest.param("flax_nnx.py", "NNX model, 500 new users", marks=pytest.mark.slow)],
)
def test_examples_run(monkeypatch, capsys, script, expected):
    path = ROOT / "examples" / script
    monkeypatch.setattr(sys, "argv", [str(path), "--steps", "20"])
    runpy.run_path(str(path), run_name="__main__")
    assert expected in capsys.readouterr().out
