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

__all__ = ("format_markdown", "paired")


def paired(per_user: dict[str, dict[str, dict[str, np.ndarray]]], algos: Sequence[str]) -> dict[str, Any]:
    """``{scenario: {algo: {baseline: {metric: [mean, standard error]}}}}``: each
    meta-learner minus ``no_adaptation`` and ``finetune``, paired over the
    scenario's users (:func:`jaxmeta.evaluation.paired_difference`)."""
    out: dict[str, Any] = {}
    for s, methods in per_user.items():
        for algo in algos:
            for base in ("no_adaptation", "finetune"):
                if algo in methods and base in methods:
                    for metric in ("mae", "ndcg@3"):
                        mean, se, _ = paired_difference(methods[algo][metric], methods[base][metric])
                        cell = out.setdefault(s, {}).setdefault(algo, {}).setdefault(base, {})
                        cell[metric] = [round(mean, 5), round(se, 5)]
    return out


def _cell(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def format_markdown(results: dict[str, Any], *, command: str, seconds: float | None = None,
                    users: dict[str, int] | None = None, train_users: int | None = None,
                    valid_users: int | None = None, item_users: int | None = None) -> str:
    """``results`` (as :func:`reproduce` returns it) as Markdown: the command,
    the checkpoints model selection chose, one table per scenario, then a note
    for each scenario where no meta-learner beats the per-item mean on RMSE."""
    text = f", item text by {results['text']}" if results.get("text") else ""
    if results.get("text") and results.get("text_tokens"):
        text += f" (at most {results['text_tokens']} tokens)"
    lines = [f"# {results['dataset']}, {results['split']}{text}", "", "```", command, "```", ""]
    if seconds is not None:
        counts = [f"{train_users} meta-training users"] if train_users else []
        counts += [f"{valid_users} validation users"] if valid_users else []
        counts += [f"{item_users} users rating the held-out items"] if item_users else []
        lines += [f"Whole run: {seconds:.0f} s" + (f"; {', '.join(counts)}." if counts else "."), ""]
    if results.get("selected"):
        items = any("new_items" in pick for pick in results["selected"].values())
        where = " on the validation users"
        where += ", and for item_cold and user_item_cold on the held-out items" if items else ""
        lines += [f"Checkpoints chosen{where} (query MAE):",
                  "", "| method | step | validation MAE | rate |", "|---|---:|---:|---:|"]
        for method, pick in results["selected"].items():
            for name, p in ((method, pick), (f"{method} (new items)", pick.get("new_items"))):
                if p is not None:
                    rate = p.get("inner_lr", p.get("finetune_lr"))
                    lines.append(f"| {name} | {p['step']} | {p['valid_mae']:.4f} | {'–' if rate is None else rate} |")
        lines += ["", "Rate: the inner rate of a meta-learner, the per-user rate chosen for `finetune` and `mf`.", ""]
    notes = []
    for scenario, methods in results["results"].items():
        count = f" ({users[scenario]} users)" if users and scenario in users else ""
        lines += [f"## {scenario}{count}", "",
                  "| method | MAE | RMSE | nDCG@3 | nDCG@5 | train s | users/s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for method, m in methods.items():
            lines.append(f"| {method} | {_cell(m['mae'], 4)} | {_cell(m['rmse'], 4)} | {_cell(m['ndcg@3'], 4)} | "
                         f"{_cell(m['ndcg@5'], 4)} | {_cell(m['train_seconds'], 1)} | {_cell(m['users_per_s'], 0)} |")
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
    if results.get("paired"):
        lines += ["## Meta-learners against the MeLU baselines, paired over users", "",
                  ("Mean per-user difference (meta-learner minus baseline) ± its standard error. "
                  "Negative ΔMAE and positive ΔnDCG@3 favour the meta-learner; a difference within about "
                  "two standard errors of 0 is not a clear win either way."), "",
                  ("| scenario | method | ΔMAE vs no_adaptation | ΔMAE vs finetune | ΔnDCG@3 vs no_adaptation "
                  "| ΔnDCG@3 vs finetune |"), "|---|---|---:|---:|---:|---:|"]
        for scenario, algos in results["paired"].items():
            for algo, bases in algos.items():
                cells = [f"{bases[b][m][0]:+.4f} ± {bases[b][m][1]:.4f}" if b in bases else "–"
                         for m in ("mae", "ndcg@3") for b in ("no_adaptation", "finetune")]
                lines.append(f"| {scenario} | {algo} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [("MAE and RMSE in stars and nDCG with the gain 2^r − 1 are per user over the 10 query items, "
               "then averaged over users; – where a value does not apply."), ""]
    if notes:
        lines += ["## Against the per-item mean (RMSE)", "", *notes, ""]
    return "\n".join(lines)
