"""The reproduction: meta-train MeLU on MovieLens, score every scenario, write the table.

:func:`reproduce` (``jaxmeta reproduce``) runs the cold-start protocol end to
end on a :class:`~jaxmeta.data.datasets.Dataset` of
:func:`jaxmeta.data.datasets.movielens`:

* ``ml-1m``: MeLU's published split, meta-training on the ``warm`` users,
  evaluation on all four scenarios;
* ``ml-100k``: RecBole-MetaRec's user split, meta-training on ``train``,
  evaluation on ``test`` as the scenario ``user_cold``.

In each scenario every user adapts on its support set and is scored on its 10
query ratings (:func:`jaxmeta.evaluation.query_metrics`: per user, then the mean
over users). Methods: each meta-learner on MeLU
(:data:`jaxmeta.algorithms.META_LEARNERS`), the global MeLU without adaptation
(``no_adaptation``) and fine-tuned per user (``finetune``, same trained weights),
biased MF trained on the training users' ratings and fine-tuned per user on the
user part (``mf``), and the baselines of :mod:`jaxmeta.evaluation` computed from
the training users' ratings (``global_mean``, ``item_mean``, ``popularity``,
``constant``, ``random``). Every trained model is one :func:`jaxmeta.train.fit`
on the same bucketed, fixed-shape batches (:class:`jaxmeta.train.BatchStream`,
support and query re-dealt every epoch by default), selected on the validation
sets by its :class:`jaxmeta.train.Validate` hook (early stopping; the
fine-tuning rate too), so the baselines get the same care as the meta-learners.
On ML-1M, ``valid_items`` also holds out some warm items: the checkpoints
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
``null`` where a value does not apply), and ``results.md``, the same as Markdown
tables under the command that made them (:mod:`jaxmeta.report`). ``finetune``
shares the trained global model, and so its timing, with ``no_adaptation``.

References:
  H. Lee et al. MeLU: Meta-Learned User Preference Estimator for Cold-Start
  Recommendation. KDD 2019.
  RecBole-MetaRec (github.com/nuster1128/RecBole-MetaRec).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optax

from jaxmeta import algorithms
from jaxmeta._checks import positive_int
from jaxmeta.algorithms import MetaLearner
from jaxmeta.data import datasets
from jaxmeta.data.datasets import Dataset
from jaxmeta.evaluation import (DEFAULT_KS, baseline_metrics, evaluation_batches, fit_item_stats, per_user_metrics,
                                predict_tasks, query_metrics)
from jaxmeta.models import Model, biased_mf_by_id, melu
from jaxmeta.report import format_markdown, paired
from jaxmeta.tasks import TaskBatch
from jaxmeta.train import BatchStream, LogMetrics, StopOnNaN, Validate, fit

DEFAULT_ALGOS = ("maml", "fomaml", "metasgd", "reptile", "anil")
METRICS = ("mae", "rmse", "ndcg@3", "ndcg@5", "train_seconds", "users_per_s")
DEFAULT_FINETUNE_LRS = (0.01, 0.03, 0.1)
BASELINE_METHODS = ("no_adaptation", "finetune", "mf", "global_mean", "item_mean", "popularity", "constant", "random")

__all__ = ("DEFAULT_ALGOS", "METRICS", "Experiment", "reproduce")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The settings of a reproduction (the flags of ``jaxmeta reproduce``).

    Data (see :func:`jaxmeta.data.datasets.movielens`): ``dataset``,
    ``data_dir``, ``seed`` (also initialisation and batch order), ``vocab``,
    ``min_count``, ``valid_fraction``, ``item_field``, ``text``,
    ``text_cache``, ``text_tokens``, ``valid_items``. Training: every trained
    model runs up to ``steps`` outer steps (the selected checkpoint may be
    earlier) of ``batch_size`` users, ``inner_steps`` inner SGD steps in
    training and at test time, Adam at ``outer_lr`` after a global-norm clip
    at 1, checked on the validation sets every ``eval_every`` steps.
    ``inner_lr``: the inner SGD rate (Meta-SGD: the initial rates), one number
    or ``{algo: rate}`` for every algorithm of ``algos``. ``finetune_lrs``: the
    per-user rates tried for ``finetune`` and ``mf`` (chosen with the
    checkpoint). ``resplit``: re-deal each training user's ratings every epoch.
    ``baselines``: the global model, fine-tuning and the simple baselines;
    ``mf``: biased MF.
    """

    dataset: str = "ml-1m"
    data_dir: str = "../shared/data"
    algos: tuple[str, ...] = DEFAULT_ALGOS
    steps: int = 2000
    batch_size: int = 32
    inner_steps: int = 5
    inner_lr: float | Mapping[str, float] = 0.1
    outer_lr: float = 1e-3
    finetune_lrs: tuple[float, ...] = DEFAULT_FINETUNE_LRS
    resplit: bool = True
    eval_every: int = 100
    vocab: str = "train"
    min_count: int = 5
    valid_fraction: float = 0.1
    seed: int = 0
    baselines: bool = True
    mf: bool = True
    num_buckets: int = 4
    eval_batch_size: int = 128
    item_field: bool = False
    text: str | None = None
    text_cache: str | None = datasets.DEFAULT_TEXT_CACHE
    text_tokens: int | None = datasets.text_features.DEFAULT_TOKENS
    valid_items: float = 0.0

    def __post_init__(self):
        if isinstance(self.algos, str) or any(a not in algorithms.META_LEARNERS for a in self.algos):
            raise ValueError(f"algos={self.algos!r}: pass a list drawn from {sorted(algorithms.META_LEARNERS)}.")
        object.__setattr__(self, "algos", tuple(self.algos))
        object.__setattr__(self, "finetune_lrs", tuple(self.finetune_lrs))
        if set(self.algos) - set(self.rates()):
            raise ValueError(f"inner_lr={self.inner_lr!r} has no rate for {sorted(set(self.algos) - set(self.rates()))}: "
                             "pass one number or a rate for every algorithm.")
        if not self.finetune_lrs or any(not lr > 0 for lr in self.finetune_lrs):
            raise ValueError(f"finetune_lrs={self.finetune_lrs!r}: pass one or more positive rates.")
        for name in ("steps", "batch_size", "inner_steps", "eval_every", "num_buckets", "eval_batch_size"):
            positive_int(name, getattr(self, name))

    def rates(self) -> dict[str, float]:
        """``{algo: inner rate}``."""
        if isinstance(self.inner_lr, Mapping):
            return dict(self.inner_lr)
        return {a: float(self.inner_lr) for a in self.algos}

    def outer_optimizer(self) -> optax.GradientTransformation:
        return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(self.outer_lr))


