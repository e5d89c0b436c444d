"""The results report: the meta-learner chosen on validation, its verdicts against the
baselines, differences pooled over seeds (against the per-user differences themselves),
and the Markdown of several seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxmeta.evaluation import paired_difference
from jaxmeta.report import across_seeds, chosen, format_markdown, format_summary, paired, pooled, summarise


def per_user(seed, shift):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.5, 1.0, 40)
    return {"mae": base, "rmse": base + 0.1, "ndcg@3": rng.uniform(0.6, 0.9, 40)}, {
        "mae": base + shift + rng.normal(0, 0.01, 40), "rmse": base + 0.1 + shift, "ndcg@3": rng.uniform(0.6, 0.9, 40)}


def test_the_method_with_the_lowest_validation_mae_is_compared_and_judged():
    good, bad = per_user(0, 0.0)
    base = {k: v + 0.05 for k, v in good.items()}  # 0.05 worse on MAE everywhere: a clear win for "good"
    table = {"s": {"a": good, "b": bad, "bias": base}}
    selected = {"a": {"valid_mae": 0.70, "new_items": {"valid_mae": 0.9}}, "b": {"valid_mae": 0.75}}
    out = chosen(table, selected, ["a", "b"], {"s": "users"}, baselines=("bias",))
    pick = out["s"]
    assert (pick["method"], pick["valid_set"], pick["users"]) == ("a", "users", 40)
    mean, se, verdict, users = pick["vs"]["bias"]["mae"]
    want = paired_difference(good["mae"], base["mae"])
    assert (mean, se) == (pytest.approx(want[0], abs=1e-5), pytest.approx(want[1], abs=1e-5)) and verdict == "win"
    assert users == 40
    # on the held-out items' set, "b" has no score there and "a" is the only candidate
    assert chosen(table, selected, ["a", "b"], {"s": "new_items"}, baselines=("bias",))["s"]["method"] == "a"
    swapped = chosen({"s": {"a": base, "bias": good}}, {"a": {"valid_mae": 0.7}}, ["a"], {"s": "users"}, ("bias",))
    assert swapped["s"]["vs"]["bias"]["mae"][2] == "loss"


def test_pooled_difference_equals_the_concatenated_per_user_differences():
    rng = np.random.default_rng(3)
    runs = [rng.normal(-0.01 * k, 0.05, n) for k, n in ((1, 30), (2, 55), (3, 41))]
    cells = [(d.mean(), d.std(ddof=1) / np.sqrt(d.size), d.size) for d in runs]
    everything = np.concatenate(runs)
    mean, se, n = pooled(cells)
    assert n == everything.size
    assert mean == pytest.approx(everything.mean(), rel=1e-12)
    assert se == pytest.approx(everything.std(ddof=1) / np.sqrt(everything.size), rel=1e-12)


def test_seeds_summarise_into_mean_sd_and_pooled_verdicts():
    runs = {}
    for seed in (0, 1, 2):
        a, base = per_user(seed, 0.05)  # the baseline is 0.05 worse: a win in every seed
        results = {"s": {"a": {"mae": float(a["mae"].mean()), "rmse": 1.0 + seed / 10, "ndcg@3": 0.7,
                               "ndcg_lin@3": 0.8, "train_seconds": 10.0},
                         "bias": {"mae": float(base["mae"].mean()), "rmse": 1.1, "ndcg@3": 0.7,
                                  "ndcg_lin@3": 0.8, "train_seconds": None}}}
        pick = chosen({"s": {"a": a, "bias": base}}, {"a": {"valid_mae": 0.7}}, ["a"], {"s": "users"}, ("bias",))
        runs[seed] = {"results": results, "chosen": pick}
    summary = summarise(runs)
    assert summary["seeds"] == [0, 1, 2]
    mean, sd, count = summary["results"]["s"]["a"]["rmse"]
    assert (mean, count) == (pytest.approx(1.1), 3) and sd == pytest.approx(0.1)
    assert "train_seconds" not in summary["results"]["s"]["bias"]
    verdict = summary["chosen"]["s"]["vs"]["bias"]["mae"]
    assert verdict[2] == 120 and verdict[3] == "win" and verdict[0] == pytest.approx(-0.05, abs=0.01)
    text = format_summary(summary, command="jaxmeta reproduce --seeds 0 1 2")
    assert "| a | " in text and "| bias | 120 |" in text and "seed 0: a" in text


def test_distilled_students_pool_over_seeds_against_the_concatenated_differences():
    runs, differences = {}, []
    for seed in (0, 1, 2):
        teacher, student = per_user(seed, 0.02)
        mean, se, _ = paired_difference(student["mae"], teacher["mae"])
        differences.append(student["mae"] - teacher["mae"])
        runs[seed] = {"results": {"s": {}}, "chosen": {"s": {"users": 40, "method": "t", "vs": {}}},
                      "distilled": {"teacher": "t", "alpha": 0.5,
                                    "paired": {"s": {"small": {"t": {"mae": [mean, se]}}}}}}
    summary = summarise(runs)
    mean, se, users = summary["distilled"]["paired"]["s"]["small"]["t"]["mae"]
    everything = np.concatenate(differences)
    assert users == 120 and mean == pytest.approx(everything.mean(), abs=1e-5)
    assert se == pytest.approx(everything.std(ddof=1) / np.sqrt(everything.size), abs=1e-5)  # rounded to 5
    text = format_summary(summary, command="jaxmeta reproduce --seeds 0 1 2 --teacher t --students small")
    assert "Students distilled from t (α = 0.5)" in text and "| s | small | 120 | " in text


def test_decoded_mae_is_judged_lower_better_and_left_out_where_a_run_lacks_it():
    """``mae_decoded`` (jaxmeta.decoding) is paired like MAE; runs made before it existed have no such per-user
    values, and a seed without it leaves it out of the pooled verdicts rather than pooling the others alone."""
    runs = {}
    for seed in (0, 1):
        a, base = per_user(seed, 0.05)
        a["mae_decoded"], base["mae_decoded"] = a["mae"] - 0.03, a["mae"] + 0.03  # a win, 0.06 per user
        table = {"s": {"a": a, "bias": base}}
        pick = chosen(table, {"a": {"valid_mae": 0.7}}, ["a"], {"s": "users"}, ("bias",))
        mean, _, verdict, _ = pick["s"]["vs"]["bias"]["mae_decoded"]
        assert mean == pytest.approx(-0.06, abs=1e-5) and verdict == "win"
        assert paired(table, ["a"], ("bias",))["s"]["a"]["bias"]["mae_decoded"][0] == pytest.approx(-0.06, abs=1e-5)
        runs[seed] = {"results": {"s": {"a": {"mae": 0.7, "mae_decoded": 0.65}}}, "chosen": pick}
    summary = summarise(runs)
    assert summary["chosen"]["s"]["vs"]["bias"]["mae_decoded"][3] == "win"
    assert summary["results"]["s"]["a"]["mae_decoded"][:2] == [0.65, 0.0]
    assert "ΔMAE decoded" in format_summary(summary, command="c") and "| 0.6500 ± 0.0000 |" in format_summary(
        summary, command="c")
    old, base = per_user(2, 0.05)  # a run without decoded values
    runs[2] = {"results": {"s": {"a": {"mae": 0.7}}},
               "chosen": chosen({"s": {"a": old, "bias": base}}, {"a": {"valid_mae": 0.7}}, ["a"], {"s": "users"},
                                ("bias",))}
    assert "mae_decoded" not in runs[2]["chosen"]["s"]["vs"]["bias"]
    mixed = summarise(runs)
    pooled_vs = mixed["chosen"]["s"]["vs"]["bias"]
    assert "mae_decoded" not in pooled_vs and pooled_vs["mae"][2] == 120
    assert set(mixed["results"]["s"]["a"]) == {"mae"}  # not a mean over the two seeds that have it
    for seed, run in runs.items():  # students too: the metric some run lacks is left out, not a KeyError
        cells = {"mae": [0.01, 0.002]} if seed == 2 else {"mae": [0.01, 0.002], "mae_decoded": [0.02, 0.003]}
        run["distilled"] = {"teacher": "t", "alpha": 0.5, "paired": {"s": {"small": {"t": cells}}}}
        run["chosen"]["s"]["users"] = 40
    assert set(summarise(runs)["distilled"]["paired"]["s"]["small"]["t"]) == {"mae"}
    assert "| bias | 120 | " in format_summary(summarise(runs), command="c")


def test_across_seeds_is_the_random_effects_mean_with_equal_errors_in_closed_form():
    """With equal standard errors s, DerSimonian-Laird's SE is max(s, sd of the seeds' means) / sqrt(k): the
    seeds' own spread once it exceeds what their standard errors explain, and the fixed-effect SE before."""
    spread = [-0.08, 0.0, -0.07]
    mean, se, q = across_seeds([(m, 0.01) for m in spread])
    assert mean == pytest.approx(np.mean(spread)) and se == pytest.approx(np.std(spread, ddof=1) / np.sqrt(3))
    assert q == pytest.approx(np.sum((np.array(spread) - np.mean(spread)) ** 2) / 0.01**2)
    close = [-0.050, -0.052, -0.049]  # within their errors: tau^2 = 0
    mean, se, q = across_seeds([(m, 0.01) for m in close])
    assert mean == pytest.approx(np.mean(close)) and se == pytest.approx(0.01 / np.sqrt(3)) and q < 2
    unequal = [(-0.02, 0.01), (-0.04, 0.02)]  # tau^2 = 0 here: the inverse-variance mean, by hand
    mean, se, _ = across_seeds(unequal)
    assert mean == pytest.approx((-0.02 / 1e-4 - 0.04 / 4e-4) / (1 / 1e-4 + 1 / 4e-4))
    assert se == pytest.approx((1 / 1e-4 + 1 / 4e-4) ** -0.5)
    assert across_seeds([(0.0, 0.0), (0.0, 0.0)]) == (0.0, 0.0, 0.0)  # the same predictions in every seed
    for undefined in ([(-0.1, 0.01)], [(-0.1, None), (-0.2, 0.01)], [(-0.1, 0.0), (-0.2, 0.01)]):
        assert all(np.isnan(across_seeds(undefined)))


