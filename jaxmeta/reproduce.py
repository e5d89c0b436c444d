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
``constant``, ``random``), and the strong classic baselines of :mod:`jaxmeta.classic`
(``bias``: mu + b_i + b_u; ``mf_foldin``: ALS-trained biased MF with each user
folded in by ridge regression), their settings chosen on the same validation sets.
``multitask`` chooses its new users' ridge (:data:`MULTITASK_REGS`) with its
checkpoint; ``students`` are distilled from the ``teacher`` (:data:`STUDENTS`).
``model="hybrid"`` meta-learns :func:`jaxmeta.models.hybrid_melu` instead of MeLU
(``no_adaptation`` and ``finetune`` then train the same hybrid): MeLU's features
plus item ids, vectors and biases, its item rows started from an ALS fit
(``warm_start``) and every item's vector also generated from its features. Every trained model is one :func:`jaxmeta.train.fit`
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
{scenario: {method: {"mae", "rmse", "ndcg@3", "ndcg@5", "ndcg_lin@3", "mae_decoded", "train_seconds",
"users_per_s"}}}, "selected": {method: {"step", "valid_mae", rate or settings[, "new_items":
{...}]}}, "paired": {scenario: {algo: {baseline: {metric: [mean, standard error]}}}},
"chosen": {scenario: {"method", "valid_set", "valid_mae", "users", "vs": {baseline:
{metric: [mean, standard error, "win" | "tie" | "loss"]}}}}, "reference": the published
figures shown as cited rows, "curves": {name: {set: [[step, mae], ...]}}, "grids":
{classic baseline: {set: [{setting..., "valid_mae"}, ...]}}, "decoding": {method: {set: {"levels",
"cuts"}}}, "distilled" (with ``students``): {"teacher",
"alpha", "paired": {scenario: {student: {teacher or "finetune": {metric: [mean, standard error]}}}}}}``
(``model``: ``"melu"``
or ``"hybrid"``; ``chosen``: in each scenario the meta-learner with the lowest
validation MAE, against every baseline, :func:`jaxmeta.report.chosen`)
(``train_seconds``: wall time of the outer steps, compilation and batching
included, validation excluded; ``users_per_s``: real training users over it;
``null`` where a value does not apply; ``mae_decoded``: the MAE of the predictions decoded onto the
rating levels by the cut points fitted on the validation set that chose the checkpoint,
:func:`jaxmeta.decoding.fit_cut_points`, the MAE-optimal monotone decoding, ``"decoding"``
holding them), ``results.md``, the same as Markdown
tables under the command that made them (:mod:`jaxmeta.report`), and, with matplotlib
installed, ``validation-users.png`` (``validation-new_items.png`` with held-out
items): each trained method's validation MAE against steps, the classic baselines as
levels (:func:`jaxmeta.plots.validation_curves`). ``finetune``
shares the trained global model, and so its timing, with ``no_adaptation``.

References:
  H. Lee et al. MeLU: Meta-Learned User Preference Estimator for Cold-Start
  Recommendation. KDD 2019.
  RecBole-MetaRec (github.com/nuster1128/RecBole-MetaRec).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from jaxmeta import algorithms, classic
from jaxmeta._checks import positive_int
from jaxmeta.algorithms import MetaLearner
from jaxmeta.data import datasets, splits
from jaxmeta.data.datasets import Dataset
from jaxmeta.decoding import CutPoints, fit_predictor
from jaxmeta.evaluation import (DEFAULT_KS, baseline_metrics, evaluation_batches, fit_item_stats, per_user_metrics,
                                predict_tasks, query_metrics, with_item_ids)
from jaxmeta.metrics import mean_over_users
from jaxmeta.models import Model, biased_mf_by_id, hybrid, hybrid_melu, melu
from jaxmeta.report import chosen, format_markdown, format_summary, paired, summarise
from jaxmeta.tasks import RaggedTasks, TaskBatch
from jaxmeta.train import BatchStream, LogMetrics, StopOnNaN, Validate, fit

