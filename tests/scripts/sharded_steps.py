"""Runs on a forced 4-device CPU (XLA_FLAGS set by the caller): sharded against
single-device outer steps, printed as one JSON line for tests/test_distributed.py.

    python sharded_steps.py [ALGO ...]   # maml, maml_closed_form, fomaml, reptile (default: all)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import conftest  # noqa: E402
from conftest import random_tasks, tiny_model  # noqa: E402

from jaxmeta import algorithms  # noqa: E402
from jaxmeta.distributed import make_mesh, shard_batch, shard_state  # noqa: E402
from jaxmeta.tasks import pad_tasks  # noqa: E402

STEPS = 3


def run(learner, state, batches):
    for batch in batches:
        state, metrics = learner.step(state, batch)
    return state, float(metrics["loss"])


def max_gap(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
    assert len(jax.devices()) == 4, jax.devices()
    conftest.VOCAB = (4, 8)  # table rows that split over 4 devices
    mesh = make_mesh()
    batches = [pad_tasks(random_tasks(7, seed=s), num_tasks=8) for s in range(STEPS)]  # 7 users and a padding slot
    tables = lambda path: path[0] == "emb"  # noqa: E731
    out = {}
    for name in sys.argv[1:] or ("maml", "maml_closed_form", "fomaml", "reptile"):
        kwargs = dict(inner_steps=2, outer_optimizer=optax.adam(1e-2))
        factory = {"maml": algorithms.maml, "maml_closed_form": algorithms.maml, "fomaml": algorithms.fomaml,
                   "reptile": algorithms.reptile}[name]
        inner = 0.3 if name == "maml_closed_form" else optax.sgd(0.3)  # a number: the closed-form first layer
        learner = factory(tiny_model(staged=True), inner_optimizer=inner, **kwargs)
        state = learner.init(jax.random.key(0))
        single, single_loss = run(learner, state, batches)
        sharded_batches = [shard_batch(b, mesh) for b in batches]
        replicated, replicated_loss = run(learner, shard_state(state, mesh), sharded_batches)
        rows, rows_loss = run(learner, shard_state(state, mesh, row_sharded=tables), sharded_batches)
        table = rows.params["emb"][0]
        out[name] = {
            "loss_gap": abs(single_loss - replicated_loss),
            "param_gap": max_gap(single.params, replicated.params),
            "rows_loss_gap": abs(rows_loss - replicated_loss),
            "rows_param_gap": max_gap(rows.params, replicated.params),
            "batch_spec": str(sharded_batches[0].support_y.sharding.spec),
            "batch_shards": sorted({s.data.shape[0] for s in sharded_batches[0].support_y.addressable_shards}),
            "table_spec": str(table.sharding.spec),
            "table_shard_rows": sorted({s.data.shape[0] for s in table.addressable_shards}),
            "table_rows": int(table.shape[0]),
            "head_spec": str(rows.params["head"]["w"].sharding.spec),
        }
    try:
        shard_batch(batches[0]._replace(**{k: v[:6] for k, v in batches[0]._asdict().items()}), mesh)
    except ValueError as error:
        out["uneven_batch_error"] = str(error)
    conftest.VOCAB = (3, 5)
    odd = algorithms.maml(tiny_model(staged=True), inner_steps=2).init(jax.random.key(0))
    try:
        shard_state(odd, mesh, row_sharded=tables)
    except ValueError as error:
        out["uneven_table_error"] = str(error)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
