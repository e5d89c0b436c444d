"""Users sharded over devices and tables sharded by rows (jaxmeta.sharding), on a CPU
forced to show 4 devices. XLA_FLAGS must be set before jax starts, so the sharded
steps run in a subprocess (tests/scripts/sharded_steps.py) that prints its findings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from jaxmeta.sharding import make_mesh, shard_batch, shard_state

SCRIPT = Path(__file__).resolve().parent / "scripts" / "sharded_steps.py"


@pytest.fixture(scope="module")
def four_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("algo", ["maml", "maml_closed_form", "fomaml", "reptile"])
def test_sharded_steps_equal_the_single_device_steps(four_devices, algo):
    found = four_devices[algo]
    assert found["loss_gap"] < 1e-5 and found["param_gap"] < 1e-5  # 3 outer steps, 8 user slots over 4 devices
    assert found["batch_spec"] == "P('users',)" and found["batch_shards"] == [2]


@pytest.mark.parametrize("algo", ["maml", "maml_closed_form", "fomaml", "reptile"])
def test_row_sharded_tables_equal_replicated_ones_and_stay_sharded(four_devices, algo):
    found = four_devices[algo]
    assert found["rows_loss_gap"] < 1e-5 and found["rows_param_gap"] < 1e-5
    # after three steps the table is still split: each device holds a quarter of its rows
    assert found["table_spec"] == "P('users',)" and found["table_shard_rows"] == [found["table_rows"] // 4]
    assert found["head_spec"] == "P()"


def test_uneven_batches_and_tables_are_refused(four_devices):
    assert four_devices["uneven_batch_error"] == ("a batch of 6 users does not split over 4 devices: pass a batch "
                                                  "size that is a multiple of 4.")
    assert four_devices["uneven_table_error"] == ("table params/emb/0 has 3 rows, which do not split over 4 devices: "
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


def _run(script: str, *args: str, devices: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, str(SCRIPT.with_name(script)), *args], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("later", [1, 2])
def test_a_run_saved_on_4_devices_resumes_on_fewer_as_if_never_stopped(tmp_path, later):
    saved = _run("sharded_resume.py", str(tmp_path / "ckpt"), "save", devices=4)
    assert saved["devices"] == 4 and saved["step"] == 6 and "users" in saved["sharding"]
    resumed = _run("sharded_resume.py", str(tmp_path / "ckpt"), "resume", devices=later)
    assert resumed["devices"] == later and resumed["step"] == 12
    assert resumed["gap"] < 1e-5  # against 12 uninterrupted steps on one device