DEFAULT_ALGOS = ("maml", "fomaml", "metasgd", "reptile", "anil")
METRICS = ("mae", "rmse", "ndcg@3", "ndcg@5", "ndcg_lin@3", "mae_decoded", "train_seconds", "users_per_s")
MODELS = ("melu", "hybrid")
CLOSED_FORM = algorithms.CLOSED_FORM
WARM_STARTS = ("others", "all", "none")
"""Where hybrid MeLU's item rows start: ALS on the training ratings of the users who are not meta-training tasks
(``"others"``: the task users' query ratings stay unseen, as a new user's are), on every training rating
(``"all"``, as ``mf_foldin``), or at random (``"none"``)."""  # meta-learners without an inner rate or step count
MULTITASK_REGS = (1.0, 3.0, 10.0, 30.0, 100.0)
"""The ridges of a new user's head tried for ``multitask`` (``adapt_reg``), chosen on validation with the
checkpoint; training fits the users' heads with its default ``reg``."""
HIDDEN = (64, 64)  # the hidden widths of MeLU and hybrid MeLU (the ``compressed`` student has half)
LINEAR_KS = (3,)  # nDCG with the rating as the gain, MeLU's convention ("ndcg_lin@3")
PAIRED_BASELINES = ("bias", "mf_foldin", "finetune", "mf", "no_adaptation")
STUDENTS = ("amortised", "compressed", "amortised-small")
"""The students ``students`` may distil from the ``teacher`` (:func:`jaxmeta.algorithms.distill`):
``amortised`` (:func:`jaxmeta.algorithms.amortised` on the same model, warm-started from the teacher: a new user
costs one forward pass), ``compressed`` (the teacher's algorithm on the model with half its hidden widths,
its matching weights, the embeddings, warm-started from the teacher) and ``amortised-small`` (both at once:
:func:`jaxmeta.algorithms.amortised` on the model with :data:`SMALL_EMBED`-wide embeddings and
:data:`SMALL_HIDDEN` hidden layers, its encoder :data:`SMALL_ENCODER`; the student of ``jaxmeta bench
--workload adapt``'s ``amortised-small``)."""
LOSSES = ("mse", "mae", "huber")
"""The meta-learners' training losses (``--loss``): squared error, absolute error (MAE's own minimiser,
the median) and Huber's in between."""
SMALL_EMBED, SMALL_HIDDEN = 16, (32, 32)  # the embedding width is most of its cost; the hidden widths little
SMALL_ENCODER = {"encoder_width": 32, "task_dim": 16}
REFERENCE = {"ml-1m": {"method": "MeLU-5 (paper)", "mae": {"user_cold": 0.7854, "item_cold": 0.9275,
                                                           "user_item_cold": 0.9235},
                       "source": "Lee et al., MeLU, KDD 2019: MeLU-5's MAE on MovieLens-1M as published"}}
"""Published figures shown as cited rows of the tables (not rerun here)."""
DEFAULT_FINETUNE_LRS = (0.01, 0.03, 0.1)
BASELINE_METHODS = ("no_adaptation", "finetune", "mf", "global_mean", "item_mean", "popularity", "constant", "random")

