"""The reproduction's report: paired differences and the Markdown of ``results.json``.

:func:`paired` compares every meta-learner with the MeLU baselines user by user
(:func:`jaxmeta.evaluation.paired_difference`); :func:`format_markdown` writes the
tables of ``results.md`` under the command that made them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxmeta import algorithms
from jaxmeta.evaluation import paired_difference

__all__ = ("across_seeds", "chosen", "format_markdown", "format_summary", "paired", "pooled", "summarise")

BASELINES = ("no_adaptation", "finetune")
PAIRED_METRICS = ("mae", "rmse", "ndcg@3", "mae_decoded")
LOWER_BETTER = ("mae", "rmse", "mae_decoded")
BASELINES_SHOWN = ("bias", "mf_foldin", "finetune", "mf", "no_adaptation")
WIN_SE = 2.0
_HEADERS = {"mae": "MAE", "rmse": "RMSE", "ndcg@3": "nDCG@3", "ndcg_lin@3": "nDCG@3 lin",
            "mae_decoded": "MAE decoded"}
_NOT_SETTINGS = ("step", "valid_mae", "inner_lr", "finetune_lr", "new_items")


def _number(value: float | None, digits: int = 5) -> float | None:
    """``value`` rounded for results.json; ``None`` where it is missing or not finite (JSON has no NaN)."""
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def _verdict(mean: float | None, se: float | None, metric: str) -> str:
    """``"win"`` where the difference is beyond ``WIN_SE`` standard errors in the method's favour (below for
    the metrics of ``LOWER_BETTER``, above for nDCG), ``"loss"`` beyond them against it, ``"tie"`` otherwise;
    ``"undefined"`` where the standard error is not (fewer than two users, say)."""
    if mean is None or se is None or not (np.isfinite(mean) and np.isfinite(se)):
        return "undefined"
    better = -mean if metric in LOWER_BETTER else mean
    return "win" if better > WIN_SE * se else "loss" if better < -WIN_SE * se else "tie"


def _difference(cell: Sequence[Any]) -> str:
    """A cell's ``mean ± se`` for the Markdown; a dash for what is missing."""
    mean = "–" if cell[0] is None else f"{cell[0]:+.4f}"
    return f"{mean} ± {'–' if cell[1] is None else f'{cell[1]:.4f}'}"


def paired(per_user: dict[str, dict[str, dict[str, np.ndarray]]], algos: Sequence[str],
           baselines: Sequence[str] = BASELINES) -> dict[str, Any]:
    """``{scenario: {algo: {baseline: {metric: [mean, standard error, users]}}}}``:
    each meta-learner minus each of ``baselines`` present, paired over the
    scenario's users where both are finite (:func:`jaxmeta.evaluation.paired_difference`;
    ``users`` counts them), for each of ``PAIRED_METRICS`` that both have
    (``mae_decoded`` is missing from runs made before it existed). A standard
    error that is not defined (fewer than two users) is ``None``."""
    out: dict[str, Any] = {}
    for s, methods in per_user.items():
        for algo in algos:
            for base in baselines:
                if algo in methods and base in methods:
                    for metric in PAIRED_METRICS:
                        if metric not in methods[algo] or metric not in methods[base]:
                            continue
                        mean, se, n = paired_difference(methods[algo][metric], methods[base][metric])
                        cell = out.setdefault(s, {}).setdefault(algo, {}).setdefault(base, {})
                        cell[metric] = [_number(mean), _number(se), n]
    return out


def _valid_mae(pick: dict[str, Any], valid_set: str) -> float | None:
    where = pick if valid_set == "users" else pick.get(valid_set)
    return None if where is None else where.get("valid_mae")


