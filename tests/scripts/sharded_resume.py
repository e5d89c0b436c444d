"""Training (:func:`jaxmeta.train.fit` with checkpoints) on a forced multi-device CPU (the
caller sets XLA_FLAGS): ``python sharded_resume.py DIR STAGE``. Stage ``save`` trains 6 of
12 steps on all (4) devices with checkpoints in DIR, twice: with the state replicated
(DIR/replicated) and with the embedding tables split by rows over the devices (DIR/rows).
Stage ``resume`` continues both runs to 12 steps on 1, 2, ... of this process's devices
(the tables split over those), each from its own copy of DIR (DIR_on_1, DIR_on_2, ...),
and prints the largest parameter gap of each to an uninterrupted one-device run, as one
JSON line."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import conftest  # noqa: E402

from jaxmeta.checkpoint import Checkpoints  # noqa: E402
from jaxmeta.distributed import make_mesh, shard_batch, shard_state  # noqa: E402
from jaxmeta.job import TrainConfig, make_learner  # noqa: E402
from jaxmeta.train import BatchStream, SaveCheckpoints, fit  # noqa: E402

CONFIG = TrainConfig(algo="maml", steps=12, batch_size=8, inner_lr=0.3, outer_lr=0.05, num_buckets=2, resplit=True)
SHARDED = {"replicated": lambda path: False, "rows": lambda path: path[0] == "emb"}


def train(learner, tasks, *, steps: int, devices: list, rows, folder: Path | None = None):
    """:func:`jaxmeta.train.fit` to ``steps`` with the users of each batch split over ``devices``
    and the tables ``rows`` picks split by rows over them; with ``folder``, checkpoints every 3
    steps there, continuing from its latest one (state and data position) when it has one."""
    mesh = make_mesh(devices) if len(devices) > 1 else None
    stream = BatchStream(tasks, batch_size=CONFIG.batch_size, num_buckets=CONFIG.num_buckets, seed=CONFIG.seed,
                         resplit=CONFIG.resplit)
    state = learner.init(jax.random.key(CONFIG.seed))
    if mesh is not None:
        state = shard_state(state, mesh, row_sharded=rows)
    hooks = []
    if folder is not None:
        checkpoints = Checkpoints(folder)
        if checkpoints.latest_step() is not None:
            state, saved = checkpoints.restore(state)
            stream.restore(saved["position"])
        hooks.append(SaveCheckpoints(checkpoints, stream, every=3, seed=CONFIG.seed))
    place = None if mesh is None else (lambda batch: shard_batch(batch, mesh))
    return fit(learner, stream, steps=steps, state=state, hooks=hooks, place=place, progress=False)


def main(folder: str, stage: str) -> None:
    # Tables whose rows split over 1, 2 and 4 devices. Set here, never at import: pytest imports this
    # file to look for doctests, and conftest's VOCAB there is every test's.
    conftest.VOCAB = (4, 8)
    learner, tasks = make_learner(CONFIG, conftest.tiny_model(staged=True)), conftest.random_tasks(24, seed=2)
    found: dict[str, object] = {"devices": len(jax.devices())}
    if stage == "save":
        for name, rows in SHARDED.items():
            state = train(learner, tasks, steps=6, devices=jax.devices(), rows=rows, folder=Path(folder) / name)
            found[name] = {"step": int(state.step), "head": list(state.params["head"]["w"].sharding.spec),
                           "table": list(state.params["emb"][1].sharding.spec)}
        print(json.dumps(found))
        return
    whole = train(learner, tasks, steps=CONFIG.steps, devices=jax.devices()[:1], rows=SHARDED["replicated"])
    found["on"] = {}
    for count in range(1, len(jax.devices()) + 1):
        copy = Path(folder).with_name(f"{Path(folder).name}_on_{count}")
        shutil.copytree(folder, copy)  # each resume continues its own copy
        on: dict[str, object] = {"devices": count}
        for name, rows in SHARDED.items():
            resumed = train(learner, tasks, steps=CONFIG.steps, devices=jax.devices()[:count], rows=rows,
                            folder=copy / name)
            gap = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                      for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params)))
            table = resumed.params["emb"][1]
            on[name] = {"step": int(resumed.step), "gap": gap,
                        "table_shard_rows": sorted({s.data.shape[0] for s in table.addressable_shards})}
        found["on"][count] = on
    print(json.dumps(found))


if __name__ == "__main__":
    main(*sys.argv[1:])
