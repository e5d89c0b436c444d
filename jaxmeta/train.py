"""The one training loop: :func:`fit`, its resumable data stream and its hooks.

:func:`fit` runs outer steps of any :class:`~jaxmeta.algorithms.MetaLearner` on
the batches of a :class:`BatchStream`; everything else a run does between steps
is a hook, called after every step with a :class:`Tick`:

* :class:`StopOnNaN`: stops with a ``FloatingPointError`` when the loss is not finite;
* :class:`LogMetrics`: training records (loss, real users per second), in
  memory and in ``metrics.jsonl`` (:class:`MetricsLog`);
* :class:`Validate`: scores methods (the learner, or predictors made from its
  state) on named validation sets, keeps each one's best state, logs;
* :class:`SaveCheckpoints`: orbax checkpoints (:mod:`jaxmeta.checkpoint`) with
  the stream's position, ranked by a validation score.

Ctrl-C finishes the current step, lets the hooks see it (a checkpoint is saved)
and raises :class:`TrainingInterrupted`. ``jaxmeta train``
(:func:`jaxmeta.runs.run`), ``jaxmeta reproduce`` and the examples are this loop
with different hooks.

Example:
  >>> from jaxmeta import algorithms
  >>> from jaxmeta.data import datasets
  >>> from jaxmeta.models import embedding_mlp
  >>> data = datasets.synthetic(num_train_users=40, num_new_users=4)
  >>> learner = algorithms.maml(embedding_mlp(data.vocab_sizes), inner_steps=2)
  >>> log = LogMetrics(every=5)
  >>> state = fit(learner, BatchStream(data.train, batch_size=8, seed=0), steps=10, hooks=[StopOnNaN(), log],
  ...             progress=False)
  >>> int(state.step), [record["step"] for record in log.history]
  (10, [5, 10])
"""

from __future__ import annotations

import copy
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxmeta._checks import positive_int
from jaxmeta.algorithms import MetaLearner, MetaState
from jaxmeta.checkpoint import Checkpoints
from jaxmeta.evaluation import predict_tasks, query_metrics
from jaxmeta.tasks import RaggedTasks, TaskBatch, bucket_by_support, epoch_plan, pad_tasks, resplit

__all__ = (
    "BatchStream",
    "Hook",
    "LogMetrics",
    "MetricsLog",
    "SaveCheckpoints",
    "Selected",
    "StopOnNaN",
    "Tick",
    "TrainingInterrupted",
    "Validate",
    "fit",
    "validation_scores",
)


# ----------------------------------------------------------------------------- the data stream


