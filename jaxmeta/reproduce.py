"""The reproduction: meta-train MeLU on MovieLens, score every scenario, write the table.

:func:`reproduce` (also ``python -m jaxmeta.reproduce``) runs the cold-start
protocol end to end:

* ``ml-1m``: MeLU's published split (:func:`jaxmeta.data.splits.melu_scenarios`,
  the warm state rebuilt from ``ratings_no_timestamp.dat`` where absent), MeLU's
  8 fields (:func:`jaxmeta.data.features.melu_encoder`); meta-training on the
  ``warm`` users, evaluation on all four scenarios;
* ``ml-100k``: RecBole-MetaRec's user split (8:1:1,
  :func:`jaxmeta.data.splits.recbole_user_split`) with the fields MovieLens-100K
  has (user gender, age, occupation, zip prefix; item genres); meta-training on
  ``train``, evaluation on ``test`` as the scenario ``user_cold``.

In each scenario every user adapts on its support set and is scored on its 10
query ratings (:func:`jaxmeta.evaluation.query_metrics`: per user, then the mean
over users). Methods: each meta-learner on MeLU
(:data:`jaxmeta.algorithms.META_LEARNERS`), the global MeLU without adaptation
(``no_adaptation``) and fine-tuned per user (``finetune``, same trained weights),
biased MF trained on all warm users' ratings and fine-tuned per user on the user
part (``mf``), and the baselines of :mod:`jaxmeta.evaluation` computed from all
warm ratings (``global_mean``, ``item_mean``, ``popularity``, ``constant``,
``random``). Every trained model runs the same number of outer steps on the same
bucketed, fixed-shape batches (:func:`jaxmeta.train.batches`).

The ``warm`` scenario scores the meta-training users themselves (MeLU's protocol):
their query ratings were seen in training, by the models and by the item means.

Outputs, in ``out_dir``: ``results.json``, ``{"dataset", "split", "results":
{scenario: {method: {"mae", "rmse", "ndcg@3", "ndcg@5", "train_seconds",
"users_per_s"}}}}`` (``train_seconds``: wall time of training, compilation
and batching included; ``users_per_s``: real training users over it; ``null``
where a value does not apply: timings of untrained baselines, MAE and RMSE of
ranking-only ones), and ``results.md``, one Markdown table per scenario under
the command that made it. ``finetune`` shares the trained global model, and
so its timing, with ``no_adaptation``.

References:
  H. Lee et al. MeLU: Meta-Learned User Preference Estimator for Cold-Start
  Recommendation. KDD 2019.
  RecBole-MetaRec (github.com/nuster1128/RecBole-MetaRec).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from tqdm.auto import tqdm

from jaxmeta import algorithms
from jaxmeta.algorithms import MetaLearner, MetaState
from jaxmeta.data import movielens as ml
from jaxmeta.data import splits
from jaxmeta.data.features import FeatureEncoder, melu_encoder
from jaxmeta.evaluation import (
    DEFAULT_KS,
    baseline_metrics,
    evaluation_batches,
    fit_item_stats,
    predict_tasks,
    query_metrics,
    with_item_ids,
)
from jaxmeta.models import Model, biased_mf, melu
from jaxmeta.tasks import RaggedTasks, TaskBatch
from jaxmeta.train import TrainConfig, batches, make_learner, outer_optimizer

DATASETS = ("ml-1m", "ml-100k")
DEFAULT_ALGOS = ("maml", "fomaml", "metasgd", "reptile", "anil")
METRICS = ("mae", "rmse", "ndcg@3", "ndcg@5", "train_seconds", "users_per_s")
BASELINE_METHODS = ("no_adaptation", "finetune", "mf", "global_mean", "item_mean", "popularity", "constant", "random")

__all__ = ("DATASETS", "DEFAULT_ALGOS", "METRICS", "Data", "format_markdown", "load", "main", "reproduce")


class Data(NamedTuple):
    """One dataset's split, as :func:`load` returns it."""

    dataset: str  # written to the results
    split: str  # written to the results
    train: RaggedTasks  # the meta-training users (inputs with "item_id")
    scenarios: dict[str, RaggedTasks]  # {scenario: users to evaluate} (inputs with "item_id")
    warm_ratings: pd.DataFrame  # every training rating (user, item, rating): the simple baselines' data
    encoder: FeatureEncoder  # the fitted feature encoder (its spec sizes MeLU)


