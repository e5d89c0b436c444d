"""jaxmeta.plots on small synthetic run directories: what is read, what is drawn."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.image import imread

from jaxmeta import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

ADAPTATION = {
    "inner_steps": [0, 1, 2, 3],
    "curves": {
        "meta-learned (maml)": [1.20, 0.95, 0.90, 0.88],
        "pretrained, fine-tuned (no meta-learning)": [1.10, 1.05, 1.02, 1.00],
    },
    "scenario": "user_cold",
}

EVAL = {
    "warm": {
        "maml": {"mae": 0.80, "rmse": 1.00, "ndcg@3": 0.70},
        "no_adaptation": {"mae": 0.85, "rmse": 1.05, "ndcg@3": 0.68},
        "popularity": {"mae": None, "rmse": None, "ndcg@3": 0.60},
    },
    "user_cold": {
        "maml": {"mae": 0.90, "rmse": 1.10, "ndcg@3": 0.65},
        "item_mean": {"mae": 0.95, "rmse": 1.20, "ndcg@3": None},
        "popularity": {"mae": None, "rmse": None, "ndcg@3": 0.55},
    },
}


def train(step, loss, wall_time=None):
    return {"step": step, "wall_time": float(step) if wall_time is None else wall_time, "kind": "train",
            "loss": loss, "users_per_s": 100.0}


def valid(step, loss, mae, rmse):
    return {"step": step, "wall_time": float(step), "kind": "valid", "loss": loss, "mae": mae, "rmse": rmse}


def write_jsonl(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def resumed_run():
    """Steps 10..30 logged, a crash, then a resume from the step-20 checkpoint."""
    return [
        train(10, 1.0), train(20, 0.8), valid(20, 0.9, 0.75, 0.95), train(30, 0.7),
        # resumed from step 20: steps 30 and the step-20 validation are logged again
        valid(20, 0.91, 0.76, 0.96), train(30, 0.65), train(40, 0.6), valid(40, 0.85, 0.7, 0.9),
    ]


def legend_labels(legend):
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def assert_labelled(ax):
    assert ax.get_xlabel(), "x axis has no label"
    assert ax.get_ylabel(), "y axis has no label"
    assert ax.get_title(), "axes have no title"


# ----------------------------------------------------------------------------- read_metrics


def test_read_metrics_keeps_the_last_record_of_each_step_sorted(tmp_path):
    path = write_jsonl(tmp_path / "metrics.jsonl", resumed_run())
    metrics = plots.read_metrics(path)
    assert set(metrics) == {"train", "valid"}
    assert [(r["step"], r["loss"]) for r in metrics["train"]] == [(10, 1.0), (20, 0.8), (30, 0.65), (40, 0.6)]
    assert [(r["step"], r["loss"], r["mae"]) for r in metrics["valid"]] == [(20, 0.91, 0.76), (40, 0.85, 0.7)]


def test_read_metrics_sorts_steps_written_out_of_order(tmp_path):
    path = write_jsonl(tmp_path / "metrics.jsonl", [train(30, 0.3), train(10, 0.1), train(20, 0.2)])
    assert [r["loss"] for r in plots.read_metrics(path)["train"]] == [0.1, 0.2, 0.3]


def test_read_metrics_warns_and_skips_a_truncated_last_line(tmp_path):
    records = [train(10, 1.0), train(20, 0.8)]
    path = write_jsonl(tmp_path / "metrics.jsonl", records, tail='\n{"step": 30, "wall_ti')
    with pytest.warns(UserWarning, match=r"line 4 is not valid JSON"):
        metrics = plots.read_metrics(path)
    assert metrics == {"train": records, "valid": []}


def test_read_metrics_rejects_a_json_line_that_is_not_a_record(tmp_path):
    path = write_jsonl(tmp_path / "metrics.jsonl", [train(10, 1.0), {"loss": 0.5}])
    with pytest.raises(ValueError, match=r"line 2 is not a metrics record.*integer 'step'"):
        plots.read_metrics(path)


def test_read_metrics_needs_no_matplotlib_and_plotting_says_how_to_install_it(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "metrics.jsonl", [train(10, 1.0)])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # None in sys.modules makes the import fail
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    metrics = plots.read_metrics(path)
    with pytest.raises(ImportError, match=r"pip install 'jaxmeta\[plot\]'"):
        plots.learning_curves(metrics)


# ----------------------------------------------------------------------------- learning_curves


def test_learning_curves_plots_train_and_validation_by_value(tmp_path):
    metrics = plots.read_metrics(write_jsonl(tmp_path / "metrics.jsonl", resumed_run()))
    fig = plots.learning_curves(metrics)
    loss_ax, error_ax = fig.axes
    for ax in fig.axes:
        assert_labelled(ax)
    assert legend_labels(loss_ax.get_legend()) == [
        "meta-training objective",
        "validation query loss (after adaptation)",
    ]
    assert legend_labels(error_ax.get_legend()) == ["validation MAE", "validation RMSE"]
    train_line, valid_line = loss_ax.get_lines()
    np.testing.assert_array_equal(train_line.get_xdata(), [10, 20, 30, 40])
    np.testing.assert_array_equal(train_line.get_ydata(), [1.0, 0.8, 0.65, 0.6])
    np.testing.assert_array_equal(valid_line.get_ydata(), [0.91, 0.85])
    np.testing.assert_array_equal(error_ax.get_lines()[0].get_ydata(), [0.76, 0.7])
    assert "40 outer steps" in loss_ax.get_title()


def test_learning_curves_without_validation_is_one_panel():
    fig = plots.learning_curves({"train": [train(1, 2.0), train(2, 1.5)], "valid": []})
    (ax,) = fig.axes
    assert_labelled(ax)
    assert ax.get_legend() is None  # one series: no legend
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), [2.0, 1.5])


def test_learning_curves_without_train_records_says_so():
    with pytest.raises(ValueError, match=r"no train records \(got 1 validation record\(s\)\)"):
        plots.learning_curves({"train": [], "valid": [valid(10, 1.0, 0.8, 1.0)]})
    with pytest.raises(ValueError, match="no train records"):
        plots.learning_curves({})


# ----------------------------------------------------------------------------- adaptation_curve


def test_adaptation_curve_one_line_per_label_on_integer_steps():
    fig = plots.adaptation_curve(ADAPTATION)
    (ax,) = fig.axes
    assert_labelled(ax)
    assert "user_cold" in ax.get_title()
    assert legend_labels(ax.get_legend()) == list(ADAPTATION["curves"])
    for line, losses in zip(ax.get_lines(), ADAPTATION["curves"].values(), strict=True):
        assert line.get_marker() not in (None, "None", "")
        np.testing.assert_array_equal(line.get_xdata(), ADAPTATION["inner_steps"])
        np.testing.assert_array_equal(line.get_ydata(), losses)
    ticks = ax.get_xticks()
    np.testing.assert_array_equal(ticks, np.round(ticks))


def test_adaptation_curve_single_curve_names_it_in_the_title():
    fig = plots.adaptation_curve({"inner_steps": [0, 1], "curves": {"maml": [1.0, 0.5]}})
    (ax,) = fig.axes
    assert ax.get_legend() is None
    assert "maml" in ax.get_title()


@pytest.mark.parametrize(
    "adaptation, message",
    [
        ({"inner_steps": [0, 1], "curves": {}}, r"2 inner step\(s\) and 0 curve\(s\)"),
        ({}, r"0 inner step\(s\) and 0 curve\(s\)"),
        ({"inner_steps": [0, 1, 2], "curves": {"maml": [1.0, 0.5]}}, r"'maml' has 2 values but inner_steps has 3"),
    ],
)
def test_adaptation_curve_rejects_bad_input(adaptation, message):
    with pytest.raises(ValueError, match=message):
        plots.adaptation_curve(adaptation)


def test_adaptation_curve_rejects_a_non_dict():
    with pytest.raises(TypeError, match="got a list, not a dict"):
        plots.adaptation_curve([1, 2])


# ----------------------------------------------------------------------------- scenario_bars


@pytest.mark.parametrize("metric", ["mae", "rmse", "ndcg@3"])
def test_scenario_bars_one_bar_per_non_null_pair(metric):
    fig = plots.scenario_bars(EVAL, metric)
    (ax,) = fig.axes
    assert_labelled(ax)
    assert metric in ax.get_ylabel()
    expected = [
        (s, m, row[metric]) for s, methods in EVAL.items() for m, row in methods.items() if row[metric] is not None
    ]
    assert len(ax.patches) == len(expected)
    assert sorted(p.get_height() for p in ax.patches) == sorted(v for _, _, v in expected)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(EVAL)
    methods = list(dict.fromkeys(m for _, m, _ in expected))
    (legend,) = fig.legends
    assert legend_labels(legend) == methods


def test_scenario_bars_groups_bars_around_their_scenario():
    fig = plots.scenario_bars(EVAL, "mae")
    centres = sorted(p.get_x() + p.get_width() / 2 for p in fig.axes[0].patches)
    # warm (tick 0) has maml and no_adaptation; user_cold (tick 1) has maml and item_mean
    assert centres[0] < 0 < centres[1] < centres[2] < 1 < centres[3]
    assert centres[0] + centres[1] == pytest.approx(0.0)
    assert centres[2] + centres[3] == pytest.approx(2.0)


def test_scenario_bars_without_the_metric_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"metric 'ndcg@10'.*available metrics: \['mae', 'ndcg@3', 'rmse'\]"):
        plots.scenario_bars(EVAL, "ndcg@10")
    only_null = {"warm": {"popularity": {"mae": None, "ndcg@3": 0.6}}}
    with pytest.raises(ValueError, match=r"metric 'mae'.*available metrics: \['ndcg@3'\]"):
        plots.scenario_bars(only_null)


def test_scenario_bars_rejects_a_malformed_table():
    with pytest.raises(TypeError, match="scenario 'warm' is"):
        plots.scenario_bars({"warm": [0.8, 0.9]})


# ----------------------------------------------------------------------------- write_plots


def full_run(run_dir):
    run_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(run_dir / "metrics.jsonl", resumed_run())
    (run_dir / "adaptation.json").write_text(json.dumps(ADAPTATION))
    (run_dir / "eval.json").write_text(json.dumps(EVAL))
    return run_dir


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width = imread(path).shape[:2]
    assert height > 100 and width > 100


def test_write_plots_writes_one_png_per_input(tmp_path):
    run_dir = full_run(tmp_path / "run")
    pyplot_before = "matplotlib.pyplot" in sys.modules
    written = plots.write_plots(run_dir)
    plots_dir = run_dir / "plots"
    assert written == [plots_dir / name for name in ("learning_curves.png", "adaptation.png", "scenarios.png")]
    for path in written:
        assert_png(path)
    # the learning curves are 7 x 6 inches at 120 dpi
    assert imread(written[0]).shape[:2] == (6 * plots.DPI, 7 * plots.DPI)
    assert pyplot_before or "matplotlib.pyplot" not in sys.modules


@pytest.mark.parametrize("name", ["metrics.jsonl", "adaptation.json", "eval.json"])
def test_write_plots_only_for_the_inputs_that_exist(tmp_path, name):
    run_dir = full_run(tmp_path / "run")
    for other in plots.OUTPUTS:
        if other != name:
            (run_dir / other).unlink()
    out_dir = tmp_path / "figures" / "nested"
    written = plots.write_plots(run_dir, out_dir)
    assert written == [out_dir / plots.OUTPUTS[name]]
    assert sorted(p.name for p in out_dir.iterdir()) == [plots.OUTPUTS[name]]
    assert_png(written[0])


def test_write_plots_without_inputs_names_the_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"empty holds none of metrics.jsonl, adaptation.json, eval.json"):
        plots.write_plots(tmp_path / "empty")
    assert not (tmp_path / "empty" / "plots").exists()


def test_write_plots_names_a_malformed_file_and_writes_nothing(tmp_path):
    run_dir = full_run(tmp_path / "run")
    (run_dir / "eval.json").write_text('{"warm": ')
    with pytest.raises(ValueError, match=r"eval.json: not valid JSON"):
        plots.write_plots(run_dir)
    assert not (run_dir / "plots").exists()


def test_write_plots_passes_the_metric_on(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "eval.json").write_text(json.dumps(EVAL))
    with pytest.raises(ValueError, match=r"metric 'ndcg@10'"):
        plots.write_plots(run_dir, metric="ndcg@10")
    assert_png(plots.write_plots(run_dir, metric="ndcg@3")[0])


# ----------------------------------------------------------------------------- validation_curves (jaxmeta reproduce)


def reproduced(shift=0.0):
    """A results.json of jaxmeta reproduce, cut to what the validation curves read: finetune chose rate 0.03 at
    step 200 (held-out items: rate 0.1 at step 100), ridge step 300; bias and mf_foldin are grid choices."""
    curve = lambda values: [[100 * (i + 1), v + shift] for i, v in enumerate(values)]  # noqa: E731
    return {
        "curves": {
            "ridge": {"users": curve([0.74, 0.73, 0.72, 0.75]), "new_items": curve([0.80, 0.79, 0.81, 0.82])},
            "finetune@0.03": {"users": curve([0.76, 0.745, 0.75, 0.76]), "new_items": curve([0.83, 0.84, 0.84, 0.85])},
            "finetune@0.1": {"users": curve([0.77, 0.76, 0.76, 0.77]), "new_items": curve([0.82, 0.83, 0.83, 0.84])},
        },
        "selected": {
            "bias": {"step": None, "valid_mae": 0.75, "new_items": {"step": None, "valid_mae": 0.84}},
            "mf_foldin": {"step": None, "valid_mae": 0.73, "new_items": {"step": None, "valid_mae": 0.84}},
            "ridge": {"step": 300, "valid_mae": 0.72 + shift, "new_items": {"step": 200, "valid_mae": 0.79 + shift}},
            "finetune": {"step": 200, "valid_mae": 0.745 + shift, "finetune_lr": 0.03,
                         "new_items": {"step": 100, "valid_mae": 0.82 + shift, "finetune_lr": 0.1}},
        },
    }


def lines_of(ax):
    """``{label: (x, y)}`` of the drawn lines with a label (the stars are unlabelled)."""
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()
            if not line.get_label().startswith("_")}


@pytest.mark.parametrize("set_name, finetune, star", [("users", "finetune@0.03", (200, 0.745)),
                                                       ("new_items", "finetune@0.1", (100, 0.82))])
def test_validation_curves_draw_each_chosen_setting_its_checkpoint_and_the_baselines_as_levels(set_name, finetune,
                                                                                               star):
    fig = plots.validation_curves({"": {"": reproduced()}}, set_name=set_name)
    (ax,) = fig.axes
    assert_labelled(ax)
    drawn = lines_of(ax)
    assert set(drawn) == {"ridge", finetune, "bias (0.7500)" if set_name == "users" else "bias (0.8400)",
                          "mf_foldin (0.7300)" if set_name == "users" else "mf_foldin (0.8400)"}
    assert drawn["ridge"][0] == [100, 200, 300, 400]
    np.testing.assert_allclose(drawn[finetune][1], [p[1] for p in reproduced()["curves"][finetune][set_name]])
    stars = [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines() if line.get_marker() == "*"]
    assert ([star[0]], [star[1]]) in [(x, [round(v, 4) for v in y]) for x, y in stars]
    level = [line for line in ax.get_lines() if line.get_label().startswith("mf_foldin")][0]
    assert list(level.get_ydata()) == ([0.73, 0.73] if set_name == "users" else [0.84, 0.84])


def test_validation_curves_compare_runs_side_by_side_by_label():
    panels = {f"seed {s}": {"full": reproduced(), "without ids": reproduced(shift=0.01)} for s in (0, 1)}
    fig = plots.validation_curves(panels, methods=["ridge"])
    assert [ax.get_title() for ax in fig.axes] == ["seed 0", "seed 1"]
    for ax in fig.axes:
        drawn = lines_of(ax)
        assert {"full", "without ids"} <= set(drawn) and not any(k.startswith("finetune") for k in drawn)
        np.testing.assert_allclose(np.array(drawn["without ids"][1]) - np.array(drawn["full"][1]), 0.01)


def test_validation_curves_draw_the_chosen_setting_by_name_and_gaps_for_missing_values():
    results = reproduced()
    # another rate with the same value at the chosen step, ahead in the dict, and a diverged one (None: a gap)
    results["curves"] = {"finetune@0.01": {"users": [[100, None], [200, 0.745], [300, None], [400, 0.9]]},
                         "finetune@1": {"users": [[100, None]] * 4}, **results["curves"]}
    (ax,) = plots.validation_curves({"": {"": results}}, methods=["finetune"]).axes
    drawn = lines_of(ax)
    assert [k for k in drawn if k.startswith("finetune")] == ["finetune@0.03"]
    results["curves"]["finetune@0.03"]["users"][0][1] = None
    (ax,) = plots.validation_curves({"": {"": results}}, methods=["finetune"]).axes
    assert np.isnan(lines_of(ax)["finetune@0.03"][1][0])


def test_validation_curves_reject_what_they_cannot_draw():
    with pytest.raises(ValueError, match="no panels"):
        plots.validation_curves({})
    with pytest.raises(TypeError, match="not the contents of a results.json"):
        plots.validation_curves({"": {"": {"results": {}}}})
    with pytest.raises(ValueError, match=r"no curve on set_name='new_items' for methods=\['maml'\]; its runs have "
                                         r"curves on \['new_items', 'users'\]"):
        plots.validation_curves({"": {"": reproduced()}}, set_name="new_items", methods=["maml"])


def test_read_results_one_run_or_a_folder_of_seeds(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "results.json").write_text(json.dumps(reproduced()))
    assert plots.read_results(tmp_path / "one") == {"": reproduced()}
    for seed in (10, 2):
        (tmp_path / "seeds" / f"seed-{seed}").mkdir(parents=True)
        (tmp_path / "seeds" / f"seed-{seed}" / "results.json").write_text(json.dumps(reproduced(seed / 100)))
    assert list(plots.read_results(tmp_path / "seeds")) == ["seed 2", "seed 10"]
    with pytest.raises(FileNotFoundError, match="holds no results.json and no seed-N/results.json"):
        plots.read_results(tmp_path)


def test_jaxmeta_plot_results_writes_the_comparison(tmp_path):
    from conftest import jaxmeta

    for name, shift in (("full", 0.0), ("no-ids", 0.01)):
        (tmp_path / name / "seed-0").mkdir(parents=True)
        (tmp_path / name / "seed-0" / "results.json").write_text(json.dumps(reproduced(shift)))
    out = tmp_path / "figs" / "ablation.png"
    ran = jaxmeta("plot", "--results", tmp_path / "full", tmp_path / "no-ids", "--labels", "full", "without ids",
                  "--methods", "ridge", "--out", out)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == str(out) and out.read_bytes().startswith(PNG_SIGNATURE)
    bad = jaxmeta("plot", "--results", tmp_path / "full", "--labels", "a", "b")
    assert bad.returncode == 2 and "2 label(s) for 1 folder(s)" in bad.stderr
    several = jaxmeta("plot", "--results", tmp_path / "full", tmp_path / "no-ids")
    assert several.returncode == 2 and "pass --out FILE.png" in several.stderr
    for flags, message in ((["--run", tmp_path, "--set", "new_items"], "--set goes with --results"),
                           (["--results", tmp_path / "full", "--no-eval"], "--no-eval goes with --run")):
        ran = jaxmeta("plot", *flags)
        assert ran.returncode == 2 and message in ran.stderr, ran.stderr
    default = jaxmeta("plot", "--results", tmp_path / "full", "--set", "new_items")
    assert default.returncode == 0 and (tmp_path / "full" / "validation-new_items.png").is_file()


def test_reproduce_writes_a_validation_figure_per_set_it_has(tmp_path):
    from jaxmeta.reproduce import _write_validation_plots

    users_only = reproduced()
    for per_set in users_only["curves"].values():
        del per_set["new_items"]
    _write_validation_plots(users_only, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["validation-users.png"]
    _write_validation_plots(reproduced(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["validation-new_items.png", "validation-users.png"]
    broken = reproduced()
    broken["selected"]["ridge"]["valid_mae"] = "?"  # drawn as nothing: no curve left on the panel, a warning
    del broken["selected"]["finetune"]
    with pytest.warns(UserWarning, match="the validation figure was not drawn"):
        _write_validation_plots(broken, tmp_path / "broken")
