"""MovieLens cold start: MeLU meta-trained with MAML against one global MeLU.

    python examples/movielens_cold_start.py --dataset ml-100k --steps 200

Each user is a task. ``jaxmeta.data.datasets.movielens`` reads the ratings, splits the
users into training, validation and cold-start scenarios (ML-100K:
RecBole-MetaRec's user split, scenario ``user_cold``; ML-1M: MeLU's four) and
encodes user and item features. MAML meta-learns MeLU's initialisation, which
5 SGD steps on a new user's support ratings personalise; the baseline trains
the same MeLU on every training rating and uses it unadapted. Both are scored on
each scenario's query ratings (MAE and nDCG@3, per user, then averaged).

The files are read in place from ``--data-dir`` (default ``$JAXMETA_DATA``,
else ``../shared/data``), the folder holding ``ml-100k/`` and ``ml-1m/``.
``jaxmeta reproduce`` runs the whole benchmark, with model selection and the baselines.
"""

import argparse
import os
import sys
from functools import partial
from pathlib import Path

import optax

from jaxmeta import algorithms
from jaxmeta.data import datasets
from jaxmeta.evaluation import evaluation_batches, predict_tasks, query_metrics
from jaxmeta.models import melu
from jaxmeta.train import BatchStream, StopOnNaN, Validate, fit


def main(dataset: str, data_dir: str, steps: int, eval_every: int) -> None:
    if not (Path(data_dir) / dataset).is_dir():
        sys.exit(f"MovieLens data not found: {Path(data_dir) / dataset} is not a folder. Pass --data-dir "
                 f"(or set JAXMETA_DATA) to the folder holding {dataset}/.")
    data = datasets.movielens(dataset, data_dir)
    print(f"{dataset}: {len(data.train)} training users, {len(data.valid['users'])} validation users, "
          + ", ".join(f"{len(users)} {name} users" for name, users in data.scenarios.items()))

    model = melu(data.encoder.spec, output_bias=data.mean_rating)
    outer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    learners = {
        "maml": algorithms.maml(model, inner_optimizer=optax.sgd(0.1), inner_steps=5, outer_optimizer=outer),
        "no_adaptation": algorithms.no_adaptation(model, outer_optimizer=outer),
    }
    # One padded shape for every evaluation batch: one compilation per learner.
    valid, *scenarios = evaluation_batches([data.valid["users"], *data.scenarios.values()], 128)
    scenarios = dict(zip(data.scenarios, scenarios))

    rows = []
    for name, learner in learners.items():
        # One training shape too (num_buckets=1): over a few hundred steps, compiling one per
        # support-size bucket costs more than the padding saves. resplit: re-deal support/query every epoch.
        stream = BatchStream(data.train, batch_size=32, num_buckets=1, resplit=True, seed=0)
        validate = Validate({"users": valid}, learner, every=eval_every, keep=True)  # the best state is kept
        fit(learner, stream, steps=steps, hooks=[StopOnNaN(), validate], desc=name)
        curve = ", ".join(f"{mae:.4f} (step {step})" for step, mae in validate.curves["model"]["users"])
        best = validate.chosen("users", "model")
        print(f"{name}: validation MAE {curve}; scoring step {best.step}")
        for scenario, batches in scenarios.items():
            predictions, queries = predict_tasks(partial(learner.predict, best.state), batches)
            rows.append((scenario, name, query_metrics(predictions, queries, ks=(3,))))

    print(f"\n{'scenario':<16} {'method':<14} {'MAE':>7} {'nDCG@3':>7}")
    for scenario, name, m in rows:
        print(f"{scenario:<16} {name:<14} {m['mae']:7.4f} {m['ndcg@3']:7.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k", choices=datasets.MOVIELENS)
    parser.add_argument("--data-dir", default=os.environ.get("JAXMETA_DATA", "../shared/data"),
                        help="the folder holding ml-100k/ and ml-1m/")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=50, help="steps between validation checks")
    args = parser.parse_args()
    main(args.dataset, args.data_dir, args.steps, args.eval_every)
