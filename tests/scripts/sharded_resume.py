"""Driver runs on a forced multi-device CPU (the caller sets XLA_FLAGS):
``python sharded_resume.py DIR STAGE``. Stage ``save`` trains 6 of 12 steps on all
(4) devices with checkpoints in DIR, twice: with the state replicated (DIR/replicated)
and with the embedding tables split by rows over the devices (DIR/rows). Stage
``resume`` continues both runs to 12 steps on however many devices this process
has (the tables split over those), and prints the largest parameter gap of each to
an uninterrupted one-device run, as one JSON line."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import conftest  # noqa: E402

from jaxmeta.checkpoint import Checkpoints  # noqa: E402
from jaxmeta.train import TrainConfig, fit, make_learner  # noqa: E402

conftest.VOCAB = (4, 8)  # tables whose rows split over 1, 2 and 4 devices
CONFIG = TrainConfig(algo="maml", steps=12, batch_size=8, inner_lr=0.3, outer_lr=0.05, num_buckets=2, resplit=True)
SHARDED = {"replicated": None, "rows": lambda path: path[0] == "emb"}


def main(folder: str, stage: str) -> None:
    learner, tasks = make_learner(CONFIG, conftest.tiny_model(staged=True)), conftest.random_tasks(24, seed=2)
    found: dict[str, object] = {"devices": len(jax.devices())}
    if stage == "save":
        for name, rows in SHARDED.items():
            state, _ = fit(learner, tasks, dataclasses.replace(CONFIG, steps=6), progress=False,
                           checkpoints=Checkpoints(Path(folder) / name), checkpoint_every=3, row_sharded=rows)
            found[name] = {"step": int(state.step), "head": list(state.params["head"]["w"].sharding.spec),
                           "table": list(state.params["emb"][1].sharding.spec)}
        print(json.dumps(found))
        return
    whole, _ = fit(learner, tasks, dataclasses.replace(CONFIG, devices=1), progress=False)
    for name, rows in SHARDED.items():
        resumed, _ = fit(learner, tasks, CONFIG, progress=False, checkpoints=Checkpoints(Path(folder) / name),
                         checkpoint_every=3, resume=True, row_sharded=rows)
        gap = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params)))
        table = resumed.params["emb"][1]
        found[name] = {"step": int(resumed.step), "gap": gap,
                       "table_shard_rows": sorted({s.data.shape[0] for s in table.addressable_shards})}
    print(json.dumps(found))


if __name__ == "__main__":
    main(*sys.argv[1:])
