"""bench/load.py (the service's load test): its ratios and refusals by default; under ``pytest -m slow``
a short run against two real servers (batched and not) whose JSON lines must be well formed and
error-free. Nothing here is timed: the figures depend on the machine."""

from __future__ import annotations

import argparse
import json

import pytest

from jaxmeta.bench import load

KEYS = {"bench", "workload", "clients", "duration_s", "k", "explain", "requests", "req_per_s", "p50_ms", "p99_ms", "errors",
        "error_kinds", "by_request", "load_avg_before", "cpus", "client_cpu_s", "batching", "max_batch", "window_ms"}


def record(workload, batching, rate):
    return {"workload": workload, "batching": batching, "clients": 4, "req_per_s": rate}


def test_ratios_divide_batched_by_unbatched_throughput_per_workload():
    records = [record("ratings+recs", True, 300.0), record("ratings+recs", False, 60.0),
               record("top-k", True, 500.0)]  # top-k measured one way only: no ratio
    (ratio,) = load.ratios(records)
    assert ratio["workload"] == "ratings+recs" and ratio["ratio_batched_over_unbatched"] == 5.0
    assert (ratio["batched_req_per_s"], ratio["unbatched_req_per_s"]) == (300.0, 60.0)


@pytest.mark.parametrize("kwargs, match", [({"workload": "writes"}, "workload='writes'"),
                                           ({"workload": "top-k", "clients": 0}, "clients=0"),
                                           ({"workload": "top-k", "duration": 0}, "duration=0")])
def test_measure_refuses_bad_settings_before_any_request(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load.measure("http://127.0.0.1:9", **kwargs)  # port 9 (discard): never reached


def test_the_server_command_carries_the_flags_last():
    command = load.serve_command("--run", "RUN", "--no-batching")
    assert command[-3:] == ["--run", "RUN", "--no-batching"]
    assert "serve" in command or any("jaxmeta.service" in part for part in command)


@pytest.mark.slow
def test_a_short_load_run_prints_well_formed_records_without_errors(served_run, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    load.add_arguments(parser)
    args = parser.parse_args(["--run", str(served_run), "--clients", "4", "--duration", "2", "--warmup", "0.5",
                              "--work-dir", str(tmp_path)])
    assert load.main(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    measured = [r for r in lines if "req_per_s" in r and "ratio_batched_over_unbatched" not in r]
    assert {(r["workload"], r["batching"]) for r in measured} == {(w, b) for w in load.WORKLOADS for b in (True, False)}
    for r in measured:
        assert KEYS <= set(r), KEYS - set(r)
        assert r["errors"] == 0 and not r["error_kinds"], r
        assert r["requests"] > 0 and r["req_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["clients"] == 4 and r["bench"] == "load"
        kinds = {"GET recommendations", "POST ratings"} if r["workload"] == "ratings+recs" else {"GET recommendations"}
        assert set(r["by_request"]) == kinds
        assert sum(part["n"] for part in r["by_request"].values()) == r["requests"]
    ratios = [r for r in lines if "ratio_batched_over_unbatched" in r]
    assert sorted(r["workload"] for r in ratios) == sorted(load.WORKLOADS)
    assert all(r["ratio_batched_over_unbatched"] > 0 for r in ratios)