def _row(metrics: Mapping[str, float | None], seconds: float | None = None, users_per_s: float | None = None):
    row = {k: metrics.get(k) for k in METRICS[:4]}
    row.update(train_seconds=None if seconds is None else round(seconds, 2),
               users_per_s=None if users_per_s is None else round(users_per_s, 1))
    return row


def _predictor(learner: MetaLearner) -> Callable[[Any], Callable[[TaskBatch], Any]]:
    return lambda state: (lambda batch: learner.predict(state, batch))


def reproduce(experiment: Experiment = Experiment(), out_dir: str | os.PathLike | None = None, *,
              progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Meta-trains MeLU with each algorithm of ``experiment``, scores every method in every scenario.

    Args:
      experiment: the settings.
      out_dir: where to write ``results.json`` and ``results.md`` (created);
        ``None`` writes nothing.
      progress: show progress bars.
      command: the command line written at the top of ``results.md``; default the Python call.

    Returns:
      The results dict written to ``results.json``.
    """
    ex = experiment
    command = command or f"python -c 'from jaxmeta.reproduce import *; reproduce({ex!r}, {out_dir!r})'"
    start = time.perf_counter()
    data = datasets.movielens(ex.dataset, ex.data_dir, seed=ex.seed, item_field=ex.item_field, vocab=ex.vocab,
                              min_count=ex.min_count, valid_fraction=ex.valid_fraction, text=ex.text,
                              text_cache=ex.text_cache, text_tokens=ex.text_tokens, valid_items=ex.valid_items)
    model = melu(data.encoder.spec, output_bias=data.mean_rating)
    # one shape for every evaluation batch: one compilation per method, not per scenario
    names = list(data.valid) + list(data.scenarios)
    shaped = dict(zip(names, evaluation_batches([*data.valid.values(), *data.scenarios.values()],
                                                ex.eval_batch_size)))
    valid = {v: shaped[v] for v in data.valid}
    results: dict[str, dict[str, Any]] = {s: {} for s in data.scenarios}
    per_user: dict[str, dict[str, dict[str, np.ndarray]]] = {s: {} for s in data.scenarios}
    selected: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, list]] = {}

    def train(learner: MetaLearner, desc: str, methods: dict[str, Callable]) -> tuple[Validate, float, float]:
        """``fit`` with validation of ``methods``: the hook (best states, curves), train seconds, users/s."""
        validate = Validate(valid, methods, every=ex.eval_every, keep=True)
        log = LogMetrics(every=ex.steps)
        stream = BatchStream(data.train, batch_size=ex.batch_size, num_buckets=ex.num_buckets, seed=ex.seed,
                             resplit=ex.resplit)
        began = time.perf_counter()
        fit(learner, stream, steps=ex.steps, seed=ex.seed, hooks=[StopOnNaN(ex.eval_every, desc=desc), log, validate],
            desc=desc, progress=progress)
        seconds = time.perf_counter() - began - validate.seconds
        for name, per_set in validate.curves.items():
            curves[name] = per_set
        return validate, seconds, log.total_users / seconds

    def score(method: str, pick: Callable[[str], tuple[MetaLearner, Any]], seconds=None, users_per_s=None):
        """Scores ``method`` in every scenario with ``pick(set)``, ``set`` the scenario's validation set."""
        for s in data.scenarios:
            learner, state = pick(data.valid_for(s))
            predictions, queries = predict_tasks(lambda b: learner.predict(state, b), shaped[s])
            results[s][method] = _row(query_metrics(predictions, queries, ks=DEFAULT_KS), seconds, users_per_s)
            per_user[s][method] = per_user_metrics(predictions, queries, ks=(3,))

    def keep(method: str, validate: Validate, name: Callable[[str], str],
             extra: Callable[[str], Mapping[str, Any]] = lambda v: {}):
        """Records the checkpoint of ``name(set)`` chosen on each validation set: the users' at the top,
        others nested."""
        picks = {}
        for v in valid:
            chosen = validate.chosen(v, name(v))
            picks[v] = {"step": chosen.step, "valid_mae": round(chosen.valid_mae, 4), **extra(v)}
        selected[method] = {**picks.pop("users"), **picks}

    def tuned(method: str, validate: Validate, seconds: float, rate: float, tuners: Mapping[float, MetaLearner]):
        """Fine-tuning at the rate, and from the checkpoint, with the lowest validation MAE on each set."""
        lrs = {v: min(ex.finetune_lrs, key=lambda r: validate.chosen(v, f"{method}@{r}").valid_mae) for v in valid}
        keep(method, validate, lambda v: f"{method}@{lrs[v]}", lambda v: {"finetune_lr": lrs[v]})
        score(method, lambda v: (tuners[lrs[v]], validate.chosen(v, f"{method}@{lrs[v]}").state), seconds, rate)

    rates = ex.rates()
    for algo in ex.algos:
        learner = algorithms.META_LEARNERS[algo](model, inner_optimizer=rates[algo], inner_steps=ex.inner_steps,
                                                 outer_optimizer=ex.outer_optimizer())
        validate, seconds, rate = train(learner, algo, {algo: _predictor(learner)})
        keep(algo, validate, lambda v: algo, lambda v: {"inner_lr": rates[algo]})
        score(algo, lambda v: (learner, validate.chosen(v, algo).state), seconds, rate)

    def finetuners(glob_model: Model) -> dict[float, MetaLearner]:
        return {lr: algorithms.finetune(glob_model, inner_optimizer=lr, inner_steps=ex.inner_steps)
                for lr in ex.finetune_lrs}

    if ex.baselines:
        glob = algorithms.no_adaptation(model, outer_optimizer=ex.outer_optimizer())
        tuners = finetuners(model)
        methods = {"no_adaptation": _predictor(glob), **{f"finetune@{lr}": _predictor(t) for lr, t in tuners.items()}}
        validate, seconds, rate = train(glob, "global model", methods)
        keep("no_adaptation", validate, lambda v: "no_adaptation")
        score("no_adaptation", lambda v: (glob, validate.chosen(v, "no_adaptation").state), seconds, rate)
        tuned("finetune", validate, seconds, rate, tuners)
    if ex.mf:
        mf_model = biased_mf_by_id(data.warm_ratings["item"].to_numpy(), global_bias=data.mean_rating)
        glob = algorithms.no_adaptation(mf_model, outer_optimizer=ex.outer_optimizer())
        tuners = finetuners(mf_model)
        validate, seconds, rate = train(glob, "mf", {f"mf@{lr}": _predictor(t) for lr, t in tuners.items()})
        tuned("mf", validate, seconds, rate, tuners)
    if ex.baselines:
        stats = fit_item_stats(data.warm_ratings)
        for s in data.scenarios:
            _, queries = predict_tasks(lambda b: np.zeros(b.query_y.shape), shaped[s])
            for method, m in baseline_metrics(stats, queries, ks=DEFAULT_KS).items():
                results[s][method] = _row(m)

    out = {"dataset": ex.dataset, "split": data.split, "text": None if ex.text is None else str(ex.text),
           "text_tokens": None if ex.text is None else ex.text_tokens,
           "results": results, "selected": selected, "paired": paired(per_user, ex.algos), "curves": curves}
    if out_dir is not None:
        _write(out, Path(out_dir), data, command, time.perf_counter() - start)
    return out


def _write(out: dict[str, Any], path: Path, data: Dataset, command: str, seconds: float) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    items = data.valid.get("new_items")
    (path / "results.md").write_text(format_markdown(
        out, command=command, seconds=seconds, users={s: len(t) for s, t in data.scenarios.items()},
        train_users=len(data.train), valid_users=len(data.valid["users"]),
        item_users=None if items is None else len(items)))


if __name__ == "__main__":  # python -m jaxmeta.reproduce: the same as jaxmeta reproduce
    import sys

    from jaxmeta.cli import main

    sys.exit(main(["reproduce", *sys.argv[1:]]))