def _folder(data_dir: str | os.PathLike, dataset: str) -> Path:
    root = Path(data_dir)
    return root / dataset if (root / dataset).is_dir() else root


def _tasks(table: pd.DataFrame, encoder: FeatureEncoder) -> RaggedTasks:
    return with_item_ids(splits.build_tasks(table, encoder), table)


def load(dataset: str, data_dir: str | os.PathLike, *, seed: int = 0, item_field: bool = False) -> Data:
    """Reads and splits ``dataset`` (``"ml-1m"`` or ``"ml-100k"``) from ``data_dir``.

    ``data_dir`` is the folder holding ``ml-1m/`` and ``ml-100k/`` (or the
    dataset's folder itself). ``seed`` draws the query items (and, on ML-100K,
    the user split). ``item_field`` adds the item id as one more categorical
    item field (``"movie"``) on ML-100K, whose only item feature is otherwise
    its genres (ML-1M's MeLU fields are left as published).
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r}: pass one of {DATASETS}.")
    folder = _folder(data_dir, dataset)
    if dataset == "ml-1m":
        ratings = ml.load_ml1m_ratings(folder, filename="ratings_no_timestamp.dat", duplicates="keep")
        frames = splits.melu_scenarios(folder / "melu_states", ratings=ratings)
        encoder = melu_encoder(ml.load_ml1m_users(folder), ml.load_melu_items(folder / "melu_extra"))
        tables = splits.split_tables(frames, rng=seed)
        train_name, names = "warm", {s: s for s in splits.SCENARIOS}
        split = "melu"
    else:
        ratings = ml.load_ml100k_ratings(folder)
        items = ml.load_ml100k_items(folder)
        items = items.assign(movie=items["item"]) if item_field else items
        encoder = FeatureEncoder.fit(
            ml.load_ml100k_users(folder), items,
            user_categorical=["gender", "occupation", "zip"], user_numeric=["age"], item_multi=["genres"],
            item_categorical=["movie"] if item_field else [],
            prefix={"zip": 3},  # a full 5-digit zip is nearly a user id: useless for a new user
        )
        users_rng, query_rng = np.random.default_rng(seed).spawn(2)  # as splits.recbole_split
        frames = splits.recbole_user_split(ratings, rng=users_rng)
        tables = splits.split_tables(frames, rng=query_rng)
        train_name, names = "train", {"user_cold": "test"}
        split = "recbole-metarec user split (8:1:1)"
    train = _tasks(tables[train_name], encoder)
    scenarios = {s: _tasks(tables[part], encoder) for s, part in names.items() if len(tables[part])}
    warm = frames[train_name][["user", "item", "rating"]]
    return Data(dataset, split, train, scenarios, warm, encoder)


# ----------------------------------------------------------------------------- models


def _mf_model(warm_items: np.ndarray, *, global_bias: float, dim: int = 32) -> Model:
    """Biased MF over the warm items, read from the raw ``"item_id"`` field
    (an item without warm ratings is the OOV item)."""
    items = jnp.asarray(np.sort(np.unique(warm_items)).astype(np.int32))
    mf = biased_mf(len(items), dim=dim, global_bias=global_bias)

    def apply(params, x):
        ids = x["item_id"].astype(jnp.int32)
        pos = jnp.clip(jnp.searchsorted(items, ids), 0, len(items) - 1)
        index = jnp.where(items[pos] == ids, pos + 1, 0).astype(jnp.int32)
        return mf.apply(params, {"item": index})

    return Model(init=mf.init, apply=apply, is_fast=mf.is_fast, is_head=mf.is_head)


def _train(learner: MetaLearner, tasks: RaggedTasks, config: TrainConfig, *, desc: str, progress: bool):
    """``config.steps`` outer steps on :func:`jaxmeta.train.batches`; returns
    ``(state, train_seconds, users_per_s)`` (wall time, compilation included)."""
    state = learner.init(jax.random.key(config.seed))
    stream = batches(tasks, config)
    start, users, metrics = time.perf_counter(), 0, {}
    for _ in tqdm(range(config.steps), desc=desc, disable=not progress, unit="step", leave=False):
        state, metrics = learner.step(state, next(stream))
        users = users + metrics["tasks"]  # stays on device: no sync per step
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        raise FloatingPointError(f"{desc}: training diverged (final loss {loss}); lower inner_lr or outer_lr.")
    return state, seconds, float(users) / seconds


def _row(metrics: dict[str, float | None], seconds: float | None = None, users_per_s: float | None = None):
    row = {k: metrics.get(k) for k in METRICS[:4]}
    row.update(train_seconds=None if seconds is None else round(seconds, 2),
               users_per_s=None if users_per_s is None else round(users_per_s, 1))
    return row


# ----------------------------------------------------------------------------- the run


def reproduce(
    dataset: str = "ml-1m",
    data_dir: str | os.PathLike = "../shared/data",
    out_dir: str | os.PathLike | None = "results",
    *,
    algos: Sequence[str] = DEFAULT_ALGOS,
    steps: int = 2000,
    batch_size: int = 32,
    inner_steps: int = 5,
    inner_lr: float = 0.05,
    outer_lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    baselines: bool = True,
    mf: bool = True,
    num_buckets: int = 4,
    eval_batch_size: int = 128,
    item_field: bool = False,
    finetune_lr: float | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Meta-trains MeLU with each algorithm, scores every method in every scenario.

    Args:
      dataset: ``"ml-1m"`` (MeLU's split, four scenarios) or ``"ml-100k"``
        (RecBole-MetaRec's user split, scenario ``user_cold``).
      data_dir: the folder holding ``ml-1m/`` and ``ml-100k/``.
      out_dir: where to write ``results.json`` and ``results.md`` (created);
        ``None`` writes nothing.
      algos: meta-learners to train, names of :data:`jaxmeta.algorithms.META_LEARNERS`.
      steps: outer steps of every trained model (meta-learners, the global
        MeLU, MF).
      batch_size: users per outer step.
      inner_steps: inner SGD steps, in training and at test time (fine-tuning too).
      inner_lr: inner SGD rate (Meta-SGD: the initial rates; fine-tuning: the rate).
      outer_lr: Adam rate of the outer step (global-norm clip 1).
      seed: initialisation, batch order, the query items (and the ML-100K user split).
      progress: show progress bars.
      baselines: also the global model and fine-tuning (``no_adaptation``,
        ``finetune``) and the simple baselines.
      mf: also biased MF (``mf``).
      num_buckets: support-size buckets of the training batches.
      eval_batch_size: users per evaluation batch.
      finetune_lr: the SGD rate of the ``finetune`` and ``mf`` baselines
        per-user steps (default ``inner_lr``).
      item_field: ML-100K only: the item id as one more MeLU field (see :func:`load`).
      command: the command line written at the top of ``results.md``; default
        the Python call.

    Returns:
      The results dict written to ``results.json``.
    """
    unknown = [a for a in algos if a not in algorithms.META_LEARNERS]
    if unknown or isinstance(algos, str):
        raise ValueError(f"algos={algos!r}: pass a list drawn from {sorted(algorithms.META_LEARNERS)}.")
    config = TrainConfig(steps=steps, batch_size=batch_size, inner_steps=inner_steps, inner_lr=inner_lr,
                         outer_lr=outer_lr, num_buckets=num_buckets, seed=seed)
    if command is None:
        args = {"algos": tuple(algos), "steps": steps, "batch_size": batch_size, "inner_steps": inner_steps,
                "inner_lr": inner_lr, "outer_lr": outer_lr, "seed": seed, "baselines": baselines, "mf": mf,
                "item_field": item_field, "finetune_lr": finetune_lr}
        command = (f"python -c 'from jaxmeta.reproduce import reproduce; reproduce({dataset!r}, {str(data_dir)!r}, "
                   f"{None if out_dir is None else str(out_dir)!r}, " + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")'")
    finetune_lr = inner_lr if finetune_lr is None else finetune_lr
    start = time.perf_counter()
    data = load(dataset, data_dir, seed=seed, item_field=item_field)
    mean = float(data.warm_ratings["rating"].mean())
    model = melu(data.encoder.spec, output_bias=mean)
    # One support size for every evaluation batch: one compilation per method, not per scenario and bucket.
    support = max(int(t.support_sizes.max()) for t in data.scenarios.values())
    query = max(int(t.query_sizes.max()) for t in data.scenarios.values())
    eval_batches = {
        s: list(evaluation_batches(t, eval_batch_size, support_size=support, query_size=query))
        for s, t in data.scenarios.items()
    }
    results: dict[str, dict[str, Any]] = {s: {} for s in data.scenarios}

    def score(method: str, predict: Callable[[TaskBatch], Any], seconds=None, users_per_s=None):
        for s, bs in eval_batches.items():
            predictions, queries = predict_tasks(predict, bs)
            results[s][method] = _row(query_metrics(predictions, queries, ks=DEFAULT_KS), seconds, users_per_s)

    for algo in algos:
        learner = make_learner(dataclasses.replace(config, algo=algo), model)
        state, seconds, rate = _train(learner, data.train, config, desc=algo, progress=progress)
        score(algo, _predictor(learner, state), seconds, rate)

    if baselines:
        outer = outer_optimizer(config)
        glob = algorithms.no_adaptation(model, outer_optimizer=outer)
        state, seconds, rate = _train(glob, data.train, config, desc="global model", progress=progress)
        score("no_adaptation", _predictor(glob, state), seconds, rate)
        tune = algorithms.finetune(model, inner_optimizer=optax.sgd(finetune_lr), inner_steps=inner_steps,
                                   outer_optimizer=outer)
        score("finetune", _predictor(tune, state), seconds, rate)
    if mf:
        mf_model = _mf_model(data.warm_ratings["item"].to_numpy(), global_bias=mean)
        glob = algorithms.no_adaptation(mf_model, outer_optimizer=outer_optimizer(config))
        state, seconds, rate = _train(glob, data.train, config, desc="mf", progress=progress)
        tune = algorithms.finetune(mf_model, inner_optimizer=optax.sgd(finetune_lr), inner_steps=inner_steps)
        score("mf", _predictor(tune, state), seconds, rate)
    if baselines:
        stats = fit_item_stats(data.warm_ratings)
        for s, bs in eval_batches.items():
            _, queries = predict_tasks(lambda b: np.zeros(b.query_y.shape), bs)
            for method, m in baseline_metrics(stats, queries, ks=DEFAULT_KS).items():
                results[s][method] = _row(m)

    out = {"dataset": dataset, "split": data.split, "results": results}
    total = time.perf_counter() - start
    if out_dir is not None:
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "results.json").write_text(json.dumps(out, indent=2) + "\n")
        (path / "results.md").write_text(format_markdown(out, command=command, seconds=total,
                                                         users={s: len(t) for s, t in data.scenarios.items()},
                                                         train_users=len(data.train)))
    return out


