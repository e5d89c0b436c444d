"""Figures of a training run: learning curves, adaptation curve, scenario bars.

A run directory written by ``jaxmeta train --out DIR`` may hold three files, and
each gives one figure:

* ``metrics.jsonl`` (:func:`read_metrics`, :func:`learning_curves`): one JSON
  record per line, ``{"step", "wall_time", "kind": "train" | "valid", ...}``;
  train records add ``"loss"`` (the meta-training objective) and
  ``"users_per_s"``, validation records add ``"loss"`` (mean query MSE of the
  validation users after adaptation), ``"mae"`` and ``"rmse"``.
* ``adaptation.json`` (:func:`adaptation_curve`): ``{"inner_steps": [0, ..., K],
  "curves": {label: [query loss after k inner steps, ...]}, "scenario": name}``.
* ``eval.json`` (:func:`scenario_bars`): ``{scenario: {method: {metric: value
  or null}}}``.

:func:`write_plots` reads whichever of them exist and writes one PNG for each.
:func:`validation_curves` draws the model selection of ``jaxmeta reproduce`` folders
(``results.json``, read by :func:`read_results`): validation MAE against steps.

Every function here is pure: it builds a :class:`matplotlib.figure.Figure`
directly, never through ``pyplot``, so no GUI backend, no global figure
registry and nothing to close. matplotlib is an optional dependency
(``pip install 'jaxmeta[plot]'``), imported only when a figure is drawn, so
``import jaxmeta.plots`` and :func:`read_metrics` work without it.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS_FILE = "metrics.jsonl"
ADAPTATION_FILE = "adaptation.json"
EVAL_FILE = "eval.json"
OUTPUTS = {
    METRICS_FILE: "learning_curves.png",
    ADAPTATION_FILE: "adaptation.png",
    EVAL_FILE: "scenarios.png",
}
"""The input file in a run directory -> the PNG that :func:`write_plots` makes of it."""
DPI = 120

__all__ = (
    "ADAPTATION_FILE",
    "DPI",
    "EVAL_FILE",
    "METRICS_FILE",
    "OUTPUTS",
    "adaptation_curve",
    "learning_curves",
    "read_metrics",
    "read_results",
    "scenario_bars",
    "stream_curves",
    "validation_curves",
    "write_plots",
)

_KINDS = ("train", "valid")
_TITLE_SIZE = 12
_LABEL_SIZE = 11
_TICK_SIZE = 10
_LEGEND_SIZE = 9
_MSE_LABEL = "MSE (rating²)"
_MAX_MARKERS = 40  # above this many points, markers only clutter a line
_TUNED = ("finetune_lr", "adapt_reg")  # a setting chosen with the checkpoint: the curve is "method@setting"


# ----------------------------------------------------------------------------- helpers


def _matplotlib():
    """The two matplotlib names used here, imported on first use."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as err:
        raise ImportError("jaxmeta.plots needs matplotlib: pip install 'jaxmeta[plot]'") from err
    return Figure, MaxNLocator


def _float(value: Any) -> float:
    """A metric value as a float; ``None`` (JSON null) becomes ``nan``, a gap in a line."""
    return math.nan if value is None else float(value)


def _finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (``None``, ``nan`` and booleans are not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _style(ax, *, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=_TITLE_SIZE)
    ax.set_xlabel(xlabel, fontsize=_LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=_LABEL_SIZE)
    ax.tick_params(labelsize=_TICK_SIZE)
    ax.grid(True, alpha=0.3)


def _line(ax, x: Sequence[float], y: Sequence[float], label: str, **kwargs) -> None:
    marker = "o" if len(x) <= _MAX_MARKERS else None
    ax.plot(x, y, label=label, marker=marker, markersize=4, linewidth=1.5, **kwargs)


def _legend_if_several(ax) -> None:
    if len(ax.get_legend_handles_labels()[1]) > 1:
        ax.legend(fontsize=_LEGEND_SIZE)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err}): rerun the command that wrote it.") from err


# ----------------------------------------------------------------------------- reading