__all__ = ("DEFAULT_ALGOS", "METRICS", "Experiment", "reproduce", "reproduce_seeds")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The settings of a reproduction (the flags of ``jaxmeta reproduce``).

    Data (see :func:`jaxmeta.data.datasets.movielens`): ``dataset``,
    ``data_dir``, ``seed`` (also initialisation and batch order), ``vocab``,
    ``min_count``, ``valid_fraction``, ``item_field``, ``text``,
    ``text_cache``, ``text_tokens``, ``valid_items``, ``keep_heavy``. Training: every trained
    model runs up to ``steps`` outer steps (the selected checkpoint may be
    earlier) of ``batch_size`` users, ``inner_steps`` inner SGD steps in
    training and at test time, Adam at ``outer_lr`` after a global-norm clip
    at 1, checked on the validation sets every ``eval_every`` steps.
    ``inner_lr``: the inner SGD rate (Meta-SGD: the initial rates), one number
    or ``{algo: rate}`` for every algorithm of ``algos``. ``finetune_lrs``: the
    per-user rates tried for ``finetune`` and ``mf`` (chosen with the
    checkpoint). ``resplit``: re-deal each training user's ratings every epoch.
    ``baselines``: the global model, fine-tuning and the simple baselines;
    ``mf``: biased MF; ``classic``: ``bias`` and ``mf_foldin``. ``model``:
    ``"melu"`` or ``"hybrid"``; for the hybrid, ``factors`` (its vector width
    when not warm-started), ``known_min_ratings`` (fewest training ratings for
    an item to get an id row; rarer items train the feature generator),
    ``warm_start`` (:data:`WARM_STARTS`) and ``freeze_items`` (with a warm
    start: the item rows stay at the ALS fit's values, every other parameter is
    meta-learned; see :func:`jaxmeta.algorithms.frozen`); ``without``: terms
    left out of it, for ablations (:data:`jaxmeta.models.hybrid.PARTS`). ``heavy_users``: the training users
    with more than :data:`~jaxmeta.data.splits.MAX_RATINGS` ratings, whom
    MeLU's task filter drops, meta-train too, each history dealt at random into
    tasks of at most that many ratings (:func:`heavy_tasks`). Distillation:
    ``teacher`` (one of ``algos``) is trained first as the others are; each of
    ``students`` (:data:`STUDENTS`) is then trained towards the teacher's
    adapted predictions, its checkpoint chosen on the validation users (query
    targets ``(1 - distill_alpha) * y + distill_alpha * teacher``), and scored
    like any method, paired against the teacher and ``finetune``, for up to
    ``student_steps`` outer steps (default ``steps``). ``loss``
    (:data:`LOSSES`): the meta-learners' training loss (``ridge``: the query
    loss; its support fit is least squares whatever the loss); the baselines
    are least-squares fits whatever it is. ``implicit_prior``: ``ridge``'s prior
    mean moved by which items each user rated and how many
    (``algorithms.ridge(implicit=True)``); ``implicit_vectors``: that prior reads
    free item vectors (``hybrid_melu(implicit_vectors=True)``, SVD++'s ``y_j``).
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
    model: str = "melu"
    classic: bool = True
    factors: int = 16
    known_min_ratings: int = 10
    warm_start: str = "none"
    heavy_users: bool = False
    teacher: str = ""
    students: tuple[str, ...] = ()
    distill_alpha: float = 0.5
    student_steps: int | None = None
    loss: str = "mse"
    keep_heavy: bool = False
    freeze_items: bool = False
    without: tuple[str, ...] = ()
    implicit_prior: bool = False
    implicit_vectors: bool = False

    def __post_init__(self):
        if isinstance(self.without, str) or any(p not in hybrid.PARTS for p in self.without):
            raise ValueError(f"without={self.without!r}: pass a list drawn from {hybrid.PARTS}.")
        object.__setattr__(self, "without", tuple(self.without))
        if self.without and self.model != "hybrid":
            raise ValueError(f"without={self.without!r} with model={self.model!r}: only hybrid MeLU's terms can be "
                             "left out; pass model='hybrid', or no without.")
        if self.freeze_items and (self.model != "hybrid" or self.warm_start == "none"):
            raise ValueError(f"freeze_items=True with model={self.model!r}, warm_start={self.warm_start!r}: only "
                             "hybrid MeLU's item rows started from ALS can be held; pass model='hybrid' and "
                             "warm_start='all' or 'others', or freeze_items=False.")
        if self.freeze_items and "ids" in self.without:
            raise ValueError(f"freeze_items=True with without={self.without!r}: the model reads no item rows to "
                             "hold; drop one of them.")
        if self.heavy_users and self.dataset == "ml-100k" and not self.keep_heavy:
            raise ValueError("heavy_users=True on ml-100k: RecBole's split drops its users with more than 100 "
                             "ratings, so there are none to deal into tasks; pass keep_heavy=True as well.")
        if self.keep_heavy and self.dataset != "ml-100k":
            raise ValueError(f"keep_heavy=True with dataset={self.dataset!r}: only ML-100K's split drops its heavy "
                             "users; pass keep_heavy=False.")
        if self.model not in MODELS:
            raise ValueError(f"model={self.model!r}: pass one of {MODELS}.")
        if self.warm_start not in WARM_STARTS:
            raise ValueError(f"warm_start={self.warm_start!r}: pass one of {WARM_STARTS}.")
        if self.heavy_users and self.model == "hybrid" and self.warm_start == "others":
            raise ValueError("heavy_users=True with warm_start='others': the heavy users would both fit the ALS "
                             "start and meta-train; pass warm_start='none' or 'all'.")
        if isinstance(self.algos, str) or any(a not in algorithms.META_LEARNERS for a in self.algos):
            raise ValueError(f"algos={self.algos!r}: pass a list drawn from {sorted(algorithms.META_LEARNERS)}.")
        object.__setattr__(self, "algos", tuple(self.algos))
        if self.implicit_prior and "ridge" not in self.algos:
            raise ValueError(f"implicit_prior=True with algos={tuple(self.algos)!r}: only ridge's prior reads the "
                             "items rated; add 'ridge' to algos, or implicit_prior=False.")
        if self.implicit_vectors and not (self.implicit_prior and self.model == "hybrid"):
            raise ValueError(f"implicit_vectors=True with implicit_prior={self.implicit_prior}, model={self.model!r}: "
                             "the free vectors are hybrid MeLU's, read only by ridge's implicit prior; pass "
                             "model='hybrid' and implicit_prior=True, or implicit_vectors=False.")
        hybrid.check_implicit_vectors(self.implicit_vectors, self.without)
        if isinstance(self.students, str) or any(s not in STUDENTS for s in self.students):
            raise ValueError(f"students={self.students!r}: pass a list drawn from {STUDENTS}.")
        object.__setattr__(self, "students", tuple(self.students))
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}: pass one of {LOSSES}.")
        if self.loss != "mse" and ("multitask" in self.algos or self.students):
            raise ValueError(f"loss={self.loss!r} with multitask or students: their heads and targets are "
                             "least-squares fits; pass loss='mse', or drop them.")
        if self.students and self.teacher not in self.algos:
            raise ValueError(f"students={self.students!r} with teacher={self.teacher!r}: the teacher must be one of "
                             f"the trained algos {self.algos}; pass e.g. teacher={self.algos[0]!r}.")
        if self.teacher and not self.students:
            raise ValueError(f"teacher={self.teacher!r} without students: pass students drawn from {STUDENTS}, "
                             "or no teacher.")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError(f"distill_alpha={self.distill_alpha!r}: pass the teacher's weight in the targets, a "
                             "number from 0 to 1.")
        object.__setattr__(self, "finetune_lrs", tuple(self.finetune_lrs))
        missing = set(self.algos) - set(self.rates()) - set(CLOSED_FORM)
        if missing:
            raise ValueError(f"inner_lr={self.inner_lr!r} has no rate for {sorted(missing)}: "
                             "pass one number or a rate for every algorithm.")
        if not self.finetune_lrs or any(not lr > 0 for lr in self.finetune_lrs):
            raise ValueError(f"finetune_lrs={self.finetune_lrs!r}: pass one or more positive rates.")
        for name in ("steps", "batch_size", "inner_steps", "eval_every", "num_buckets", "eval_batch_size", "factors",
                     "known_min_ratings"):
            positive_int(name, getattr(self, name))
        if self.student_steps is not None:
            if not self.students:
                raise ValueError(f"student_steps={self.student_steps!r} without students: pass students drawn from "
                                 f"{STUDENTS}, or no student_steps.")
            positive_int("student_steps", self.student_steps)

    def rates(self) -> dict[str, float]:
        """``{algo: inner rate}``."""
        if isinstance(self.inner_lr, Mapping):
            return dict(self.inner_lr)
        return {a: float(self.inner_lr) for a in self.algos}

    def outer_optimizer(self) -> optax.GradientTransformation:
        return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(self.outer_lr))

    def model_optimizer(self) -> optax.GradientTransformation:
        """The outer optimizer of the MeLU models (every method but ``mf``): hybrid MeLU's item rows held with
        ``freeze_items``."""
        if self.freeze_items:
            return algorithms.frozen(self.outer_optimizer(), lambda path: path[0] == "items")
        return self.outer_optimizer()


