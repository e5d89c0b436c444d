"""The benchmark workloads (bench/, installed as ``jaxmeta.bench``): their batches, their
refusals and their packaging by default; a smoke run of each workload for a couple of steps
at a tiny batch, printing records with the documented keys, under ``pytest -m slow`` (each
compiles a MeLU step). Nothing here is timed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
import setuptools

from jaxmeta.bench import run, table, workloads
from jaxmeta.cli import main

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"workload", "variant", "batch", "tasks_per_s", "step_ms", "compile_s", "peak_mem_mb", "padded_fraction",
        "device", "jax_version", "matmul_precision"}


def check(record, workload, variant, batch):
    assert KEYS <= set(record)
    assert (record["workload"], record["variant"], record["batch"]) == (workload, variant, batch)
    assert record["tasks_per_s"] > 0 and record["step_ms"] > 0 and record["compile_s"] > 0
    assert 0 <= record["padded_fraction"] < 1
    assert record["backend"] in workloads.BACKENDS


def test_bench_installs_as_a_subpackage_of_jaxmeta():
    # The link makes bench/ the package jaxmeta.bench, as kernels/ is jaxmeta.kernels: wheels hold real files.
    assert os.readlink(ROOT / "jaxmeta" / "bench") == "../bench"
    found = setuptools.find_packages(str(ROOT), include=["jaxmeta*"])
    assert {"jaxmeta.bench", "jaxmeta.bench.peers", "jaxmeta.kernels"} <= set(found)


@pytest.mark.parametrize("variant", workloads.WORKLOADS["melu"])
def test_w1_variants_trace_to_the_workload_shapes(variant):
    # Traced, not compiled: the workload still fits the API; the timed smoke runs are in the slow suite.
    learner, fn = run._stepper(variant, None)
    state = jax.eval_shape(learner.init, jax.random.key(0))
    out = jax.eval_shape(fn, state, workloads.batch(np.random.default_rng(0), 3))
    if variant == "melu-adapt":
        assert out.shape == (3, workloads.QUERY)
    else:
        new, metrics = out
        assert jax.tree.structure(new) == jax.tree.structure(state) and metrics["loss"].shape == ()


@pytest.mark.slow
@pytest.mark.parametrize("variant", workloads.WORKLOADS["melu"])
def test_w1_variants(variant):
    record = run.measure_w1(variant, 3, steps=2, warmup=1)
    check(record, "melu", variant, 3)
    assert record["padded_fraction"] == 0.0 and record["support"] == workloads.SUPPORT and record["backend"] == "xla"
    assert "interpret" not in record and record["matmul_precision"] == (jax.config.jax_default_matmul_precision
                                                                       or "default")


@pytest.mark.slow
@pytest.mark.parametrize("variant", workloads.KERNEL_VARIANTS)
def test_w1_through_the_pallas_kernel(variant):
    # Interpret mode here: a smoke test, not a timing.
    [record] = run.measure("melu", variant, [3], steps=1, warmup=0, backend="pallas")
    check(record, "melu", variant, 3)
    assert record["backend"] == "pallas" and record["interpret"] == (jax.default_backend() != "gpu")


@pytest.mark.parametrize("workload, variant", [("melu", "melu"), ("scale", "melu"), ("ragged", "melu")])
def test_the_kernel_backend_is_refused_where_it_has_no_kernel(workload, variant):
    with pytest.raises(ValueError, match="backend='pallas'"):
        next(run.measure(workload, variant, [3], backend="pallas"))


def test_w1_batch_has_the_workload_shapes():
    batch = workloads.batch(np.random.default_rng(0), 5, num_real=4)
    assert set(batch.support_x) == {name for name, _ in workloads.FIELDS}
    assert batch.support_x["actor"].shape == (5, workloads.SUPPORT) and batch.query_y.shape == (5, workloads.QUERY)
    assert batch.support_mask[:4].all() and not batch.support_mask[4].any() and not batch.query_mask[4].any()
    for name, size in workloads.FIELDS:
        assert 0 <= batch.support_x[name].min() and batch.support_x[name].max() < size


def test_w2_ragged_buckets_and_padding():
    batches = run.ragged_batches(8, seed=1, num_buckets=3)
    sizes = np.concatenate([np.asarray(b.support_mask).sum(1) for b in batches])
    assert sizes.min() >= workloads.RAGGED_SUPPORT[0] and sizes.max() <= workloads.RAGGED_SUPPORT[1]
    assert len(sizes) == run.RAGGED_POOL * 8 and len({b.support_size for b in batches}) <= 3


@pytest.mark.slow
def test_w2_ragged_measurement():
    record = run.measure_ragged(8, steps=1, warmup=0, num_buckets=2)
    check(record, "ragged", "melu", 8)
    assert record["padded_fraction"] > 0 and record["w1_same_support_tasks_per_s"] > 0


@pytest.mark.slow
def test_jaxmeta_bench_command_prints_json_lines(capsys):
    assert main(["bench", "--workload", "scale", "--batch", "2", "4", "--steps", "1", "--warmup", "0",
                 "--backend", "xla"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["batch"] for r in records] == [2, 4]
    assert {r["matmul_precision"] for r in records} == {"float32"}  # BENCH.md's, not the platform's default
    assert jax.config.jax_default_matmul_precision is None  # set for the run only
    for r, b in zip(records, (2, 4)):
        check(r, "scale", "melu", b)


def test_the_table_skips_lines_that_are_not_timings():
    lines = [{"workload": "adapt", "variant": "gradient", "batch": 3, "tasks_per_s": 1234.5, "step_ms": 2.4},
             {"workload": "adapt", "batch": 3, "amortised_over_gradient": 2.1},
             {"workload": "scale", "variant": "melu", "batch": 64, "fits": False}]
    rows = table.table(lines).splitlines()[2:]
    assert len(rows) == 2 and rows[0].startswith("| adapt | gradient | 3 | 1,234 |") and "does not fit" in rows[1]


def test_jaxmeta_bench_refuses_an_unknown_variant(capsys):
    assert main(["bench", "--variant", "melu-xx"]) == 2
    assert "variant='melu-xx'" in capsys.readouterr().err


@pytest.mark.parametrize("adaptation", workloads.ADAPTATIONS)
def test_the_adapt_workload_traces_both_adaptations_to_query_predictions(adaptation):
    learner = workloads.adapter(adaptation)
    state = jax.eval_shape(learner.init, jax.random.key(0))
    out = jax.eval_shape(learner.predict, state, workloads.batch(np.random.default_rng(0), 3))
    assert out.shape == (3, workloads.QUERY)
    with pytest.raises(ValueError, match="adaptation='fast': pass one of"):
        workloads.adapter("fast")


@pytest.mark.slow
def test_the_adapt_workload_times_both_in_one_run_and_gives_their_ratio():
    gradient, amortised, small, floor, ratio = run.measure("adapt", "melu", [3], steps=2, warmup=1)
    check(gradient, "adapt", "gradient", 3)
    check(amortised, "adapt", "amortised", 3)
    check(small, "adapt", "amortised-small", 3)
    check(floor, "adapt", "none", 3)
    assert ratio["amortised-small_over_gradient"] == round(small["tasks_per_s"] / gradient["tasks_per_s"], 2)
    assert (gradient["inner_steps"], amortised["inner_steps"]) == (workloads.INNER_STEPS, 0)
    assert {r["rounds"] for r in (gradient, amortised, small, floor)} == {run.ADAPT_ROUNDS}
    assert ratio["amortised_over_gradient"] == round(amortised["tasks_per_s"] / gradient["tasks_per_s"], 2)
    assert ratio["none_over_gradient"] == round(floor["tasks_per_s"] / gradient["tasks_per_s"], 2)