def chosen(per_user: dict[str, dict[str, dict[str, np.ndarray]]], selected: dict[str, dict[str, Any]],
           algos: Sequence[str], valid_for: dict[str, str], baselines: Sequence[str] = BASELINES) -> dict[str, Any]:
    """The meta-learner chosen on validation in each scenario, against every baseline.

    In each scenario the meta-learner of ``algos`` with the lowest validation MAE
    on the scenario's validation set (``valid_for[scenario]``: ``"users"``, or
    ``"new_items"`` for the item scenarios when items were held out) is compared
    with each baseline, paired over the scenario's users. It *wins* on MAE when
    the mean difference is below ``-2`` standard errors, *loses* when above ``+2``;
    on nDCG@3 the signs swap.

    Returns:
      ``{scenario: {"method", "valid_mae", "users", "vs": {baseline: {metric: [mean, se, verdict,
      users]}}}}``, ``verdict`` one of ``"win"``, ``"loss"``, ``"tie"``, or ``"undefined"`` where the
      standard error is not (fewer than two users; ``se`` is then ``None``). The cell's ``users`` are
      those the difference is over (both finite); the scenario's, those the chosen method scores.
    """
    out: dict[str, Any] = {}
    for s, methods in per_user.items():
        scored = {a: _valid_mae(selected.get(a, {}), valid_for[s]) for a in algos if a in methods}
        scored = {a: v for a, v in scored.items() if v is not None}
        if not scored:
            continue
        best = min(scored, key=scored.get)
        vs = {}
        for base in baselines:
            if base not in methods:
                continue
            for metric in PAIRED_METRICS:
                if metric not in methods[best] or metric not in methods[base]:
                    continue
                mean, se, n = paired_difference(methods[best][metric], methods[base][metric])
                vs.setdefault(base, {})[metric] = [_number(mean), _number(se), _verdict(mean, se, metric), n]
        users = int(np.sum(np.isfinite(methods[best]["mae"])))
        out[s] = {"method": best, "valid_set": valid_for[s], "valid_mae": scored[best], "users": users, "vs": vs}
    return out


