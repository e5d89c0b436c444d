"""The ``jaxmeta`` command and the example, run as a user runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def jaxmeta(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("jaxmeta", path=str(Path(sys.executable).parent))
    assert exe, "the jaxmeta console script is not installed next to this Python: pip install -e ."
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=600)


def test_train_prints_table_and_json_last_line():
    out = jaxmeta("train", "--algo", "fomaml", "--steps", "40", "--quiet", "--json")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert "query MSE on 500 new users" in lines[0]
    for label in ("fomaml, before adaptation", "fomaml, after adaptation", "no adaptation", "fine-tune"):
        assert label in out.stdout
    result = json.loads(lines[-1])
    assert set(result) == {"algo", "query_mse", "new_users", "seconds", "devices", "processes"}
    assert result["algo"] == "fomaml" and result["new_users"] == 500
    assert set(result["query_mse"]) == {"before", "after", "no_adaptation", "finetune"}
    # The table shows the same numbers as the JSON.
    assert f"{result['query_mse']['after']:9.4f}" in out.stdout


def test_help_lists_the_commands():
    out = jaxmeta("--help")
    assert out.returncode == 0 and "train" in out.stdout and "reproduce" in out.stdout
    out = jaxmeta("train", "--help")
    assert out.returncode == 0 and "--algo" in out.stdout and "imaml" in out.stdout
    out = jaxmeta("reproduce", "--help")
    assert out.returncode == 0 and "--dataset" in out.stdout and "ml-100k" in out.stdout


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
def test_bad_flags_fail_with_a_message(args, message):
    out = jaxmeta("train", "--quiet", *args)
    assert out.returncode == 2
    assert message in out.stderr


@pytest.mark.parametrize(
    "script, expected", [("quickstart.py", "500 new users: query MSE"), ("flax_nnx.py", "NNX model, 500 new users")]
)
def test_examples_run(script, expected):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--steps", "100"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert expected in out.stdout