def read_results(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The ``results.json`` of a ``jaxmeta reproduce`` folder, by panel: ``{"": results}`` for one run,
    ``{"seed N": results, ...}`` for a folder of ``--seeds`` runs (``seed-N/results.json``), seeds in order.

    Raises:
      FileNotFoundError: the folder holds neither (the message names it).
      ValueError: a file is not valid JSON.
    """
    folder = Path(folder)
    if (folder / "results.json").is_file():
        return {"": _load_json(folder / "results.json")}
    seeds = sorted((int(p.parent.name.removeprefix("seed-")), p) for p in folder.glob("seed-*/results.json")
                   if p.parent.name.removeprefix("seed-").isdigit())
    if not seeds:
        raise FileNotFoundError(f"read_results: {folder} holds no results.json and no seed-N/results.json: pass "
                                "the --out-dir folder of jaxmeta reproduce.")
    return {f"seed {seed}": _load_json(path) for seed, path in seeds}


def read_metrics(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Reads a ``metrics.jsonl`` file into train and validation records.

    A resumed run restarts from a checkpoint and appends records for steps it
    had logged before, so for each ``(kind, step)`` only the last record in file
    order is kept (the one the resumed run wrote); each list is then sorted by
    step. Blank lines are skipped. A line that is not valid JSON (the
    half-written last line of a run that crashed) is skipped with a warning
    naming its line number. Records of another ``kind`` are left out.

    Args:
      path: the ``metrics.jsonl`` file (not the run directory).

    Returns:
      ``{"train": [record, ...], "valid": [record, ...]}``, the records as
      written, each list sorted by ``"step"``, one record per step.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: a line is JSON but not a record with an integer ``"step"``
        and a ``"kind"`` (the file is not a ``metrics.jsonl``).
    """
    path = Path(path)
    last: dict[str, dict[int, dict[str, Any]]] = {kind: {} for kind in _KINDS}
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                warnings.warn(f"{path}: line {number} is not valid JSON ({err.msg}); skipping it.", stacklevel=2)
                continue
            step = record.get("step") if isinstance(record, dict) else None
            if not isinstance(step, int) or isinstance(step, bool) or "kind" not in record:
                raise ValueError(
                    f"{path}: line {number} is not a metrics record ({line.strip()[:80]!r}): each line must be a "
                    "JSON object with an integer 'step' and a 'kind'; pass the metrics.jsonl of `jaxmeta train --out`."
                )
            if record["kind"] in last:
                last[record["kind"]][step] = record  # a later line for the same step replaces the earlier one
    return {kind: [records[s] for s in sorted(records)] for kind, records in last.items()}


# ----------------------------------------------------------------------------- figures


def learning_curves(metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """Meta-training and validation loss against the outer step.

    The top panel shows the meta-training objective of each logged step and
    the validation query MSE; a second panel below, sharing the step axis,
    shows the validation MAE and RMSE. A run without validation records (or
    whose validation records carry no MAE or RMSE) gets the top panel only. A
    ``null`` value is a gap in its line.

    Args:
      metrics: ``{"train": [...], "valid": [...]}`` as returned by
        :func:`read_metrics`; ``"valid"`` may be absent or empty.

    Returns:
      The figure: one or two axes, the loss axes first.

    Raises:
      ValueError: there is no train record to plot.
      ImportError: matplotlib is not installed.
    """
    train = list(metrics.get("train", ()))
    valid = list(metrics.get("valid", ()))
    if not train:
        raise ValueError(
            f"learning_curves: no train records (got {len(valid)} validation record(s)); pass "
            "read_metrics(run_dir / 'metrics.jsonl') of a run that logged at least one training step."
        )
    errors = [key for key in ("mae", "rmse") if any(_finite(r.get(key)) for r in valid)]
    Figure, MaxNLocator = _matplotlib()
    fig = Figure(figsize=(7.0, 6.0 if errors else 4.0), layout="constrained")
    axes = fig.subplots(2 if errors else 1, 1, sharex=True, squeeze=False)[:, 0]

    loss_ax = axes[0]
    _line(loss_ax, [r["step"] for r in train], [_float(r.get("loss")) for r in train], "meta-training objective")
    if valid:
        _line(loss_ax, [r["step"] for r in valid], [_float(r.get("loss")) for r in valid],
              "validation query loss (after adaptation)")
    seconds = train[-1].get("wall_time")
    took = f", {seconds:.0f} s" if _finite(seconds) else ""
    _style(loss_ax, title=f"Meta-training ({train[-1]['step']} outer steps{took})",
           xlabel="outer step", ylabel=f"loss: {_MSE_LABEL}")
    _legend_if_several(loss_ax)

    if errors:
        error_ax = axes[1]
        for key in errors:
            _line(error_ax, [r["step"] for r in valid], [_float(r.get(key)) for r in valid],
                  f"validation {key.upper()}")
        _style(error_ax, title="Validation error after adaptation", xlabel="outer step",
               ylabel="error (rating points)")
        _legend_if_several(error_ax)
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def adaptation_curve(adaptation: Mapping[str, Any]) -> Figure:
    """Query loss of new users against the number of inner (adaptation) steps.

    One line with markers per curve, e.g. the meta-learned initialisation next
    to a pretrained model fine-tuned the same way: the gap at 0 steps is what
    the initialisation alone buys, the slope what the inner steps buy.

    Args:
      adaptation: the contents of ``adaptation.json``: ``{"inner_steps":
        [0, 1, ..., K], "curves": {label: [query loss at each entry of
        inner_steps]}, "scenario": name}`` (``"scenario"`` is optional and goes
        in the title).

    Returns:
      The figure, one axes; a legend when there is more than one curve (a single
      curve's label goes in the title instead).

    Raises:
      ValueError: no curve, no inner steps, or a curve whose length differs from
        ``inner_steps``.
      TypeError: ``adaptation`` is not a dict.
      ImportError: matplotlib is not installed.
    """
    if not isinstance(adaptation, Mapping):
        raise TypeError(
            f"adaptation_curve: got a {type(adaptation).__name__}, not a dict: pass the contents of adaptation.json."
        )
    steps = list(adaptation.get("inner_steps", ()))
    curves = dict(adaptation.get("curves", {}))
    if not steps or not curves:
        raise ValueError(
            f"adaptation_curve: {len(steps)} inner step(s) and {len(curves)} curve(s): pass the contents of "
            "adaptation.json, {'inner_steps': [0, ..., K], 'curves': {label: [query loss, ...]}} with at "
            "least one curve."
        )
    for label, losses in curves.items():
        if len(losses) != len(steps):
            raise ValueError(
                f"adaptation_curve: curve {label!r} has {len(losses)} values but inner_steps has {len(steps)}: "
                "pass one query loss per entry of inner_steps."
            )
    Figure, MaxNLocator = _matplotlib()
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for label, losses in curves.items():
        ax.plot(steps, [_float(v) for v in losses], label=label, marker="o", markersize=5, linewidth=1.5)
    title = "Adapting to new users"
    if adaptation.get("scenario"):
        title += f" ({adaptation['scenario']})"
    if len(curves) == 1:
        title += f"\n{next(iter(curves))}"
    _style(ax, title=title, xlabel="inner steps (gradient steps on the support set)",
           ylabel=f"query loss: {_MSE_LABEL}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_if_several(ax)
    return fig


def _value_label(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 10 else f"{value:,.0f}"


def _metric_label(metric: str) -> str:
    if metric in ("mae", "rmse"):
        return f"{metric} (rating points, lower is better)"
    if metric.startswith("ndcg"):
        return f"{metric} (higher is better)"
    if metric.endswith("seconds"):
        return f"{metric} (s)"
    if metric.endswith("_per_s"):
        return f"{metric} ({metric.split('_per_s')[0]}/s)"
    return metric


def scenario_bars(results: Mapping[str, Mapping[str, Mapping[str, Any]]], metric: str = "mae") -> Figure:
    """Grouped bars of one metric: one group per scenario, one bar per method.

    A method whose ``metric`` is ``null`` (or absent, or not finite) in a
    scenario has no bar there, and the remaining bars of that group close up
    around its centre. Each method keeps one colour in every group. Bars start
    at zero and carry their value.

    Args:
      results: the contents of ``eval.json``, ``{scenario: {method: {metric:
        value or null}}}``; groups and bars follow its order.
      metric: the metric to plot, e.g. ``"mae"``, ``"rmse"`` or ``"ndcg@5"``.

    Returns:
      The figure, one axes whose patches are exactly the bars (one per
      ``(scenario, method)`` with a value), the legend on the figure at the right.

    Raises:
      ValueError: no method has a value of ``metric`` in any scenario (the
        message lists the metrics that do have one).
      TypeError: a scenario is not a ``{method: {metric: value}}`` dict.
      ImportError: matplotlib is not installed.
    """
    for scenario, methods in results.items():
        if not isinstance(methods, Mapping) or not all(isinstance(row, Mapping) for row in methods.values()):
            raise TypeError(
                f"scenario_bars: scenario {scenario!r} is {methods!r:.80}, not {{method: {{metric: value}}}}: "
                "pass the contents of eval.json."
            )
    bars = {
        scenario: {method: row[metric] for method, row in methods.items() if _finite(row.get(metric))}
        for scenario, methods in results.items()
    }
    if not any(bars.values()):
        available = sorted({k for methods in results.values() for row in methods.values()
                            for k, v in row.items() if _finite(v)})
        raise ValueError(
            f"scenario_bars: no method has a value of metric {metric!r} in any of the {len(results)} "
            f"scenario(s); available metrics: {available}. Pass metric= one of those."
        )
    methods = list(dict.fromkeys(m for group in bars.values() for m in group))
    Figure, _ = _matplotlib()
    width = 0.8 / max(len(group) for group in bars.values())
    fig = Figure(figsize=(min(14.0, max(6.4, 2.5 + 0.3 * sum(map(len, bars.values())))), 4.4), layout="constrained")
    ax = fig.subplots()
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    labelled: set[str] = set()
    for centre, group in enumerate(bars.values()):
        for i, (method, value) in enumerate(group.items()):
            container = ax.bar(centre + (i - (len(group) - 1) / 2) * width, value, width * 0.95,
                               color=colours[method], label=None if method in labelled else method)
            labelled.add(method)
            ax.bar_label(container, fmt=_value_label, fontsize=7, rotation=90, padding=2)
    ax.set_xticks(range(len(bars)), list(bars))
    ax.margins(y=0.15)  # room for the value labels above the tallest bar
    _style(ax, title=f"{metric} by scenario", xlabel="scenario", ylabel=_metric_label(metric))
    ax.grid(False, axis="x")
    fig.legend(loc="outside right upper", fontsize=_LEGEND_SIZE, title="method", title_fontsize=_LEGEND_SIZE)
    return fig


def stream_curves(stream: Mapping[str, Any], metrics: Sequence[str] = ("mae", "rmse", "ndcg@3")) -> Figure:
    """The streaming protocol's error against ratings seen, and the cost of an update.

    One panel per metric and one for the milliseconds per user-update; one
    colour per method, a solid line for ``readapt``, dashed for
    ``incremental``, dotted for a method that does not adapt. The x axis (ratings
    seen) is logarithmic. Users drop out as ``n`` grows (too few later
    ratings): the title gives the users of each ``n``.

    Args:
      stream: the ``"stream"`` part of ``stream.json`` (:func:`jaxmeta.stream.replay`):
        ``{"users": {n: users}, "rows": [{"n", "method", "mode", metric..., "ms_per_user"}]}``.
      metrics: the metric panels.

    Returns:
      The figure: ``len(metrics) + 1`` axes, one line per (method, mode) on each
      metric panel, and one per updating (method, mode) on the timing panel.

    Raises:
      ValueError: no rows, or a metric no row has.
      TypeError: ``stream`` is not a dict.
      ImportError: matplotlib is not installed.
    """
    if not isinstance(stream, Mapping):
        raise TypeError(f"stream_curves: got a {type(stream).__name__}: pass the 'stream' part of stream.json.")
    rows = list(stream.get("rows", ()))
    if not rows:
        raise ValueError("stream_curves: no rows: pass the 'stream' part of stream.json, "
                         "{'users': ..., 'rows': [...]}.")
    for metric in metrics:
        if not any(_finite(r.get(metric)) for r in rows):
            raise ValueError(f"stream_curves: no row has a value of {metric!r}; pass metrics among "
                             f"{sorted({k for r in rows for k, v in r.items() if _finite(v) and k != 'n'})}.")
    lines: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        lines.setdefault((row["method"], row["mode"]), []).append(row)
    methods = list(dict.fromkeys(method for method, _ in lines))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    styles = {"readapt": "-", "incremental": "--"}
    users = {int(n): count for n, count in stream.get("users", {}).items()}
    ns = sorted({int(r["n"]) for r in rows})
    Figure, _ = _matplotlib()
    fig = Figure(figsize=(4.2 * (len(metrics) + 1), 4.6), layout="constrained")
    axes = fig.subplots(1, len(metrics) + 1)
    for ax, metric in zip(axes, [*metrics, "ms_per_user"]):
        scale = 1e3 if metric == "ms_per_user" else 1.0  # drawn in microseconds: readable ticks
        for (method, mode), points in lines.items():
            if metric == "ms_per_user" and not any(_finite(p.get(metric)) for p in points):
                continue
            points = sorted(points, key=lambda p: int(p["n"]))
            _line(ax, [int(p["n"]) for p in points], [scale * _float(p.get(metric)) for p in points],
                  f"{method} ({mode})", color=colours[method], linestyle=styles.get(mode, ":"))
        ax.set_xscale("log")
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        if metric == "ms_per_user":
            # imported after _matplotlib(), which says how to install matplotlib when it is missing
            from matplotlib.ticker import FuncFormatter

            ax.set_yscale("log")
            for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                axis(FuncFormatter(lambda value, _: f"{value:g}"))
            _style(ax, title="cost of an update", xlabel="ratings seen",
                   ylabel="µs per user-update (one vmapped call / users)")
        else:
            _style(ax, title=f"{metric} of the next ratings", xlabel="ratings seen", ylabel=_metric_label(metric))
    if users:
        fig.suptitle("users at each n: " + ", ".join(f"{n}: {users[n]}" for n in ns if n in users),
                     fontsize=_LABEL_SIZE)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=_LEGEND_SIZE, title="method (mode)",
               title_fontsize=_LEGEND_SIZE)
    return fig


def validation_curves(panels: Mapping[str, Mapping[str, Mapping[str, Any]]], *, set_name: str = "users",
                      methods: Sequence[str] | None = None) -> Figure:
    """Validation MAE against outer steps for ``jaxmeta reproduce`` runs, the classic baselines as levels.

    In each panel, one line per trained method of each run, at the setting model
    selection chose (``finetune`` at its chosen rate, ``multitask`` at its chosen
    ridge: the curve ``"finetune@0.03"``), with a star at that checkpoint (a
    missing value, a check whose predictions were not finite, is a gap); and one dashed level per
    method without steps (``bias``, ``mf_foldin``: chosen on a grid, not trained by
    steps), from the panel's first run. The evidence that a scenario was or was
    not won on validation, and where training stopped helping.

    Args:
      panels: ``{panel title: {run label: results}}``, each ``results`` the
        contents of a ``results.json`` written by :func:`jaxmeta.reproduce.reproduce`;
        one panel per entry, side by side. A run label of ``""`` names lines by
        method alone.
      set_name: the validation set: ``"users"``, or ``"new_items"`` for a run with
        ``--valid-items``.
      methods: the trained methods drawn (default every one with a curve); the
        levels are drawn whatever it is.

    Returns:
      The figure, one axes per panel.

    Raises:
      ValueError: no panels, or a panel in which no run has a curve on ``set_name``
        (the message names the sets and methods there are).
      TypeError: a run is not a results dict.
      ImportError: matplotlib is not installed.
    """
    if not panels:
        raise ValueError("validation_curves: no panels; pass {title: {label: results}}.")
    drawn: dict[str, list[tuple[str, list, tuple | None]]] = {}
    levels: dict[str, dict[str, float]] = {}
    for title, runs in panels.items():
        lines = drawn.setdefault(title, [])
        for label, results in runs.items():
            if not isinstance(results, Mapping) or "curves" not in results or "selected" not in results:
                raise TypeError(f"validation_curves: run {label!r} of panel {title!r} is not the contents of a "
                                "results.json written by jaxmeta reproduce (no 'curves' and 'selected').")
            for method, pick in results["selected"].items():
                pick = pick if set_name == "users" else pick.get(set_name)
                if not isinstance(pick, Mapping) or not _finite(pick.get("valid_mae")):
                    continue
                if pick.get("step") is None:
                    if title not in levels or method not in levels[title]:
                        levels.setdefault(title, {})[method] = float(pick["valid_mae"])
                    continue
                if methods is not None and method not in methods:
                    continue
                setting = [pick[key] for key in _TUNED if key in pick]
                name = f"{method}@{setting[0]:g}" if setting else method
                points = (results["curves"].get(name) or {}).get(set_name)
                if points:
                    line = label if label and methods is not None and len(methods) == 1 else (
                        f"{label}: {name}" if label else name)
                    lines.append((line, points, (pick["step"], pick["valid_mae"])))
        if not lines:
            found = sorted({s for results in runs.values() for per_set in results["curves"].values() for s in per_set})
            raise ValueError(f"validation_curves: panel {title!r} has no curve on set_name={set_name!r} for methods="
                             f"{methods!r}; its runs have curves on {found} for "
                             f"{sorted({m for r in runs.values() for m in r['curves']})}.")
    Figure, _ = _matplotlib()
    fig = Figure(figsize=(5.6 * len(panels) + 1.6, 4.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, lines) in zip(axes, drawn.items()):
        for i, (label, points, chosen) in enumerate(lines):
            _line(ax, [int(p[0]) for p in points], [_float(p[1]) for p in points], label, color=f"C{i % 10}")
            ax.plot(*chosen, marker="*", markersize=12, color=f"C{i % 10}", linestyle="none")
        for j, (method, value) in enumerate(levels.get(title, {}).items()):
            ax.axhline(value, color="0.2", linestyle=("--", ":", "-.")[j % 3], linewidth=1.2,
                       label=f"{method} ({value:.4f})")
        _style(ax, title=title or f"validation ({set_name})", xlabel="outer step",
               ylabel="validation MAE (lower is better)")
        ax.legend(fontsize=_LEGEND_SIZE)
    return fig


# ----------------------------------------------------------------------------- files


def write_plots(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, metric: str = "mae",
    skip: Sequence[str] = (),
) -> list[Path]:
    """Writes a PNG of each figure whose input file exists in a run directory.

    ``metrics.jsonl`` gives ``learning_curves.png``, ``adaptation.json`` gives
    ``adaptation.png`` and ``eval.json`` gives ``scenarios.png`` (:data:`OUTPUTS`),
    each at :data:`DPI` dots per inch. Every figure is built before any file is
    written, so a bad input leaves no partial set of new plots.

    Args:
      run_dir: the directory written by ``jaxmeta train --out``.
      out_dir: where to write; created if missing. Default ``run_dir / "plots"``.
      metric: the metric of ``scenarios.png`` (see :func:`scenario_bars`).
      skip: input files not to plot (e.g. stale ones); their PNGs in
        ``out_dir`` from an earlier call are deleted rather than left stale.

    Returns:
      The paths written, in the order above.

    Raises:
      FileNotFoundError: ``run_dir`` holds none of the three files.
      ValueError, TypeError: an input file is malformed; the message names it.
      ImportError: matplotlib is not installed.
    """
    run_dir = Path(run_dir)
    out_dir = run_dir / "plots" if out_dir is None else Path(out_dir)
    unknown = sorted(set(skip) - set(OUTPUTS))
    if unknown:
        raise ValueError(f"write_plots: skip={list(skip)}: {unknown} are not inputs; pass some of {list(OUTPUTS)}.")
    found = [name for name in OUTPUTS if (run_dir / name).is_file() and name not in skip]
    if not found and not skip:
        raise FileNotFoundError(
            f"write_plots: {run_dir} holds none of {', '.join(OUTPUTS)}: pass the directory given to "
            "`jaxmeta train --out`."
        )
    figures = {}
    for name in found:
        path = run_dir / name
        try:
            if name == METRICS_FILE:
                figures[name] = learning_curves(read_metrics(path))
            elif name == ADAPTATION_FILE:
                figures[name] = adaptation_curve(_load_json(path))
            else:
                figures[name] = scenario_bars(_load_json(path), metric)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{path}: {err}") from err
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in skip:
        (out_dir / OUTPUTS[name]).unlink(missing_ok=True)
    written = []
    for name, fig in figures.items():
        target = out_dir / OUTPUTS[name]
        fig.savefig(target, dpi=DPI)
        written.append(target)
    return written
