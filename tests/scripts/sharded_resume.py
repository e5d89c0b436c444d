"""Driver runs on a forced multi-device CPU (the caller sets XLA_FLAGS):
``python sharded_resume.py DIR STAGE``. Stage ``save`` trains 6 of 12 steps on all
(4) devices with checkpoints in DIR; stage ``resume`` continues that run to 12 steps
on however many devices this process has, and prints the largest parameter gap to
an uninterrupted one-device run (as one JSON line)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import random_tasks, tiny_model  # noqa: E402

from jaxmeta.checkpoint import Checkpoints  # noqa: E402
from jaxmeta.train import TrainConfig, fit, make_learner  # noqa: E402

CONFIG = TrainConfig(algo="maml", steps=12, batch_size=8, inner_lr=0.3, outer_lr=0.05, num_buckets=2, resplit=True)


def main(folder: str, stage: str) -> None:
    learner, tasks = make_learner(CONFIG, tiny_model(staged=True)), random_tasks(24, seed=2)
    if stage == "save":
        state, _ = fit(learner, tasks, dataclasses.replace(CONFIG, steps=6), progress=False,
                       checkpoints=Checkpoints(folder), checkpoint_every=3)
        print(json.dumps({"devices": len(jax.devices()), "step": int(state.step),
                          "sharding": str(state.params["head"]["w"].sharding)}))
        return
    resumed, _ = fit(learner, tasks, CONFIG, progress=False, checkpoints=Checkpoints(folder), checkpoint_every=3,
                     resume=True)
    whole, _ = fit(learner, tasks, dataclasses.replace(CONFIG, devices=1), progress=False)
    gap = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params)))
    print(json.dumps({"devices": len(jax.devices()), "step": int(resumed.step), "gap": gap}))


if __name__ == "__main__":
    main(*sys.argv[1:])
