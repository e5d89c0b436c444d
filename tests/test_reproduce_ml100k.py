"""A short reproduction on the real MovieLens-100K (RecBole-MetaRec's user split).

Skipped, with the reason, where the data is absent (set JAXMETA_DATA to the
folder holding ml-100k/). About 1.5 minutes on a 2-core CPU.
"""

from __future__ import annotations

import json

from conftest import real

from jaxmeta.reproduce import METRICS, reproduce


def test_meta_learned_melu_beats_no_adaptation_on_new_users(tmp_path):
    folder = real("ml-100k")
    out = reproduce("ml-100k", folder, tmp_path, algos=("fomaml",), steps=300, mf=False, progress=False, seed=0)
    assert out["dataset"] == "ml-100k"
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == out
    assert set(written) == {"dataset", "split", "results"}
    table = written["results"]["user_cold"]
    assert set(table) == {"fomaml", "no_adaptation", "finetune", "global_mean", "item_mean", "popularity",
                          "constant", "random"}
    assert all(set(row) == set(METRICS) for row in table.values())
    assert table["fomaml"]["train_seconds"] > 0 and table["item_mean"]["train_seconds"] is None
    assert table["fomaml"]["mae"] < table["no_adaptation"]["mae"], table
    assert table["constant"]["ndcg@3"] == table["random"]["ndcg@3"] or abs(
        table["constant"]["ndcg@3"] - table["random"]["ndcg@3"]) < 1e-6
    markdown = (tmp_path / "results.md").read_text()
    assert markdown.splitlines()[3].startswith("python -c") and "| fomaml |" in markdown