def test_seeds_that_disagree_win_pooled_but_tie_across_seeds():
    """Three seeds whose per-user differences are tight around means far apart: pooled over users it is a win,
    counted with the spread between seeds a tie, and summary.md shows both."""
    rng = np.random.default_rng(5)
    runs, differences = {}, []
    for seed, shift in enumerate((-0.1, 0.02, -0.07)):
        base = rng.uniform(0.5, 1.0, 50)
        a = base + shift + rng.normal(0, 0.01, 50)
        differences.append(a - base)
        pick = chosen({"s": {"a": {"mae": a}, "bias": {"mae": base}}}, {"a": {"valid_mae": 0.7}}, ["a"],
                      {"s": "users"}, ("bias",))
        runs[seed] = {"results": {"s": {"a": {"mae": float(a.mean())}}}, "chosen": pick}
    summary = summarise(runs)
    mean, se, users, verdict = summary["chosen"]["s"]["vs"]["bias"]["mae"]
    assert users == 150 and verdict == "win" and mean < -2 * se
    means = [d.mean() for d in differences]
    mean, se, q, verdict = summary["chosen"]["s"]["across_seeds"]["bias"]["mae"]
    assert verdict == "tie" and q > 100
    # tau^2 dominates the seeds' small (and nearly equal) errors: about the closed form of equal errors
    assert mean == pytest.approx(np.mean(means), abs=2e-3) and se == pytest.approx(
        np.std(means, ddof=1) / np.sqrt(3), rel=0.15)
    text = format_summary(summary, command="c")
    assert "DerSimonian–Laird" in text and f"| bias | {mean:+.4f} ± {se:.4f} | {q:.1f} | tie |" in text