def _row(metrics: Mapping[str, float | None], seconds: float | None = None, users_per_s: float | None = None):
    row = {k: metrics.get(k) for k in METRICS if k not in ("train_seconds", "users_per_s")}
    row.update(train_seconds=None if seconds is None else round(seconds, 2),
               users_per_s=None if users_per_s is None else round(users_per_s, 1))
    return row


def _cuts(decode: CutPoints) -> dict[str, list]:
    """Cut points for ``results.json``: ``"-inf"`` for a level always passed, ``"inf"`` for one never passed."""
    return {"levels": [float(v) for v in decode.levels],
            "cuts": [float(c) if np.isfinite(c) else str(c) for c in decode.cuts]}


_GRID_OF = {"item_reg": "item_regs", "rank": "ranks", "reg": "regs"}  # a chosen setting -> choose_*'s grid keyword


class _Fixed(NamedTuple):
    """A fitted classic baseline posing as a learner: ``predict(state, batch)`` ignores ``state``."""

    predict: Callable[[Any, TaskBatch], Any]


def _classic_pick(pick: classic.Selected) -> dict[str, Any]:
    return {"step": None, "valid_mae": round(pick.valid_mae, 4), **pick.settings, "user_reg": pick.user_reg}


def heavy_tasks(data: Dataset, *, rng: np.random.Generator) -> RaggedTasks:
    """Tasks from the training users with more than :data:`~jaxmeta.data.splits.MAX_RATINGS` ratings.

    Each such user's ratings are dealt at random into ``ceil(n / MAX_RATINGS)``
    parts of near-equal size (at least half the limit each); every part is one
    task, its query rows drawn as for any user
    (:func:`jaxmeta.data.splits.select_queries`). A heavy user thus trains as
    several users with the same features and different ratings.
    """
    ratings = data.warm_ratings
    counts = ratings.groupby("user")["rating"].transform("size")
    heavy = ratings[counts > splits.MAX_RATINGS].sample(frac=1.0, random_state=rng.integers(2**32))
    part = heavy.groupby("user").cumcount() % np.ceil(
        heavy.groupby("user")["rating"].transform("size") / splits.MAX_RATINGS).astype(int)
    fields = {"support_x": [], "support_y": [], "query_x": [], "query_y": []}
    for _, frame in heavy.groupby(part.to_numpy(), sort=True):
        table = splits.select_queries(frame.sort_values("user", kind="stable"), rng=rng)
        built = with_item_ids(splits.build_tasks(table, data.encoder), table)
        for name, values in fields.items():
            values.extend(getattr(built, name))
    return RaggedTasks(**fields)


