"""Users sharded over devices and tables sharded by rows (jaxmeta.distributed), on a CPU
forced to show 4 devices. XLA_FLAGS must be set before jax starts, so the sharded
steps run in a subprocess (tests/scripts/sharded_steps.py) that prints its findings.
The slow suite (pytest -m slow) holds the jobs of two processes (``jaxmeta train`` over gloo)
and the sharded steps of second-order MAML with an optax inner optimizer and of first-order MAML."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from jaxmeta.distributed import make_mesh, shard_batch, shard_state

SCRIPT = Path(__file__).resolve().parent / "scripts" / "sharded_steps.py"
# The driver's closed-form MAML by default; Reptile's own outer update and the other two in the slow suite.
DEFAULT_ALGOS, SLOW_ALGOS = ("maml_closed_form",), ("reptile", "maml", "fomaml")
ALGOS = [*DEFAULT_ALGOS, *(pytest.param(algo, marks=pytest.mark.slow) for algo in SLOW_ALGOS)]


def _run(script: str, *args: str, devices: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, str(SCRIPT.with_name(script)), *args], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def four_devices():
    """``four_devices(algo)``: the findings of tests/scripts/sharded_steps.py for ``algo``'s group of
    algorithms (one subprocess per group, run when a test first asks for it)."""
    found: dict[tuple[str, ...], dict] = {}

    def of(algo: str) -> dict:
        group = DEFAULT_ALGOS if algo in DEFAULT_ALGOS else SLOW_ALGOS
        if group not in found:
            found[group] = _run(SCRIPT.name, *group, devices=4)
        return found[group]

    return of


@pytest.mark.parametrize("algo", ALGOS)
def test_sharded_steps_equal_the_single_device_steps(four_devices, algo):
    found = four_devices(algo)[algo]
    assert found["loss_gap"] < 1e-5 and found["param_gap"] < 1e-5  # 3 outer steps, 8 user slots over 4 devices
    assert found["batch_spec"] == "P('users',)" and found["batch_shards"] == [2]


@pytest.mark.parametrize("algo", ALGOS)
def test_row_sharded_tables_equal_replicated_ones_and_stay_sharded(four_devices, algo):
    found = four_devices(algo)[algo]
    assert found["rows_loss_gap"] < 1e-5 and found["rows_param_gap"] < 1e-5
    # after three steps the table is still split: each device holds a quarter of its rows
    assert found["table_spec"] == "P('users',)" and found["table_shard_rows"] == [found["table_rows"] // 4]
    assert found["head_spec"] == "P()"


def test_uneven_batches_and_tables_are_refused(four_devices):
    found = four_devices(DEFAULT_ALGOS[0])
    assert found["uneven_batch_error"] == ("a batch of 6 users does not split over 4 devices: pass a batch "
                                           "size that is a multiple of 4.")
    assert found["uneven_table_error"] == ("table params/emb/0 has 3 rows, which do not split over 4 devices: "
                                           "give it a multiple of 4 rows (unused rows are never read).")


def test_one_device_mesh_in_process():
    from conftest import random_tasks, tiny_model

    from jaxmeta import algorithms
    from jaxmeta.tasks import pad_tasks

    mesh = make_mesh(jax.devices()[:1])
    learner = algorithms.maml(tiny_model(staged=True), inner_optimizer=0.3, inner_steps=2)
    state = learner.init(jax.random.key(0))
    batch = pad_tasks(random_tasks(4, seed=1))
    want, _ = learner.step(state, batch)
    got, _ = learner.step(shard_state(state, mesh, row_sharded=lambda path: path[0] == "emb"), shard_batch(batch, mesh))
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
        assert jax.numpy.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="make_mesh got no devices"):
        make_mesh([])


@pytest.fixture(scope="module")
def saved_on_4_resumed_on_fewer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved_on_4") / "ckpt"
    saved = _run("sharded_resume.py", str(folder), "save", devices=4)
    return saved, _run("sharded_resume.py", str(folder), "resume", devices=2)  # on 1 device, then on 2


@pytest.mark.slow  # three sharded training runs in subprocesses: pytest -m slow
@pytest.mark.parametrize("later", [1, 2])
def test_a_run_saved_on_4_devices_resumes_on_fewer_as_if_never_stopped(saved_on_4_resumed_on_fewer, later):
    saved, resumed = saved_on_4_resumed_on_fewer
    assert saved["devices"] == 4
    assert saved["replicated"] == {"step": 6, "head": [], "table": []}
    assert saved["rows"] == {"step": 6, "head": [], "table": ["users"]}
    assert resumed["devices"] == 2
    resumed = resumed["on"][str(later)]
    assert resumed["devices"] == later
    for name, shard_rows in (("replicated", [8]), ("rows", [8 // later])):
        assert resumed[name]["step"] == 12
        assert resumed[name]["gap"] < 1e-5  # against 12 uninterrupted steps on one device
        assert resumed[name]["table_shard_rows"] == shard_rows  # the 8-row table, whole or split over `later`


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRAIN = ("train", "--steps", "8", "--batch-size", "8", "--eval-every", "4", "--checkpoint-every", "4", "--quiet",
         "--json", "--shard-tables", "all")


def _jaxmeta(*args: str, devices: int) -> subprocess.Popen:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "jaxmeta.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """``jaxmeta train`` as a job of two processes of 2 CPU devices each (gloo collectives over loopback),
    and as one process of one device; then both continued from step 8 to 12 in one process."""
    folder = tmp_path_factory.mktemp("hosts")
    coordinator = f"127.0.0.1:{_free_port()}"
    job = [_jaxmeta(*TRAIN, "--out", str(folder / "two"), "--coordinator", coordinator, "--num-processes", "2",
                    "--process-id", str(i), devices=2) for i in range(2)]
    outs = [_finish(p) for p in job]
    _finish(_jaxmeta(*TRAIN, "--out", str(folder / "one"), devices=1))
    results = {name: json.loads((folder / name / "result.json").read_text()) for name in ("two", "one")}
    resumed = [_jaxmeta(*TRAIN, "--steps", "12", "--resume", "--out", str(folder / name), devices=devices)
               for name, devices in (("two", 2), ("one", 1))]
    continued = [json.loads(_finish(p).strip().splitlines()[-1]) for p in resumed]
    return outs, results, continued, folder


@pytest.mark.slow
def test_two_processes_train_as_one(two_processes):
    outs, results, _, folder = two_processes
    first = json.loads(outs[0].strip().splitlines()[-1])
    assert (first["devices"], first["processes"]) == (4, 2)  # 8 users a step over 2 x 2 devices
    assert "on 4 devices of 2 processes" in outs[0]
    assert "query MSE" not in outs[1] and "{" not in outs[1]  # process 1 reports nothing (gloo may log lines)
    assert (results["two"]["devices"], results["one"]["devices"]) == (4, 1)
    for key, value in results["one"]["query_mse"].items():
        assert abs(results["two"]["query_mse"][key] - value) < 1e-5, key
    steps = sorted(int(p.name) for p in (folder / "two" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] >= 8


@pytest.mark.slow
def test_a_two_process_run_resumes_in_one_process(two_processes):
    *_, continued, _ = two_processes
    two, one = continued  # the two-process run on 2 devices of one process; the one-device run on 1
    assert (two["devices"], two["processes"], one["devices"]) == (2, 1, 1)
    for key, value in one["query_mse"].items():
        assert abs(two["query_mse"][key] - value) < 1e-5, key


def test_initialize_reads_flags_and_environment_and_names_what_is_missing(monkeypatch):
    from jaxmeta.distributed import ENV, initialize

    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    assert initialize() is False  # nothing set: a single-process job, nothing started
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    with pytest.raises(ValueError, match="num_processes, process_id is missing: pass it"):
        initialize()
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match=r"num_processes=2, process_id=2: pass num_processes >= 1 and a process_id in 0..1"):
        initialize(process_id=2)
    with pytest.raises(ValueError, match="coordinator='node0': pass host:port"):
        initialize("node0", process_id=0)
    with pytest.raises(ValueError, match="process_id='one'"):
        initialize(process_id="one")


def test_shard_tables_names_pad_and_refuse_unknown_tables():
    from jaxmeta.job import TABLE_ROWS, TrainConfig, row_sharded, table_rows

    tables = {"item": ("embeddings", "1"), "user_group": ("embeddings", "0")}
    config = TrainConfig(shard_tables=("item",))
    assert table_rows(config, "item", 300) == TABLE_ROWS and table_rows(config, "user_group", 5) == 5
    assert table_rows(config, "item", TABLE_ROWS + 1) == 2 * TABLE_ROWS
    chosen = row_sharded(config, tables)
    assert chosen(("embeddings", "1")) and not chosen(("embeddings", "0")) and not chosen(("layers", "0", "w"))
    assert all(map(row_sharded(TrainConfig(shard_tables="all"), tables), tables.values()))
    with pytest.raises(ValueError, match=r"this model has no table 'actor'; pass 'all' or some of \['item', 'user_group'\]"):
        row_sharded(TrainConfig(shard_tables=("actor",)), tables)
    with pytest.raises(ValueError, match="pass 'all' alone"):
        TrainConfig(shard_tables=("all", "item"))


def test_mf_item_table_padded_rows_change_no_prediction():
    from jaxmeta.models import biased_mf_by_id

    items, x = [40, 7, 12], {"item_id": jax.numpy.array([7, 12, 40, 5])}
    plain, padded = biased_mf_by_id(items, dim=2), biased_mf_by_id(items, dim=2, rows=8)
    p, q = plain.init(jax.random.key(0)), padded.init(jax.random.key(0))
    assert q["items"]["vectors"].shape == (8, 2)
    q = jax.tree.map(lambda a, b: b.at[: a.shape[0]].set(a) if a.ndim else a, p, q)  # same weights in the first rows
    assert jax.numpy.array_equal(plain.apply(p, x), padded.apply(q, x))
    with pytest.raises(ValueError, match="rows=3 is fewer than the 3 known items and the OOV row; pass rows >= 4"):
        biased_mf_by_id(items, rows=3)