def test_a_difference_over_one_user_is_undefined_and_pools_with_its_own_count():
    """One user: no standard error, so neither a win nor a tie, written as JSON null (not NaN). A baseline
    missing a user's value: the paired count, not the chosen method's, weighs the seed in the pooled mean."""
    table = {"s": {"a": {"mae": np.array([0.2, 0.4, 0.5])}, "bias": {"mae": np.array([0.9, np.nan, np.nan])}}}
    pick = chosen(table, {"a": {"valid_mae": 0.7}}, ["a"], {"s": "users"}, ("bias",))["s"]
    assert pick["users"] == 3 and pick["vs"]["bias"]["mae"] == [-0.7, None, "undefined", 1]
    assert paired(table, ["a"], ("bias",))["s"]["a"]["bias"]["mae"] == [-0.7, None, 1]
    json.dumps(pick, allow_nan=False)
    assert "| s | a | bias | -0.7000 ± – | undefined |" in format_markdown(
        {"dataset": "d", "split": "x", "results": {}, "chosen": {"s": pick}}, command="c")
    other = chosen({"s": {"a": {"mae": np.array([0.2, 0.4, 0.5])}, "bias": {"mae": np.array([0.3, 0.6, 0.6])}}},
                   {"a": {"valid_mae": 0.7}}, ["a"], {"s": "users"}, ("bias",))["s"]
    summary = summarise({0: {"results": {"s": {}}, "chosen": {"s": pick}},
                         1: {"results": {"s": {}}, "chosen": {"s": other}}})
    mean, se, users, verdict = summary["chosen"]["s"]["vs"]["bias"]["mae"]
    everything = np.array([-0.7, -0.1, -0.2, -0.1])
    assert users == 4 and mean == pytest.approx(everything.mean(), abs=1e-5) and verdict == "tie"  # 1.9 SE
    assert se == pytest.approx(everything.std(ddof=1) / 2, abs=1e-5)
    assert summary["chosen"]["s"]["across_seeds"]["bias"]["mae"][3] == "undefined"
