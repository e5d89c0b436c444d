"""MovieLens cold start: MeLU meta-trained with MAML against one global MeLU.

    python examples/movielens_cold_start.py --dataset ml-100k --steps 200

Each user is a task. ``jaxmeta.reproduce.load`` reads the ratings, splits the
users into training, validation and cold-start scenarios (ML-100K:
RecBole-MetaRec's user split, scenario ``user_cold``; ML-1M: MeLU's four) and
encodes user and item features. MAML meta-learns MeLU's initialisation, which
5 SGD steps on a new user's support ratings personalise; the baseline trains
the same MeLU on every training rating and uses it unadapted. Both are scored on
each scenario's query ratings (MAE and nDCG@3, per user, then averaged).

The files are read in place from ``--data-dir`` (default ``$JAXMETA_DATA``,
else ``../shared/data``), the folder holding ``ml-100k/`` and ``ml-1m/``.
``python -m jaxmeta.reproduce`` runs the whole benchmark, with model selection.
"""

import argparse
import json
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

import optax

from jaxmeta import algorithms, reproduce
from jaxmeta.evaluation import evaluation_batches, predict_tasks, query_metrics
from jaxmeta.models import melu
from jaxmeta.train import MetricsLog, TrainConfig, fit


def main(dataset: str, data_dir: str, steps: int, eval_every: int) -> None:
    if not (Path(data_dir) / dataset).is_dir():
        sys.exit(f"MovieLens data not found: {Path(data_dir) / dataset} is not a folder. Pass --data-dir "
                 f"(or set JAXMETA_DATA) to the folder holding {dataset}/.")
    data = reproduce.load(dataset, data_dir)
    print(f"{dataset}: {len(data.train)} training users, {len(data.valid)} validation users, "
          + ", ".join(f"{len(users)} {name} users" for name, users in data.scenarios.items()))

    model = melu(data.encoder.spec, output_bias=float(data.warm_ratings["rating"].mean()))
    outer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    learners = {
        "maml": algorithms.maml(model, inner_optimizer=optax.sgd(0.1), inner_steps=5, outer_optimizer=outer),
        "no_adaptation": algorithms.no_adaptation(model, outer_optimizer=outer),
    }
    # One padded shape for every evaluation batch: one compilation per learner.
    users = [data.valid, *data.scenarios.values()]
    shape = dict(support_size=max(int(t.support_sizes.max()) for t in users),
                 query_size=max(int(t.query_sizes.max()) for t in users))
    valid = list(evaluation_batches(data.valid, 128, **shape))
    scenarios = {name: list(evaluation_batches(t, 128, **shape)) for name, t in data.scenarios.items()}
    # One training shape too: over a few hundred steps, compiling one per support-size
    # bucket costs more than the padding saves. resplit: re-deal support/query every epoch.
    config = TrainConfig(steps=steps, num_buckets=1, resplit=True)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, learner in learners.items():
            log = MetricsLog(Path(tmp) / f"{name}.jsonl")  # fit writes the validation scores here
            state, _ = fit(learner, data.train, config, desc=name, valid=valid, eval_every=eval_every, log=log)
            records = [json.loads(line) for line in log.path.read_text().splitlines()]
            curve = ", ".join(f"{r['mae']:.4f} (step {r['step']})" for r in records if r["kind"] == "valid")
            print(f"{name}: validation MAE {curve}")
            for scenario, batches in scenarios.items():
                predictions, queries = predict_tasks(partial(learner.predict, state), batches)
                rows.append((scenario, name, query_metrics(predictions, queries, ks=(3,))))

    print(f"\n{'scenario':<16} {'method':<14} {'MAE':>7} {'nDCG@3':>7}")
    for scenario, name, m in rows:
        print(f"{scenario:<16} {name:<14} {m['mae']:7.4f} {m['ndcg@3']:7.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k", choices=reproduce.DATASETS)
    parser.add_argument("--data-dir", default=os.environ.get("JAXMETA_DATA", "../shared/data"),
                        help="the folder holding ml-100k/ and ml-1m/")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=50, help="steps between validation checks")
    args = parser.parse_args()
    main(args.dataset, args.data_dir, args.steps, args.eval_every)