def _feature_width(model: Model, x: Any) -> int:
    """The width of one row of ``model.stage.embed``'s features, flattened (from shapes only)."""
    shapes = jax.eval_shape(model.stage.embed, model.param_shapes(), x)
    return sum(int(np.prod(a.shape[1:])) for a in jax.tree.leaves(shapes))


def _non_task_ratings(ratings) -> Any:
    """The ratings of the users outside the meta-training tasks (fewer than
    :data:`~jaxmeta.data.splits.MIN_RATINGS` or more than
    :data:`~jaxmeta.data.splits.MAX_RATINGS` ratings: MeLU's task filter)."""
    counts = ratings.groupby("user")["rating"].transform("size")
    return ratings[(counts < splits.MIN_RATINGS) | (counts > splits.MAX_RATINGS)]


def _model(ex: Experiment, data: Dataset, mf: classic.Selected | None, hidden: tuple[int, ...] = HIDDEN,
           embed_dim: int = 32) -> Model:
    """MeLU, or hybrid MeLU with its item rows warm-started from the ALS fit ``mf`` (when given); ``hidden``: the
    widths of the network's hidden layers; ``embed_dim``: the width of each field's embedding."""
    if ex.model == "melu":
        return melu(data.encoder.spec, output_bias=data.mean_rating, hidden=hidden, embed_dim=embed_dim)
    known = datasets.frequent_items(data, ex.known_min_ratings)
    item_init, factors, mean = None, ex.factors, data.mean_rating
    if mf is not None:
        fit = mf.model
        factors, mean = fit.item_factors.shape[1], fit.mean
        item_init = (fit.items, fit.item_factors, fit.item_bias)
    return hybrid_melu(data.encoder.spec, known, item_fields=data.encoder.table_columns("item")[1:],
                       factors=factors, global_bias=mean, item_init=item_init, hidden=hidden, embed_dim=embed_dim,
                       without=ex.without, implicit_vectors=ex.implicit_vectors)