class BatchStream:
    """Endless shuffled, bucketed, fixed-shape batches of training users, resumable.

    Every epoch is :func:`jaxmeta.tasks.epoch_plan` over the users' support
    sizes (``num_buckets`` support-size buckets: one compiled shape each), all
    drawn from one numpy generator seeded with ``seed``; with ``resplit`` each
    epoch first deals every user's rows afresh between support and query
    (:func:`jaxmeta.tasks.resplit`). :meth:`position` is a JSON-ready record of
    where the stream is (the generator's state at the start of the current
    epoch and the batches taken since); :meth:`restore` puts a new stream over
    the same users there, so a resumed run sees the same batches as an
    uninterrupted one.

    ``rows``: the task slots of each batch to give (default: all of them). In a
    job of several processes every process plans the same batches and pads only
    its own slots (:func:`jaxmeta.distributed.process_rows`).
    """

    def __init__(self, tasks: RaggedTasks, *, batch_size: int, num_buckets: int = 4, seed: int = 0,
                 resplit: bool = False, rows: slice | None = None):
        positive_int("batch_size", batch_size)
        positive_int("num_buckets", num_buckets)
        if len(tasks) == 0:
            raise ValueError("no users to train on: pass a non-empty RaggedTasks.")
        self._tasks, self._batch_size, self._resplit = tasks, batch_size, resplit
        self._rows = slice(0, batch_size) if rows is None else rows
        self._seed = seed
        self._buckets = bucket_by_support(tasks.support_sizes, num_buckets)
        self._query_size = int(tasks.query_sizes.max())
        self._reset()

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def _reset(self) -> None:
        self._rng = np.random.default_rng(self._seed)
        self._epoch, self._index, self._plan, self._start_state = -1, 0, [], None
        self._epoch_tasks = self._tasks

    def _next_epoch(self) -> None:
        self._start_state = copy.deepcopy(self._rng.bit_generator.state)
        self._epoch += 1
        self._epoch_tasks = resplit(self._tasks, self._rng) if self._resplit else self._tasks
        self._plan = epoch_plan(self._tasks.support_sizes, self._batch_size, rng=self._rng, buckets=self._buckets)
        self._index = 0

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> TaskBatch:
        if self._index >= len(self._plan):
            self._next_epoch()
        idx, size = self._plan[self._index]
        self._index += 1
        mine = idx[self._rows]
        batch = pad_tasks(self._epoch_tasks.take(mine if len(mine) else idx[:1]), support_size=size,
                          query_size=self._query_size, num_tasks=self._rows.stop - self._rows.start)
        return batch if len(mine) else jax.tree.map(np.zeros_like, batch)  # only padding users here

    def position(self) -> dict[str, Any]:
        """``{"epoch", "index", "rng"}``: the epoch (0-based; -1 before the first
        batch), batches taken in it, the generator state at its start."""
        return {"epoch": self._epoch, "index": self._index, "rng": copy.deepcopy(self._start_state)}

    def restore(self, position: Mapping[str, Any]) -> None:
        """Moves the stream to ``position`` (from :meth:`position` of a stream
        over the same users with the same settings)."""
        missing = {"epoch", "index", "rng"} - set(position)
        if missing:
            raise ValueError(f"position lacks {sorted(missing)}: pass a dict from BatchStream.position().")
        self._reset()
        if position["rng"] is None:
            return
        self._rng.bit_generator.state = copy.deepcopy(dict(position["rng"]))
        self._epoch = int(position["epoch"]) - 1
        self._next_epoch()
        if not 0 <= int(position["index"]) <= len(self._plan):
            raise ValueError(f"position index {position['index']} is outside an epoch of {len(self._plan)} "
                             "batches: the position belongs to other users or another batch size.")
        self._index = int(position["index"])


# ----------------------------------------------------------------------------- the loop


class Tick(NamedTuple):
    """What a hook sees after a step."""

    step: int  # the outer steps taken
    state: MetaState  # the state after them
    metrics: Mapping[str, jax.Array]  # the step's metrics (on device: read them only when due)
    final: bool  # the run's last step
    interrupted: bool  # Ctrl-C was pressed during this step: the run stops after the hooks
    bar: Any = None  # the progress bar (tqdm), or None


class Hook(Protocol):
    """Called after every step; does its work when due (``tick.step % every == 0`` or ``tick.final``)."""

    def __call__(self, tick: Tick) -> None: ...


def _due(tick: Tick, every: int) -> bool:
    return tick.step % every == 0 or tick.final


class TrainingInterrupted(Exception):
    """Ctrl-C stopped training between steps; ``step`` was saved when checkpoints were on."""

    def __init__(self, step: int, saved: bool):
        self.step, self.saved = step, saved
        super().__init__(f"interrupted after step {step}" + ("; checkpoint saved" if saved else ""))