def _cell(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def format_markdown(results: dict[str, Any], *, command: str, seconds: float | None = None,
                    users: dict[str, int] | None = None, train_users: int | None = None,
                    valid_users: int | None = None, item_users: int | None = None,
                    heavy_tasks: int | None = None) -> str:
    """``results`` (as :func:`reproduce` returns it) as Markdown: the command,
    the checkpoints model selection chose, one table per scenario, then a note
    for each scenario where no meta-learner beats the per-item mean on RMSE."""
    text = f", item text by {results['text']}" if results.get("text") else ""
    if results.get("text") and results.get("text_tokens"):
        text += f" (at most {results['text_tokens']} tokens)"
    model = ", hybrid MeLU" if results.get("model") == "hybrid" else ""
    if results.get("model") == "hybrid" and results.get("warm_start", "none") != "none":
        model += f", item rows from ALS ({results['warm_start']}{', held' if results.get('freeze_items') else ''})"
    if results.get("without"):
        model += f" without {', '.join(results['without'])}"
    if results.get("implicit_prior"):
        model += ", ridge's prior from the items rated"
        if results.get("implicit_vectors"):
            model += " (free item vectors)"
    loss = f", meta-learners trained on {results['loss']}" if results.get("loss", "mse") != "mse" else ""
    lines = [f"# {results['dataset']}, {results['split']}{model}{text}{loss}", "", "```", command, "```", ""]
    if seconds is not None:
        counts = [f"{train_users} meta-training users"] if train_users else []
        counts += [f"{heavy_tasks} more tasks dealt from the heavy users' histories"] if heavy_tasks else []
        counts += [f"{valid_users} validation users"] if valid_users else []
        counts += [f"{item_users} users rating the held-out items"] if item_users else []
        lines += [f"Whole run: {seconds:.0f} s" + (f"; {', '.join(counts)}." if counts else "."), ""]
    if results.get("selected"):
        items = any("new_items" in pick for pick in results["selected"].values())
        where = " on the validation users"
        where += ", and for item_cold and user_item_cold on the held-out items" if items else ""
        lines += [f"Checkpoints and settings chosen{where} (query MAE):",
                  "", "| method | step | validation MAE | rate or settings |", "|---|---:|---:|---|"]
        for method, pick in results["selected"].items():
            for name, p in ((method, pick), (f"{method} (new items)", pick.get("new_items"))):
                if p is not None:
                    rate = p.get("inner_lr", p.get("finetune_lr"))
                    settings = ", ".join(f"{k}={v:g}" for k, v in p.items() if k not in _NOT_SETTINGS
                                         and isinstance(v, int | float))
                    step = "–" if p.get("step") is None else p["step"]
                    lines.append(f"| {name} | {step} | {p['valid_mae']:.4f} | "
                                 f"{rate if rate is not None else settings or '–'} |")
        lines += ["", ("Rate: the inner rate of a meta-learner, the per-user rate chosen for `finetune` and `mf`; "
                       "settings: the grid point chosen for `bias` and `mf_foldin` (no training steps)."), ""]
    notes = []
    reference = results.get("reference") or {}
    for scenario, methods in results["results"].items():
        count = f" ({users[scenario]} users)" if users and scenario in users else ""
        lines += [f"## {scenario}{count}", "",
                  "| method | MAE | MAE decoded | RMSE | nDCG@3 | nDCG@5 | nDCG@3 lin | train s | users/s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for method, m in methods.items():
            lines.append(f"| {method} | {_cell(m['mae'], 4)} | {_cell(m.get('mae_decoded'), 4)} | "
                         f"{_cell(m['rmse'], 4)} | {_cell(m['ndcg@3'], 4)} | "
                         f"{_cell(m['ndcg@5'], 4)} | {_cell(m.get('ndcg_lin@3'), 4)} | "
                         f"{_cell(m['train_seconds'], 1)} | {_cell(m['users_per_s'], 0)} |")
        if scenario in reference.get("mae", {}):
            lines.append(f"| {reference['method']} | {reference['mae'][scenario]:.4f} |" + " – |" * 8)
        lines.append("")
        meta = {k: v["rmse"] for k, v in methods.items() if k in algorithms.META_LEARNERS and v["rmse"] is not None}
        item = methods.get("item_mean", {}).get("rmse")
        if meta and item is not None:
            best = min(meta, key=meta.get)
            if meta[best] >= item:
                notes.append(f"- {scenario}: the best meta-learner ({best}, RMSE {meta[best]:.4f}) does not beat the "
                             f"per-item mean (RMSE {item:.4f}): it has learned nothing useful there.")
            else:
                notes.append(f"- {scenario}: best meta-learner {best}, RMSE {meta[best]:.4f} vs per-item mean "
                             f"{item:.4f}.")
    if results.get("chosen"):
        lines += ["## The meta-learner chosen on validation against every baseline", "",
                  ("In each scenario, the meta-learner with the lowest validation MAE (on the scenario's "
                   "validation set) against each baseline: mean per-user difference ± standard error, paired "
                   "over the scenario's users. **win**: ΔMAE, ΔRMSE or ΔMAE decoded below −2 SE (ΔnDCG@3 above "
                   "+2 SE); **loss**: the reverse; tie otherwise. The per-user RMSE is over the user's query "
                   "ratings."), "",
                  "| scenario | chosen | baseline | ΔMAE | | ΔRMSE | | ΔnDCG@3 | | ΔMAE decoded | |",
                  "|---|---|---|---:|---|---:|---|---:|---|---:|---|"]
        for scenario, pick in results["chosen"].items():
            for base, cells in pick["vs"].items():
                row = [f"{_difference(cells[m])} | {cells[m][2]}" if m in cells else "– |"
                       for m in PAIRED_METRICS]
                lines.append(f"| {scenario} | {pick['method']} | {base} | " + " | ".join(row) + " |")
        lines.append("")
    if results.get("paired"):
        bases = [b for b in (*BASELINES_SHOWN,) if any(b in v for a in results["paired"].values() for v in a.values())]
        lines += ["## Meta-learners against the baselines, paired over users", "",
                  ("Mean per-user difference (meta-learner minus baseline) ± its standard error. "
                  "Negative ΔMAE and positive ΔnDCG@3 favour the meta-learner; a difference within about "
                  "two standard errors of 0 is not a clear win either way."), "",
                  "| scenario | method | " + " | ".join(f"ΔMAE vs {b}" for b in bases) + " | "
                  + " | ".join(f"ΔnDCG@3 vs {b}" for b in bases) + " |",
                  "|---|---|" + "---:|" * (2 * len(bases))]
        for scenario, algos in results["paired"].items():
            for algo, found in algos.items():
                cells = [_difference(found[b][m]) if b in found else "–"
                         for m in ("mae", "ndcg@3") for b in bases]
                lines.append(f"| {scenario} | {algo} | " + " | ".join(cells) + " |")
        lines.append("")
    if results.get("distilled"):
        taught = results["distilled"]
        teacher = taught["teacher"]
        lines += [f"## Students distilled from {teacher}, paired over users", "",
                  (f"Each student was trained towards {teacher}'s adapted predictions as well as the ratings "
                   f"(query targets (1 − α)·y + α·{teacher}, α = {taught['alpha']:g}). Mean per-user difference "
                   "(student minus teacher, student minus finetune) ± its standard error."), "",
                  f"| scenario | student | ΔMAE vs {teacher} | ΔMAE vs finetune | ΔnDCG@3 vs {teacher} | "
                  "ΔnDCG@3 vs finetune |", "|---|---|---:|---:|---:|---:|"]
        for scenario, students in taught["paired"].items():
            for student, found in students.items():
                cells = [_difference(found[b][m]) if b in found else "–"
                         for m in ("mae", "ndcg@3") for b in (teacher, "finetune")]
                lines.append(f"| {scenario} | {student} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [("MAE and RMSE in stars and nDCG@k (gain 2^r − 1) are per user over the 10 query items, then "
               "averaged over users; nDCG@3 lin uses the rating r itself as the gain (DCG@k = Σ_{j≤k} r_j / "
               "log2(j + 1), divided by the ideal DCG), as we read MeLU's definition; – where a value does not "
               "apply. `bias`: μ + b_i + b_u, b_i shrunk by λ_i over the training ratings, b_u from the user's "
               "support residuals shrunk by λ_u. `mf_foldin`: biased MF by alternating least squares on the "
               "training ratings, each test user's bias and vector solved by ridge regression on their support "
               "ratings (new items: the bias model). Both choose their settings on the validation set, like "
               "every other method. MAE decoded: each method's predictions mapped onto the rating levels by the "
               "cut points that minimise its MAE on the validation set that chose it (the conditional median, "
               "which MAE rewards on a discrete scale: jaxmeta.decoding); the other columns score the raw "
               "predictions." + (f" {reference['method']}: {reference['source']}." if reference else "")), ""]
    if notes:
        lines += ["## Against the per-item mean (RMSE)", "", *notes, ""]
    return "\n".join(lines)


def pooled(cells: Sequence[tuple[float, float | None, int]]) -> tuple[float, float, int]:
    """One paired difference from several runs' ``(mean, standard error, users)``:
    the mean over all their users, and its standard error, as if the per-user
    differences of every run were one sample (each run's variance recovered as
    ``se² · n``; a run of one user adds no variance of its own, and its ``se`` may be ``None``).

    This treats the runs' trained models as fixed: the variation between runs
    (seeds) enters only through the spread of their means over all the users.
    :func:`across_seeds` counts it.
    """
    n = np.array([c[2] for c in cells], float)
    means = np.array([c[0] for c in cells], float)
    se = np.array([np.nan if c[1] is None else c[1] for c in cells], float)
    var = np.where(n > 1, se**2 * n, 0.0)
    total = n.sum()
    mean = float((n * means).sum() / total)
    ss = float(((n - 1) * var + n * (means - mean) ** 2).sum())
    return mean, float(np.sqrt(ss / total / (total - 1))) if total > 1 else float("nan"), int(total)


def across_seeds(cells: Sequence[tuple[float, float | None]]) -> tuple[float, float, float]:
    """One paired difference from several runs' ``(mean, standard error)``, counting
    the variation between the runs: DerSimonian and Laird's random-effects mean.

    Each run (a seed: its own split and its own trained models) estimates its own
    true difference; these vary around the reported one with a variance ``τ²``
    estimated from Cochran's ``Q = Σ w_i (m_i − m̄_w)²`` (``w_i = 1 / se_i²``): ``τ² =
    max(0, (Q − (k − 1)) / (Σ w − Σ w² / Σ w))``. The mean is then weighted by
    ``1 / (se_i² + τ²)``, and its standard error is ``(Σ 1 / (se_i² + τ²))^(-1/2)``. With
    equal standard errors ``s`` this is ``max(s, sd of the means) / √k``. ``Q`` is about
    ``k − 1`` where the runs agree within their standard errors. From three seeds
    ``τ²`` rests on two degrees of freedom: a rough check beside :func:`pooled`, not a
    precise one.

    Returns:
      ``(mean, standard error, Q)``; NaN where it is not defined (fewer than two runs, or
      a standard error missing or zero, except that runs all ``0 ± 0`` give ``(0, 0, 0)``).

    Reference: DerSimonian and Laird, "Meta-analysis in clinical trials",
    Controlled Clinical Trials 7(3), 1986.
    """
    means = np.array([c[0] for c in cells], float)
    se = np.array([np.nan if c[1] is None else c[1] for c in cells], float)
    if len(means) > 1 and np.all(se == 0) and np.all(means == means[0]):
        return float(means[0]), 0.0, 0.0  # the same predictions in every run
    if len(means) < 2 or not np.all(np.isfinite(means) & np.isfinite(se) & (se > 0)):
        return float("nan"), float("nan"), float("nan")
    w = 1 / se**2
    q = float((w * (means - (w * means).sum() / w.sum()) ** 2).sum())
    tau2 = max(0.0, (q - (len(means) - 1)) / (w.sum() - (w**2).sum() / w.sum()))
    w = 1 / (se**2 + tau2)
    return float((w * means).sum() / w.sum()), float(np.sqrt(1 / w.sum())), q


def summarise(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Several seeds' results (``{seed: results.json}``) as one summary.

    Returns:
      ``{"seeds", "results": {scenario: {method: {metric: [mean, sd, runs]}}},
      "chosen": {scenario: {"methods": {seed: method}, "vs": {baseline: {metric:
      [pooled mean, pooled se, users, verdict]}}, "across_seeds": {baseline: {metric:
      [mean, se, Q, verdict]}}}}}``: the sd is over seeds; the chosen meta-learner
      of each seed against each baseline, pooled over the seeds' users
      (:func:`pooled`), and with the variation between seeds counted
      (:func:`across_seeds`; from two seeds on).
    """
    out: dict[str, Any] = {"seeds": sorted(runs), "results": {}, "chosen": {}}
    first = runs[min(runs)]
    for scenario, methods in first["results"].items():
        for method in methods:
            for metric in (*PAIRED_METRICS, "ndcg_lin@3", "train_seconds"):
                rows = [r["results"][scenario][method] for r in runs.values() if method in r["results"][scenario]]
                if any(metric not in row for row in rows):  # a run made before the metric existed
                    continue
                values = [row[metric] for row in rows if row[metric] is not None]
                if values:
                    cell = [round(float(np.mean(values)), 5), round(float(np.std(values, ddof=1)), 5)
                            if len(values) > 1 else None, len(values)]
                    out["results"].setdefault(scenario, {}).setdefault(method, {})[metric] = cell
        picks = {seed: r.get("chosen", {}).get(scenario) for seed, r in runs.items()}
        if any(p is None for p in picks.values()):
            continue
        vs: dict[str, Any] = {}
        between: dict[str, Any] = {}
        for base in picks[min(picks)]["vs"]:
            for metric in PAIRED_METRICS:
                having = [p for p in picks.values() if base in p["vs"]]
                if any(metric not in p["vs"][base] for p in having):  # a run made before the metric existed
                    continue
                # a cell's own count of users where its run wrote one (older runs: the chosen method's users)
                cells = [(*p["vs"][base][metric][:2], (p["vs"][base][metric][3:] or [p["users"]])[0]) for p in having]
                mean, se, users = pooled(cells)
                vs.setdefault(base, {})[metric] = [_number(mean), _number(se), users, _verdict(mean, se, metric)]
                if len(cells) > 1:
                    mean, se, q = across_seeds([c[:2] for c in cells])
                    between.setdefault(base, {})[metric] = [_number(mean), _number(se), _number(q, 2),
                                                            _verdict(mean, se, metric)]
        out["chosen"][scenario] = {"methods": {str(s): p["method"] for s, p in picks.items()}, "vs": vs}
        if between:
            out["chosen"][scenario]["across_seeds"] = between
    if all("distilled" in r for r in runs.values()):  # the students against the teacher and finetune, pooled
        taught = first["distilled"]
        pooled_pairs: dict[str, Any] = {}
        for scenario, students in taught["paired"].items():
            for student, bases in students.items():
                for base, metrics in bases.items():
                    for metric in (m for m in metrics if all(  # a run made before the metric existed lacks it
                            m in r["distilled"]["paired"][scenario][student][base] for r in runs.values())):
                        found = [r["distilled"]["paired"][scenario][student][base][metric] for r in runs.values()]
                        cells = [(*cell[:2], (cell[2:] or [r["chosen"][scenario]["users"]])[0])  # older: no count
                                 for cell, r in zip(found, runs.values(), strict=True)]
                        mean, se, users = pooled(cells)
                        pooled_pairs.setdefault(scenario, {}).setdefault(student, {}).setdefault(base, {})[metric] = [
                            _number(mean), _number(se), users]
        out["distilled"] = {"teacher": taught["teacher"], "alpha": taught["alpha"], "paired": pooled_pairs}
    return out


def format_summary(summary: dict[str, Any], *, command: str, seconds: float | None = None) -> str:
    """:func:`summarise`'s result as Markdown under the command that made it."""
    seeds = ", ".join(map(str, summary["seeds"]))
    lines = [f"# {len(summary['seeds'])} seeds ({seeds}): mean ± sd over seeds", "", "```", command, "```", ""]
    if seconds is not None:
        lines += [f"Whole run: {seconds:.0f} s.", ""]
    metrics = ("mae", "mae_decoded", "rmse", "ndcg@3", "ndcg_lin@3")  # in results.md's order
    for scenario, methods in summary["results"].items():
        lines += [f"## {scenario}", "", "| method | " + " | ".join(_HEADERS[m] for m in metrics) + " | train s |",
                  "|---|" + "---:|" * (len(metrics) + 1)]
        for method, cells in methods.items():
            row = []
            for m in (*metrics, "train_seconds"):
                c = cells.get(m)
                digits = 1 if m == "train_seconds" else 4
                row.append("–" if c is None else f"{c[0]:.{digits}f}" + ("" if c[1] is None else f" ± {c[1]:.{digits}f}"))
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        lines.append("")
        pick = summary["chosen"].get(scenario)
        if pick:
            chosen_by = ", ".join(f"seed {s}: {m}" for s, m in pick["methods"].items())
            lines += [(f"The meta-learner chosen on validation ({chosen_by}) against each baseline, per-user "
                       "differences pooled over the seeds' users (mean ± SE; win: beyond 2 SE in its favour):"), "",
                      "| baseline | users | ΔMAE | | ΔRMSE | | ΔnDCG@3 | | ΔMAE decoded | |",
                      "|---|---:|---:|---|---:|---|---:|---|---:|---|"]
            for base, cells in pick["vs"].items():
                users = next(iter(cells.values()))[2]
                row = [f"{_difference(cells[m])} | {cells[m][3]}" if m in cells else "– |"
                       for m in PAIRED_METRICS]
                lines.append(f"| {base} | {users} | " + " | ".join(row) + " |")
            lines.append("")
            if pick.get("across_seeds"):
                seeds = len(pick["methods"])
                lines += [("The same differences with the variation between seeds counted: each seed's paired "
                           "mean ± SE combined by DerSimonian–Laird random effects (Q: Cochran's heterogeneity, "
                           f"about {seeds - 1} where the seeds agree within their standard errors; from {seeds} "
                           "seeds, a rough check). The pooled SE above treats each seed's trained models as "
                           "fixed; this one does not:"), "",
                          "| baseline | ΔMAE | Q | | ΔRMSE | Q | | ΔnDCG@3 | Q | | ΔMAE decoded | Q | |",
                          "|---|---:|---:|---|---:|---:|---|---:|---:|---|---:|---:|---|"]
                for base, cells in pick["across_seeds"].items():
                    row = [f"{_difference(cells[m])} | {_cell(cells[m][2], 1)} | {cells[m][3]}" if m in cells
                           else "– | – |" for m in PAIRED_METRICS]
                    lines.append(f"| {base} | " + " | ".join(row) + " |")
                lines.append("")
    taught = summary.get("distilled")
    if taught:
        teacher = taught["teacher"]
        lines += [f"Students distilled from {teacher} (α = {taught['alpha']:g}) against it and finetune, per-user "
                  "differences pooled over the seeds' users (mean ± SE):", "",
                  f"| scenario | student | users | ΔMAE vs {teacher} | ΔMAE vs finetune | ΔnDCG@3 vs {teacher} | "
                  "ΔnDCG@3 vs finetune |", "|---|---|---:|---:|---:|---:|---:|"]
        for scenario, students in taught["paired"].items():
            for student, bases in students.items():
                users = next(iter(next(iter(bases.values())).values()))[2]
                cells = [_difference(bases[b][m]) if m in bases.get(b, {}) else "–"
                         for m in ("mae", "ndcg@3") for b in (teacher, "finetune")]
                lines.append(f"| {scenario} | {student} | {users} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