def _named(method: str, setting: float) -> str:
    """The validation name of ``method`` at one setting of a grid: ``"finetune@0.03"``, ``"multitask@100"``."""
    return f"{method}@{setting:g}"


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
                              text_cache=ex.text_cache, text_tokens=ex.text_tokens, valid_items=ex.valid_items,
                              keep_heavy=ex.keep_heavy)
    # one shape for every evaluation batch: one compilation per method, not per scenario
    names = list(data.valid) + list(data.scenarios)
    shaped = dict(zip(names, evaluation_batches([*data.valid.values(), *data.scenarios.values()],
                                                ex.eval_batch_size)))
    valid = {v: shaped[v] for v in data.valid}
    results: dict[str, dict[str, Any]] = {s: {} for s in data.scenarios}
    per_user: dict[str, dict[str, dict[str, np.ndarray]]] = {s: {} for s in data.scenarios}
    selected: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, list]] = {}
    grids: dict[str, dict[str, list]] = {}  # the classic baselines' validation MAE at every grid point
    decoding: dict[str, dict[str, CutPoints]] = {}  # each method's MAE-optimal cut points, per validation set

    def score(method: str, pick: Callable[[str], tuple[Any, Any]], seconds=None, users_per_s=None):
        """Scores ``method`` in every scenario with ``pick(set)``, ``set`` the scenario's validation set:
        a learner (anything with ``predict(state, batch)``) and its state."""
        for s in data.scenarios:
            v = data.valid_for(s)
            learner, state = pick(v)
            predict = functools.partial(learner.predict, state)
            if v not in decoding.setdefault(method, {}):  # cut points from the checkpoint's own validation set
                decoding[method][v] = fit_predictor(predict, valid[v])
            predictions, queries = predict_tasks(predict, shaped[s])
            metrics = query_metrics(predictions, queries, ks=DEFAULT_KS, linear_ks=LINEAR_KS)
            decoded = per_user_metrics(decoding[method][v](predictions), queries, ks=())["mae"]
            metrics["mae_decoded"] = float(mean_over_users(decoded))
            results[s][method] = _row(metrics, seconds, users_per_s)
            per_user[s][method] = {**per_user_metrics(predictions, queries, ks=(3,), linear_ks=LINEAR_KS),
                                   "mae_decoded": decoded}

    fitted = {}
    if ex.classic or (ex.model == "hybrid" and ex.warm_start != "none"):
        for method, choose in (("bias", classic.choose_bias), ("mf_foldin", classic.choose_mf)):
            began = time.perf_counter()
            picks = {"users": choose(data.warm_ratings, valid["users"])}
            # other sets (held-out items, all unknown to the fit) choose the user side only: the item side's
            # settings, chosen on the users, leave their predictions unchanged
            item_side = {_GRID_OF[k]: (int(v) if k == "rank" else v,) for k, v in picks["users"].settings.items()
                         if k != "user_reg"}
            picks.update({v: choose(data.warm_ratings, valid[v], **item_side) for v in valid if v != "users"})
            fitted[method] = picks
            if not ex.classic:
                continue
            selected[method] = {**_classic_pick(picks["users"]),
                                **{v: _classic_pick(p) for v, p in picks.items() if v != "users"}}
            grids[method] = {v: p.grid for v, p in picks.items()}
            score(method, lambda v, picks=picks: (_Fixed(lambda state, b: picks[v].predict(b)), None),
                  time.perf_counter() - began)
    train_tasks = data.train
    if ex.heavy_users:
        extra = heavy_tasks(data, rng=np.random.default_rng([ex.seed, 1]))
        train_tasks = RaggedTasks(*(list(getattr(data.train, f)) + list(getattr(extra, f))
                                    for f in ("support_x", "support_y", "query_x", "query_y")))
    warm = None
    if ex.model == "hybrid" and ex.warm_start != "none":
        warm = fitted["mf_foldin"]["users"]
        if ex.warm_start == "others":  # the same rank and ALS ridge, the fold-in's ridge chosen again
            ratings = _non_task_ratings(data.warm_ratings)
            if ratings.empty:
                raise ValueError(f"warm_start='others': {ex.dataset} has no training ratings outside the "
                                 "meta-training tasks (no user outside MeLU's 13-100 filter); pass "
                                 "warm_start='all' or 'none'.")
            warm = classic.choose_mf(ratings, valid["users"], ranks=(int(warm.settings["rank"]),),
                                     regs=(warm.settings["reg"],))
    model = _model(ex, data, warm)

    def train(learner: MetaLearner, desc: str, methods: dict[str, Callable], steps: int = ex.steps,
              ) -> tuple[Validate, float, float]:
        """``fit`` for ``steps`` with validation of ``methods``: the hook (best states, curves), train seconds,
        users/s."""
        validate = Validate(valid, methods, every=ex.eval_every, keep=True)
        log = LogMetrics(every=steps)
        stream = BatchStream(train_tasks, batch_size=ex.batch_size, num_buckets=ex.num_buckets, seed=ex.seed,
                             resplit=ex.resplit)
        began = time.perf_counter()
        fit(learner, stream, steps=steps, seed=ex.seed, hooks=[StopOnNaN(ex.eval_every, desc=desc), log, validate],
            desc=desc, progress=progress)
        seconds = time.perf_counter() - began - validate.seconds
        for name, per_set in validate.curves.items():
            curves[name] = per_set
        return validate, seconds, log.total_users / seconds

    def keep(method: str, validate: Validate, name: Callable[[str], str],
             extra: Callable[[str], Mapping[str, Any]] = lambda v: {}):
        """Records the checkpoint of ``name(set)`` chosen on each validation set: the users' at the top,
        others nested."""
        picks = {}
        for v in valid:
            chosen = validate.chosen(v, name(v))
            picks[v] = {"step": chosen.step, "valid_mae": round(chosen.valid_mae, 4), **extra(v)}
        selected[method] = {**picks.pop("users"), **picks}

    def tuned(method: str, validate: Validate, seconds: float, rate: float, tuners: Mapping[float, Any],
              setting: str = "finetune_lr"):
        """``method`` at the setting of ``tuners`` (``{value: learner}``, validated as ``_named(method, value)``), and
        from the checkpoint, with the lowest validation MAE on each set: fine-tuning's rate, multitask's ridge."""
        best = {v: min(tuners, key=lambda r: validate.chosen(v, _named(method, r)).valid_mae) for v in valid}
        keep(method, validate, lambda v: _named(method, best[v]), lambda v: {setting: best[v]})
        score(method, lambda v: (tuners[best[v]], validate.chosen(v, _named(method, best[v])).state), seconds, rate)

    rates = ex.rates()

    def make(algo: str, on: Model) -> tuple[MetaLearner, dict[str, Any]]:
        """``algo``'s learner of the model ``on``, and its inner options."""
        # no inner loop of gradient steps in CLOSED_FORM: no inner rate or steps
        inner = {} if algo in CLOSED_FORM else {"inner_optimizer": rates[algo], "inner_steps": ex.inner_steps}
        if algo == "ridge" and warm is not None:  # the fold-in's chosen precision, the item rows from its factors
            inner["init_reg"] = warm.user_reg
        if algo == "ridge" and ex.implicit_prior:
            inner["implicit"] = True
        if algo in ("conditioned", "amortised") and ex.model == "hybrid":  # its encoder reads the hybrid's rows
            inner["feature_dim"] = _feature_width(on, data.train.support_x[0])
        learner = algorithms.META_LEARNERS[algo](on, outer_optimizer=ex.model_optimizer(), loss=ex.loss, **inner)
        return learner, inner

    teacher = None
    for algo in ex.algos:
        learner, inner = make(algo, model)
        if algo == "multitask":  # a new user's ridge chosen with the checkpoint, as fine-tuning's rate is
            fitters = {r: algorithms.multitask(model, adapt_reg=r) for r in MULTITASK_REGS}
            validate, seconds, rate = train(learner, algo, {_named(algo, r): _predictor(f) for r, f in fitters.items()})
            tuned(algo, validate, seconds, rate, fitters, setting="adapt_reg")
            if algo == ex.teacher:
                reg = selected[algo]["adapt_reg"]
                teacher = (fitters[reg], validate.chosen("users", _named(algo, reg)).state)
            continue
        validate, seconds, rate = train(learner, algo, {algo: _predictor(learner)})
        keep(algo, validate, lambda v: algo, lambda v: {"inner_lr": inner.get("inner_optimizer")})
        score(algo, lambda v: (learner, validate.chosen(v, algo).state), seconds, rate)
        if algo == ex.teacher:  # its checkpoint chosen on the validation users teaches the students
            teacher = (learner, validate.chosen("users", algo).state)
    for name in ex.students:
        if name == "amortised":
            student, _ = make("amortised", model)
        elif name == "amortised-small":
            small = _model(ex, data, warm, hidden=SMALL_HIDDEN, embed_dim=SMALL_EMBED)
            options = {"feature_dim": _feature_width(small, data.train.support_x[0])} if ex.model == "hybrid" else {}
            student = algorithms.amortised(small, outer_optimizer=ex.model_optimizer(), **SMALL_ENCODER, **options)
        else:
            student, _ = make(ex.teacher, _model(ex, data, warm, hidden=tuple(h // 2 for h in HIDDEN)))
        learner = algorithms.distill(student, *teacher, alpha=ex.distill_alpha, warm_start=True)
        validate, seconds, rate = train(learner, f"{name} (from {ex.teacher})", {name: _predictor(learner)},
                                        ex.steps if ex.student_steps is None else ex.student_steps)
        keep(name, validate, lambda v: name, lambda v: {"teacher": ex.teacher, "alpha": ex.distill_alpha})
        score(name, lambda v: (learner, validate.chosen(v, name).state), seconds, rate)

    def finetuners(glob_model: Model) -> dict[float, MetaLearner]:
        return {lr: algorithms.finetune(glob_model, inner_optimizer=lr, inner_steps=ex.inner_steps)
                for lr in ex.finetune_lrs}

    if ex.baselines:
        glob = algorithms.no_adaptation(model, outer_optimizer=ex.model_optimizer())
        tuners = finetuners(model)
        methods = {"no_adaptation": _predictor(glob),
                   **{_named("finetune", lr): _predictor(t) for lr, t in tuners.items()}}
        validate, seconds, rate = train(glob, "global model", methods)
        keep("no_adaptation", validate, lambda v: "no_adaptation")
        score("no_adaptation", lambda v: (glob, validate.chosen(v, "no_adaptation").state), seconds, rate)
        tuned("finetune", validate, seconds, rate, tuners)
    if ex.mf:
        mf_model = biased_mf_by_id(data.warm_ratings["item"].to_numpy(), global_bias=data.mean_rating)
        glob = algorithms.no_adaptation(mf_model, outer_optimizer=ex.outer_optimizer())
        tuners = finetuners(mf_model)
        validate, seconds, rate = train(glob, "mf", {_named("mf", lr): _predictor(t) for lr, t in tuners.items()})
        tuned("mf", validate, seconds, rate, tuners)
    if ex.baselines:
        stats = fit_item_stats(data.warm_ratings)
        for s in data.scenarios:
            _, queries = predict_tasks(lambda b: np.zeros(b.query_y.shape), shaped[s])
            for method, m in baseline_metrics(stats, queries, ks=DEFAULT_KS, linear_ks=LINEAR_KS).items():
                results[s][method] = _row(m)

    out = {"dataset": ex.dataset, "split": data.split, "text": None if ex.text is None else str(ex.text),
           "text_tokens": None if ex.text is None else ex.text_tokens,
           "model": ex.model, "loss": ex.loss, "warm_start": ex.warm_start, "freeze_items": ex.freeze_items,
           "without": list(ex.without), "implicit_prior": ex.implicit_prior, "implicit_vectors": ex.implicit_vectors,
           "train_tasks": len(train_tasks), "results": results, "selected": selected,
           "paired": paired(per_user, ex.algos + ex.students, PAIRED_BASELINES),
           "chosen": chosen(per_user, selected, ex.algos + ex.students, {s: data.valid_for(s) for s in data.scenarios},
                            PAIRED_BASELINES),
           "reference": REFERENCE.get(ex.dataset, {}), "curves": curves, "grids": grids,
           "decoding": {m: {v: _cuts(c) for v, c in per_set.items()} for m, per_set in decoding.items()}}
    if ex.students:
        out["distilled"] = {"teacher": ex.teacher, "alpha": ex.distill_alpha,
                            "paired": paired(per_user, ex.students, (ex.teacher, "finetune"))}
    if out_dir is not None:
        _write(out, Path(out_dir), data, command, time.perf_counter() - start)
    return out


def reproduce_seeds(experiment: Experiment, seeds: Sequence[int], out_dir: str | os.PathLike, *,
                    progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """:func:`reproduce` once per seed (on ML-100K the seed draws the user split too), then a summary.

    Each seed's tables go to ``out_dir/seed-N``; ``summary.json`` and
    ``summary.md`` (:func:`jaxmeta.report.summarise`) to ``out_dir``: every
    method's mean ± sd over the seeds, and the meta-learner chosen on validation
    against every baseline, paired per user and pooled over the seeds.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds!r}: pass one or more distinct seeds.")
    command = command or f"python -c 'from jaxmeta.reproduce import *; reproduce_seeds({experiment!r}, {seeds!r}, " \
                         f"{str(out_dir)!r})'"
    start, out = time.perf_counter(), Path(out_dir)
    runs = {seed: reproduce(dataclasses.replace(experiment, seed=seed), out / f"seed-{seed}", progress=progress,
                            command=f"{command}  # seed {seed}") for seed in seeds}
    summary = summarise(runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(format_summary(summary, command=command, seconds=time.perf_counter() - start)
                                    + "\n")
    return summary


def _write(out: dict[str, Any], path: Path, data: Dataset, command: str, seconds: float) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    items = data.valid.get("new_items")
    (path / "results.md").write_text(format_markdown(
        out, command=command, seconds=seconds, users={s: len(t) for s, t in data.scenarios.items()},
        train_users=len(data.train), valid_users=len(data.valid["users"]),
        item_users=None if items is None else len(items), heavy_tasks=out["train_tasks"] - len(data.train)))
    _write_validation_plots(out, path)


VALIDATION_SETS = {"users": "the validation users", "new_items": "the held-out items"}
"""The validation sets, named in the titles of ``validation-{set}.png``."""


def _write_validation_plots(out: Mapping[str, Any], path: Path) -> None:
    """``validation-users.png`` (and ``validation-new_items.png``): every trained method's validation MAE against
    steps, the classic baselines as levels (:func:`jaxmeta.plots.validation_curves`); nothing without matplotlib."""
    try:
        from jaxmeta.plots import DPI, validation_curves

        for name, title in VALIDATION_SETS.items():
            if any(per_set.get(name) for per_set in out["curves"].values()):
                figure = validation_curves({f"validation MAE on {title}": {"": out}}, set_name=name)
                figure.savefig(path / f"validation-{name}.png", dpi=DPI)
    except ImportError:  # matplotlib is an extra (pip install 'jaxmeta[plot]')
        return
    except Exception as error:  # noqa: BLE001 - a figure never fails a finished run (its tables are written)
        warnings.warn(f"{path}: the validation figure was not drawn ({type(error).__name__}: {error}); the tables "
                      "are written. Draw it with jaxmeta plot --results.", stacklevel=2)


if __name__ == "__main__":  # python -m jaxmeta.reproduce: the same as jaxmeta reproduce
    import sys

    from jaxmeta.cli import main

    sys.exit(main(["reproduce", *sys.argv[1:]]))