class _Interrupt:
    """Turns Ctrl-C (SIGINT) into a flag the training loop checks between steps."""

    def __init__(self):
        self.hit = False
        self._old = None

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.hit:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def fit(
    learner: MetaLearner,
    stream: BatchStream,
    *,
    steps: int,
    seed: int = 0,
    state: MetaState | None = None,
    hooks: Sequence[Hook] = (),
    place: Callable[[TaskBatch], TaskBatch] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> MetaState:
    """Runs ``learner.step`` on ``stream``'s batches up to outer step ``steps``; returns the state.

    Args:
      learner: the algorithm.
      stream: the training batches (a :class:`BatchStream`, or any iterator of
        fixed-shape :class:`~jaxmeta.tasks.TaskBatch`).
      steps: the outer step to stop after.
      seed: the initialisation's key, ``jax.random.key(seed)``, when ``state`` is None.
      state: the state to continue from (e.g. restored from a checkpoint, with
        ``stream`` restored to its position): the run goes on from ``state.step``.
      hooks: called in order after every step with a :class:`Tick` (logging,
        validation, checkpoints, the NaN stop).
      place: puts a batch on the devices (e.g. :func:`jaxmeta.distributed.shard_batch`);
        default: as it is.
      desc: the progress bar's label.
      progress: show a progress bar.

    Raises:
      TrainingInterrupted: Ctrl-C; the current step is finished and the hooks
        have seen it (with ``tick.interrupted``) first.
    """
    positive_int("steps", steps, "outer steps")
    state = learner.init(jax.random.key(seed)) if state is None else state
    first = int(state.step) + 1
    place = (lambda batch: batch) if place is None else place
    bar = tqdm(range(first, steps + 1), desc=desc, disable=not progress, unit="step", leave=False,
               initial=first - 1, total=steps)
    with _Interrupt() as interrupt:
        for step in bar:
            state, metrics = learner.step(state, place(next(stream)))
            tick = Tick(step, state, metrics, step == steps, interrupt.hit, bar if progress else None)
            for hook in hooks:
                hook(tick)
            if interrupt.hit:
                raise TrainingInterrupted(step, any(getattr(h, "saved_step", None) == step for h in hooks))
    return state


# ----------------------------------------------------------------------------- hooks


class StopOnNaN:
    """Raises ``FloatingPointError`` when the step's loss is not finite.

    Checked every ``every`` steps, at every multiple of ``also`` (the steps a
    run saves or validates: a diverged state is named here, before a save
    refuses it), at the last and on Ctrl-C (reading the loss waits for the step,
    so not at every step). The message names the step and the last checkpoint
    of ``checkpoints`` (nothing corrupt is ever saved).
    """

    def __init__(self, every: int = 50, *, checkpoints: Checkpoints | None = None, desc: str = "train",
                 hint: str = "Try a lower --inner-lr or --outer-lr.", also: Sequence[int | None] = ()):
        self.every, self.checkpoints, self.desc, self.hint = every, checkpoints, desc, hint
        self.also = tuple(n for n in also if n)

    def __call__(self, tick: Tick) -> None:
        if not (_due(tick, self.every) or tick.interrupted or any(tick.step % n == 0 for n in self.also)):
            return
        loss = float(tick.metrics["loss"])
        if np.isfinite(loss):
            return
        last = None if self.checkpoints is None else self.checkpoints.latest_step()
        good = ("no checkpoint yet" if last is None
                else f"last good checkpoint: step {last} in {self.checkpoints.directory}")
        raise FloatingPointError(f"{self.desc}: the loss is {loss} at step {tick.step}; stopped ({good}). "
                                 + self.hint)


class MetricsLog:
    """Appends one JSON record per line to ``path`` (``metrics.jsonl``), flushed at once.

    Every record has ``"kind"`` (``"train"`` or ``"valid"``), ``"step"`` and
    ``"wall_time"`` (seconds since the log was opened, plus ``offset``: a resumed
    run continues the clock of the records before it).
    """

    def __init__(self, path: str | os.PathLike, *, offset: float = 0.0):
        self.path = Path(path)
        self._start, self._offset = time.perf_counter(), offset

    def write(self, kind: str, step: int, **values: float | None) -> dict[str, Any]:
        record = {"kind": kind, "step": int(step),
                  "wall_time": round(self._offset + time.perf_counter() - self._start, 3),
                  **{k: None if v is None else float(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return record

    def trim(self, step: int) -> int:
        """Drops the records past ``step`` (and a half-written last line): a run resumed from the
        checkpoint of ``step`` writes them again. Returns how many records were dropped."""
        if not self.path.exists():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
                keep = int(record["step"]) <= step
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            temporary = self.path.with_name(self.path.name + ".tmp")
            temporary.write_text("".join(line + "\n" for line in kept))
            os.replace(temporary, self.path)  # atomic: a kill now leaves the old log or the new one
            self._start, self._offset = time.perf_counter(), self.last_wall_time(self.path)
        return dropped

    @staticmethod
    def last_wall_time(path: str | os.PathLike) -> float:
        """The largest ``wall_time`` in an existing log (0 when none): where a resumed run's clock starts."""
        times = [0.0]
        if Path(path).exists():
            for line in Path(path).read_text().splitlines():
                try:
                    times.append(float(json.loads(line)["wall_time"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a half-written last line after a crash
        return max(times)


class LogMetrics:
    """Every ``every`` steps (and at the last): the step's metrics and the real users per second
    since the last record (the first includes compilation), in :attr:`history` and ``log``.

    The users of every step are summed on the device (no wait per step).
    """

    def __init__(self, every: int = 50, *, log: MetricsLog | None = None):
        self.every, self.log = every, log
        self.history: list[dict[str, float]] = []
        self.total_users = 0.0  # real users of the steps recorded so far
        self._users: list[Any] = []  # each step's user count, on device until the next record
        self._since = time.perf_counter()

    def __call__(self, tick: Tick) -> None:
        self._users.append(tick.metrics["tasks"])
        if not _due(tick, self.every):
            return
        now = time.perf_counter()
        record = {k: float(v) for k, v in tick.metrics.items()}
        users = float(sum(np.asarray(n) for n in self._users))  # read once per record: no compiled sum
        record.update(step=tick.step, users_per_s=users / (now - self._since))
        self.total_users += users
        self._users, self._since = [], now
        self.history.append(record)
        if tick.bar is not None:
            tick.bar.set_postfix(loss=f"{record['loss']:.4f}", users_s=f"{record['users_per_s']:.0f}")
        if self.log is not None:
            self.log.write("train", tick.step, loss=record["loss"], users_per_s=record["users_per_s"])


class Selected(NamedTuple):
    """The state of one method that scored best on one validation set."""

    state: MetaState
    step: int  # outer steps it had taken
    valid_mae: float  # its query MAE on the validation set


def validation_scores(predictions: np.ndarray, queries: TaskBatch) -> dict[str, float | None]:
    """``{"loss", "mae", "rmse"}`` of query predictions: ``loss`` the per-user mean squared error
    averaged over users (what :meth:`MetaLearner.evaluate` reports as ``query_loss_after`` for
    the ``"mse"`` loss), ``mae`` and ``rmse`` of :func:`jaxmeta.evaluation.query_metrics`.
    All three are None when a real prediction is not finite."""
    mask = np.asarray(queries.query_mask)
    if not np.isfinite(np.asarray(predictions)[mask]).all():
        return {"loss": None, "mae": None, "rmse": None}
    real = mask.any(axis=1)
    errors = np.where(mask, (np.asarray(predictions, np.float64) - np.asarray(queries.query_y, np.float64)) ** 2, 0)
    loss = float((errors.sum(axis=1)[real] / mask.sum(axis=1)[real]).mean())
    scores = query_metrics(predictions, queries, ks=())
    return {"loss": loss, "mae": float(scores["mae"]), "rmse": float(scores["rmse"])}


class Validate:
    """Scores ``methods`` on every validation set every ``every`` steps (and at the last).

    Args:
      sets: ``{name: batches}``: each validation set's fixed-shape batches.
      methods: ``{name: make}`` where ``make(state)`` gives ``predict(batch) ->
        [tasks, query]`` predictions (a learner's: ``lambda s: lambda b:
        learner.predict(s, b)``); or a :class:`MetaLearner`, scored as ``"model"``.
        Each user is adapted once per check.
      every: steps between checks.
      log: where ``"valid"`` records go (the first method on the set
        ``"users"``, or on the first set; other sets as ``"valid_<set>"``).
      keep: keep each method's best state on each set (by MAE) in :attr:`best`.
      gather: maps the state before scoring (e.g. :func:`jaxmeta.distributed.to_host`).

    Attributes:
      best: ``{set: {method: Selected}}`` (with ``keep``).
      curves: ``{method: {set: [[step, mae], ...]}}`` (MAE None where a
        prediction was not finite: that check is skipped for selection).
      latest: ``{set: {method: scores}}`` of the latest check and :attr:`latest_step` its step.
    """

    def __init__(self, sets: Mapping[str, Sequence[TaskBatch]], methods: Mapping[str, Callable] | MetaLearner,
                 *, every: int = 100, log: MetricsLog | None = None, keep: bool = False,
                 gather: Callable[[MetaState], MetaState] | None = None):
        if isinstance(methods, MetaLearner):
            learner = methods
            methods = {"model": lambda state: (lambda batch: learner.predict(state, batch))}
        if not sets or not methods:
            raise ValueError("Validate needs at least one validation set and one method.")
        self.sets, self.methods, self.every, self.log, self.keep = dict(sets), dict(methods), every, log, keep
        self.gather = (lambda state: state) if gather is None else gather
        self.best: dict[str, dict[str, Selected]] = {v: {} for v in self.sets}
        self.curves: dict[str, dict[str, list[list[float | None]]]] = {}
        self.latest: dict[str, dict[str, dict[str, float | None]]] = {}
        self.latest_step: int | None = None
        self.seconds = 0.0  # wall time spent validating

    def __call__(self, tick: Tick) -> None:
        if not _due(tick, self.every):  # a due check runs on Ctrl-C too: its checkpoint is then scored
            return
        start = time.perf_counter()
        state = self.gather(tick.state)
        self.latest = {v: {} for v in self.sets}
        for name, make in self.methods.items():
            predict = make(state)
            for v, batches in self.sets.items():
                scores = validation_scores(*predict_tasks(predict, batches))
                self.latest[v][name] = scores
                mae = scores["mae"]
                self.curves.setdefault(name, {}).setdefault(v, []).append(
                    [tick.step, None if mae is None else round(mae, 4)])
                if self.keep and mae is not None and (name not in self.best[v] or mae < self.best[v][name].valid_mae):
                    self.best[v][name] = Selected(state, tick.step, mae)
        self.latest_step = tick.step
        if self.log is not None:
            first = next(iter(self.methods))
            for v in self.sets:
                kind = "valid" if v == ("users" if "users" in self.sets else next(iter(self.sets))) else f"valid_{v}"
                self.log.write(kind, tick.step, **self.latest[v][first])
        self.seconds += time.perf_counter() - start

    def score(self, step: int, method: str | None = None, valid_set: str | None = None) -> float | None:
        """The MAE of ``method`` (default the first) on ``valid_set`` (default ``"users"`` or the first)
        checked at ``step``, or None when no check ran then or the predictions were not finite."""
        if self.latest_step != step:
            return None
        method = next(iter(self.methods)) if method is None else method
        valid_set = ("users" if "users" in self.sets else next(iter(self.sets))) if valid_set is None else valid_set
        return self.latest[valid_set][method]["mae"]

    def chosen(self, valid_set: str, method: str) -> Selected:
        """The kept best state of ``method`` on ``valid_set``.

        Raises:
          FloatingPointError: every check of that method gave non-finite predictions.
        """
        if method not in self.best[valid_set]:
            raise FloatingPointError(f"{method} never gave finite predictions on the validation set "
                                     f"{valid_set!r}; lower the rates.")
        return self.best[valid_set][method]


class SaveCheckpoints:
    """Saves the state every ``every`` steps, at the last, on Ctrl-C and whenever ``validation`` scored.

    Each checkpoint holds the state, ``stream``'s position, ``seed`` and
    ``extra`` (JSON-ready: the config, the vocabularies) and, when
    ``validation`` checked that step, ``{"valid_mae": ...}``, which ranks the
    best checkpoint.
    """

    def __init__(self, checkpoints: Checkpoints, stream: BatchStream, *, every: int = 500, seed: int = 0,
                 extra: Mapping[str, Any] | None = None, validation: Validate | None = None):
        self.checkpoints, self.stream, self.every, self.seed = checkpoints, stream, every, seed
        self.extra, self.validation = dict(extra or {}), validation
        self.saved_step: int | None = None

    def __call__(self, tick: Tick) -> None:
        score = None if self.validation is None else self.validation.score(tick.step)
        if not (_due(tick, self.every) or tick.interrupted or score is not None):
            return
        if self.saved_step == tick.step:
            return
        self.checkpoints.save(tick.step, tick.state,
                              extra={"position": self.stream.position(), "seed": self.seed, **self.extra},
                              metrics=None if score is None else {"valid_mae": score})
        self.saved_step = tick.step