def _predictor(learner: MetaLearner, state: MetaState) -> Callable[[TaskBatch], Any]:
    return lambda batch: learner.predict(state, batch)


def _cell(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def format_markdown(results: dict[str, Any], *, command: str, seconds: float | None = None,
                    users: dict[str, int] | None = None, train_users: int | None = None) -> str:
    """``results`` (as :func:`reproduce` returns it) as Markdown: the command,
    then one table per scenario, then a note for each scenario where no
    meta-learner beats the per-item mean on RMSE."""
    lines = [f"# {results['dataset']}, {results['split']}", "", "```", command, "```", ""]
    if seconds is not None:
        lines += [f"Whole run: {seconds:.0f} s" + (f"; {train_users} meta-training users." if train_users else "."), ""]
    notes = []
    for scenario, methods in results["results"].items():
        count = f" ({users[scenario]} users)" if users and scenario in users else ""
        lines += [f"## {scenario}{count}", "",
                  "| method | MAE | RMSE | nDCG@3 | nDCG@5 | train s | users/s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for method, m in methods.items():
            lines.append(f"| {method} | {_cell(m['mae'], 4)} | {_cell(m['rmse'], 4)} | {_cell(m['ndcg@3'], 4)} | "
                         f"{_cell(m['ndcg@5'], 4)} | {_cell(m['train_seconds'], 1)} | {_cell(m['users_per_s'], 0)} |")
        lines.append("")
        meta = {k: v["rmse"] for k, v in methods.items() if k in algorithms.META_LEARNERS and v["rmse"] is not None}
        item = methods.get("item_mean", {}).get("rmse")
        if meta and item is not None:
            best = min(meta, key=meta.get)
            if meta[best] >= item:
                notes.append(f"- {scenario}: the best meta-learner ({best}, RMSE {meta[best]:.4f}) does not beat the "
                             f"per-item mean (RMSE {item:.4f}): it has learned nothing useful there.")
            else:
                notes.append(f"- {scenario}: best meta-learner {best}, RMSE {meta[best]:.4f} vs per-item mean "
                             f"{item:.4f}.")
    lines += [("MAE and RMSE in stars and nDCG with the gain 2^r − 1 are per user over the 10 query items, "
               "then averaged over users; – where a value does not apply."), ""]
    if notes:
        lines += ["## Against the per-item mean (RMSE)", "", *notes, ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The reproduction's flags, shared by ``jaxmeta reproduce`` and ``python -m jaxmeta.reproduce``."""
    parser.add_argument("--dataset", default="ml-1m", choices=DATASETS)
    parser.add_argument("--data-dir", default=os.environ.get("JAXMETA_DATA", "../shared/data"))
    parser.add_argument("--out-dir", default="results")
    parser.add_argument("--algos", nargs="+", default=list(DEFAULT_ALGOS), choices=sorted(algorithms.META_LEARNERS))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--inner-lr", type=float, default=0.05)
    parser.add_argument("--outer-lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune-lr", type=float, default=None, help="fine-tuning rate (default: --inner-lr)")
    parser.add_argument("--item-field", action="store_true", help="ML-100K: the item id as a MeLU field")
    parser.add_argument("--no-mf", action="store_true", help="skip biased MF")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_from_args(args: argparse.Namespace, command: str) -> int:
    """Runs :func:`reproduce` with parsed flags and prints the Markdown table."""
    reproduce(args.dataset, args.data_dir, args.out_dir, algos=tuple(args.algos), steps=args.steps,
              batch_size=args.batch_size, inner_steps=args.inner_steps, inner_lr=args.inner_lr,
              outer_lr=args.outer_lr, seed=args.seed, progress=not args.quiet, mf=not args.no_mf,
              item_field=args.item_field, finetune_lr=args.finetune_lr, command=command)
    print((Path(args.out_dir) / "results.md").read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jaxmeta.reproduce``: see :func:`reproduce` for the options."""
    parser = argparse.ArgumentParser(prog="python -m jaxmeta.reproduce", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_from_args(parser.parse_args(argv), " ".join(["python -m jaxmeta.reproduce", *argv]))


if __name__ == "__main__":
    sys.exit(main())
