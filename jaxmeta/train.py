"""The thin training loop: configs, the resumable data stream, and :func:`fit`.

:class:`TrainConfig` holds a job's settings (the flags of ``jaxmeta train``);
:class:`BatchStream` gives the shuffled, bucketed, fixed-shape training batches
and can be saved and restored mid-epoch; :func:`fit` runs the outer steps with
validation, ``metrics.jsonl`` records and orbax checkpoints
(:mod:`jaxmeta.checkpoint`), stops on a NaN loss and saves on Ctrl-C. The job
around it (data sources, run folders, evaluation) is :mod:`jaxmeta.runs`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxmeta import algorithms
from jaxmeta.algorithms import MetaLearner, MetaState
from jaxmeta.algorithms.maml import DEFAULT_INNER_STEPS
from jaxmeta.checkpoint import Checkpoints
from jaxmeta.data import synthetic, text_features
from jaxmeta.distributed import (global_batch, is_multiprocess, make_mesh, process_rows, shard_batch, shard_state,
                                 to_host)
from jaxmeta.evaluation import predict_tasks, query_metrics
from jaxmeta.models import Model, embedding_mlp
from jaxmeta.tasks import RaggedTasks, TaskBatch, bucket_by_support, epoch_plan, pad_tasks, resplit


DATA_SOURCES = ("synthetic", "ml-100k", "ml-1m", "table")
# The driver's models: {name: (embed_dim, hidden) when the config leaves them unset}. "mlp" reads the
# built-in data's integer ids; "melu" and "mf" (biased MF on the raw item ids) read featured data.
MODELS = {"mlp": (8, (32,)), "melu": (32, (64, 64)), "mf": (32, ())}
# A row-sharded table's rows are rounded up to a multiple of this (the rows added are never read), so that
# it splits over any power-of-two number of devices up to it: a run saved on N devices restores on M.
TABLE_ROWS = 1024
# The algorithms whose inner loop may run on the fused Pallas kernel (TrainConfig.backend).
KERNEL_ALGOS = ("maml", "fomaml", "reptile")
# Fields a resumed run may change: they do not alter the computation of the steps already taken
# (the backend computes the same function, up to rounding).
RESUMABLE_CHANGES = ("steps", "eval_every", "checkpoint_every", "keep_last", "devices", "backend")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of a training job (the flags of ``jaxmeta train``)."""

    algo: str = "maml"  # a key of jaxmeta.algorithms.META_LEARNERS
    steps: int = 1500  # outer steps, for the algorithm and for the baselines' global model
    batch_size: int = 32  # users per outer step
    inner_steps: int = DEFAULT_INNER_STEPS  # inner steps, at training and at test time
    model: str = "auto"  # one of MODELS, or "auto": "mlp" for the synthetic data, "melu" for the others
    hidden: tuple[int, ...] | None = None  # hidden widths of the MLP on the embeddings (None: the model's default)
    embed_dim: int | None = None  # embedding width per field; MF's vector width (None: the model's default)
    inner_lr: float = 0.03  # plain-SGD rate of the inner loop (Meta-SGD: initial rates)
    outer_lr: float = 3e-3  # Adam rate of the outer step
    clip_norm: float = 1.0  # global-norm clip of the meta-gradient
    num_buckets: int = 4  # support-size buckets (compiled shapes)
    chunk_size: int | None = None  # users per chunk inside the compiled step
    resplit: bool = False  # deal each user's rows afresh into support and query every epoch
    seed: int = 0  # initialisation and data order
    data_seed: int = 0  # the synthetic data
    data: str = "synthetic"  # one of DATA_SOURCES
    data_dir: str = "../shared/data"  # the folder holding ml-100k/ and ml-1m/ (MovieLens sources)
    path: str = ""  # data="table": a CSV or Parquet file with user, item, rating (and optional timestamp) columns
    scenario: str = "user_cold"  # the new users the training table reports (jaxmeta eval scores every scenario)
    eval_every: int = 100  # steps between validation checks (they rank the checkpoints)
    checkpoint_every: int = 500  # steps between checkpoints of a run with an output folder
    keep_last: int = 3  # checkpoints kept besides the best
    devices: int | None = None  # devices per process the users of a batch are split across (None: all of them)
    shard_tables: tuple[str, ...] = ()  # embedding tables split by rows over the devices ("all": every table)
    backend: str = "xla"  # the inner loop: "xla", "pallas" (the fused kernel, jaxmeta.kernels) or "auto"
    text: str = ""  # MovieLens: a sentence encoder (folder or packaged name) for an item text field ("": none)
    text_tokens: int = text_features.DEFAULT_TOKENS  # the most tokens of an item's text (the model's own limit caps it)

    def __post_init__(self):
        if self.algo not in algorithms.META_LEARNERS:
            raise ValueError(f"algo={self.algo!r}: pass one of {sorted(algorithms.META_LEARNERS)}.")
        if self.data not in DATA_SOURCES:
            raise ValueError(f"data={self.data!r}: pass one of {DATA_SOURCES}.")
        if (self.data == "table") != bool(self.path):
            raise ValueError(f"data={self.data!r}, path={self.path!r}: pass a ratings file as path with "
                             "data='table' (--data table --path FILE), and a path only then.")
        if self.model != "auto" and self.model not in MODELS:
            raise ValueError(f"model={self.model!r}: pass 'auto' or one of {tuple(MODELS)}.")
        if self.model_name() == "mlp" and self.data != "synthetic":
            raise ValueError(f"model='mlp' reads the synthetic data's integer ids, not data={self.data!r}; "
                             "pass model='melu' or 'mf' (or 'auto').")
        if self.model_name() != "mlp" and self.data == "synthetic":
            raise ValueError(f"model={self.model!r} reads featured data; the synthetic data has only integer ids: "
                             "pass model='mlp' (or 'auto'), or another data source.")
        if self.model_name() == "mf" and self.hidden:
            raise ValueError(f"hidden={self.hidden}: biased MF has no hidden layers; leave hidden unset with model='mf'.")
        for name in ("steps", "batch_size", "inner_steps", "num_buckets", "eval_every",
                     "checkpoint_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: pass a positive integer.")
        for name in ("inner_lr", "outer_lr", "clip_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)}: pass a positive number.")
        if self.devices is not None and self.devices < 1:
            raise ValueError(f"devices={self.devices}: pass a positive number of devices, or leave it unset for all.")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size={self.chunk_size}: pass a positive number of users, or leave it unset.")
        if self.embed_dim is not None and self.embed_dim < 1:
            raise ValueError(f"embed_dim={self.embed_dim}: pass a positive integer, or leave it unset.")
        if self.text and self.data not in ("ml-100k", "ml-1m"):
            raise ValueError(f"text={self.text!r}: item text comes from MovieLens titles, genres and metadata; "
                             f"pass data='ml-100k' or 'ml-1m', or leave text unset with data={self.data!r}.")
        if isinstance(self.text_tokens, bool) or not isinstance(self.text_tokens, int) or self.text_tokens < 2:
            raise ValueError(f"text_tokens={self.text_tokens!r}: pass a whole number >= 2 ([CLS] and [SEP] count).")
        if self.backend not in algorithms.BACKENDS:
            raise ValueError(f"backend={self.backend!r}: pass one of {algorithms.BACKENDS}.")
        if self.backend != "xla" and self.algo not in KERNEL_ALGOS:
            raise ValueError(f"backend={self.backend!r}: the fused kernel runs the inner loop of {KERNEL_ALGOS}, "
                             f"not algo={self.algo!r}; pass backend='xla' or one of those algorithms.")
        if isinstance(self.shard_tables, str):
            object.__setattr__(self, "shard_tables", (self.shard_tables,))
        object.__setattr__(self, "shard_tables", tuple(str(t) for t in self.shard_tables))
        if "all" in self.shard_tables and len(self.shard_tables) > 1:
            raise ValueError(f"shard_tables={self.shard_tables}: pass 'all' alone, or the names of the tables.")
        if self.hidden is not None:
            object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
            if any(h < 1 for h in self.hidden):
                raise ValueError(f"hidden={self.hidden}: pass positive layer widths.")

    def model_name(self) -> str:
        """The model the run builds: ``model``, with ``"auto"`` resolved for the data source."""
        if self.model != "auto":
            return self.model
        return "mlp" if self.data == "synthetic" else "melu"

    def model_sizes(self) -> tuple[int, tuple[int, ...]]:
        """``(embed_dim, hidden)``, the unset ones taken from the model's defaults in :data:`MODELS`."""
        embed_dim, hidden = MODELS[self.model_name()]
        return (embed_dim if self.embed_dim is None else self.embed_dim,
                hidden if self.hidden is None else self.hidden)


def outer_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.adam(config.outer_lr))


def table_rows(config: TrainConfig, name: str, rows: int) -> int:
    """The rows to give table ``name`` of ``rows`` ids: rounded up to a multiple of :data:`TABLE_ROWS`
    when ``config.shard_tables`` splits it over the devices."""
    if "all" in config.shard_tables or name in config.shard_tables:
        return -(-rows // TABLE_ROWS) * TABLE_ROWS
    return rows


def row_sharded(config: TrainConfig, tables: Mapping[str, tuple[str, ...]]) -> Callable[[tuple[str, ...]], bool]:
    """The path predicate of the tables ``config.shard_tables`` names, among the model's ``tables``
    (``{name: parameter path}``).

    Raises:
      ValueError: a name that is not one of ``tables``.
    """
    unknown = [t for t in config.shard_tables if t != "all" and t not in tables]
    if unknown:
        raise ValueError(f"shard_tables={config.shard_tables}: this model has no table {', '.join(map(repr, unknown))}; "
                         f"pass 'all' or some of {sorted(tables)}.")
    chosen = [path for name, path in tables.items() if "all" in config.shard_tables or name in config.shard_tables]
    return lambda path: any(tuple(path[: len(p)]) == p for p in chosen)


def make_model(config: TrainConfig, data: synthetic.SyntheticData) -> Model:
    """The MLP on embeddings of the built-in data's three fields (tables named as :data:`synthetic.FIELDS`)."""
    embed_dim, hidden = config.model_sizes()
    vocab = tuple(table_rows(config, name, size) for name, size in zip(synthetic.FIELDS, data.vocab_sizes))
    return embedding_mlp(vocab, embed_dim=embed_dim, hidden=hidden, output_bias=data.mean_rating)


def make_learner(config: TrainConfig, model: Model) -> MetaLearner:
    """The config's meta-learning algorithm."""
    kwargs: dict[str, Any] = dict(
        inner_steps=config.inner_steps, outer_optimizer=outer_optimizer(config), chunk_size=config.chunk_size
    )
    if config.algo == "metasgd":
        kwargs["inner_lr"] = config.inner_lr
    elif config.algo in ("maml", "fomaml", "anil", "reptile"):
        kwargs["inner_optimizer"] = config.inner_lr  # plain SGD as a number: MeLU's first layer in closed form
    else:
        kwargs["inner_optimizer"] = optax.sgd(config.inner_lr)
    if config.algo in KERNEL_ALGOS:
        kwargs["backend"] = config.backend
    return algorithms.META_LEARNERS[config.algo](model, **kwargs)


class BatchStream:
    """Endless shuffled, bucketed, fixed-shape batches of training users, resumable.

    Iterating gives :func:`jaxmeta.tasks.epoch_batches` epoch after epoch, all
    drawn from one numpy generator seeded with ``config.seed``; with
    ``config.resplit`` each epoch first deals every user's rows afresh between
    support and query (:func:`jaxmeta.tasks.resplit`). :meth:`position` is a
    JSON-ready record of where the stream is (the generator's state at the start
    of the current epoch and the batches taken since); :meth:`restore` puts a
    new stream over the same users there, so a resumed run sees the same
    batches as an uninterrupted one.

    ``rows``: the task slots of each batch to give (default: all of them). In a
    job of several processes every process plans the same batches and pads only
    its own slots (:func:`jaxmeta.distributed.process_rows`).
    """

    def __init__(self, tasks: RaggedTasks, config: TrainConfig, *, rows: slice | None = None):
        self._tasks, self._batch_size, self._resplit = tasks, config.batch_size, config.resplit
        self._rows = slice(0, config.batch_size) if rows is None else rows
        self._seed = config.seed
        self._buckets = bucket_by_support(tasks.support_sizes, config.num_buckets)
        self._query_size = int(tasks.query_sizes.max())
        self._reset()

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
        over the same users with the same config)."""
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


def batches(tasks: RaggedTasks, config: TrainConfig) -> BatchStream:
    """Endless shuffled, bucketed, fixed-shape batches of training users (a :class:`BatchStream`)."""
    return BatchStream(tasks, config)


class MetricsLog:
    """Appends one JSON record per line to ``path`` (``metrics.jsonl``), flushed at once.

    Every record has ``"kind"`` (``"train"`` or ``"valid"``), ``"step"`` and
    ``"wall_time"`` (seconds since the log was opened, plus ``offset``: a resumed
    run continues the clock of the records before it).
    """

    def __init__(self, path: str | os.PathLike, *, offset: float = 0.0):
        self.path = Path(path)
        self._start, self._offset = time.perf_counter(), offset

    def write(self, kind: str, step: int, **values: float) -> dict[str, Any]:
        record = {"kind": kind, "step": int(step),
                  "wall_time": round(self._offset + time.perf_counter() - self._start, 3),
                  **{k: float(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return record

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


def validation_metrics(learner: MetaLearner, state: MetaState, batches: Sequence[TaskBatch]) -> dict[str, float]:
    """Query ``loss`` (the learner's loss after adaptation, mean over users),
    ``mae`` and ``rmse`` (:func:`jaxmeta.evaluation.query_metrics`) of the validation users."""
    losses = [learner.evaluate(state, batch) for batch in batches]
    users = sum(float(out["tasks"]) for out in losses)
    loss = sum(float(out["query_loss_after"]) * float(out["tasks"]) for out in losses) / max(users, 1.0)
    predictions, queries = predict_tasks(lambda batch: learner.predict(state, batch), batches)
    scores = query_metrics(predictions, queries, ks=())
    return {"loss": loss, "mae": scores["mae"], "rmse": scores["rmse"]}


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


class TrainingInterrupted(Exception):
    """Ctrl-C stopped training between steps; ``step`` was saved when checkpoints were on."""

    def __init__(self, step: int, saved: bool):
        self.step, self.saved = step, saved
        super().__init__(f"interrupted after step {step}" + ("; checkpoint saved" if saved else ""))


def run_devices(config: TrainConfig) -> list[jax.Device]:
    """The devices a run splits its users over: ``config.devices`` of every process (all by default)."""
    local = jax.local_devices()
    count = len(local) if config.devices is None else config.devices
    if count > len(local):
        raise ValueError(f"devices={count}: this process has {len(local)} device(s); pass at most {len(local)}.")
    return [d for p in range(jax.process_count())
            for d in sorted((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)[:count]]


def _mesh(config: TrainConfig) -> Mesh | None:
    """The mesh of :func:`run_devices`; None for one device."""
    used = run_devices(config)
    if len(used) == 1:
        return None
    if config.batch_size % len(used):
        raise ValueError(f"batch_size={config.batch_size} does not split over {len(used)} devices: pass a multiple "
                         f"of {len(used)}, or fewer devices.")
    return make_mesh(used)


def fit(
    learner: MetaLearner,
    tasks: RaggedTasks,
    config: TrainConfig,
    *,
    desc: str = "train",
    progress: bool = True,
    log_every: int = 50,
    valid: Sequence[TaskBatch] | None = None,
    eval_every: int | None = None,
    checkpoints: Checkpoints | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    extra: Mapping[str, Any] | None = None,
    log: MetricsLog | None = None,
    row_sharded: Callable[[tuple[str, ...]], bool] | None = None,
) -> tuple[MetaState, list[dict[str, float]]]:
    """Runs outer steps up to ``config.steps``; returns the state and a log of metrics.

    The log holds one record every ``log_every`` steps (and at the last step):
    the step, the step's metrics and the real users per second since the last
    record (the first record includes compilation). With ``log``, each record
    (``kind="train"``) is also appended to ``metrics.jsonl``.

    Args:
      valid: validation batches, scored every ``eval_every`` steps and at the
        end (:func:`validation_metrics`, records of ``kind="valid"``); their
        ``mae`` ranks the checkpoints.
      checkpoints: where to save the state every ``checkpoint_every`` steps and
        at the end, with the data-stream position and ``extra`` (JSON-ready,
        e.g. the vocabularies and the config).
      resume: continue from the latest checkpoint (state and data position), so
        the run ends exactly where an uninterrupted one would.
      row_sharded: path predicate of the parameter tables to split by rows over
        the devices (:func:`jaxmeta.distributed.shard_state`); their rows must
        be a multiple of the number of devices.

    The users of each batch are split over ``config.devices`` devices of every
    process (all by default). In a job of several processes
    (:func:`jaxmeta.distributed.initialize`) every process calls ``fit`` with
    the same arguments and pads only its own users of each batch; the returned
    state is then gathered to numpy arrays on every process.

    Raises:
      FloatingPointError: the loss became NaN or infinite; the message names the
        step and the last good checkpoint (nothing corrupt is saved).
      TrainingInterrupted: Ctrl-C; the current step is finished and saved first.
    """
    state = learner.init(jax.random.key(config.seed))
    mesh = _mesh(config)
    if mesh is not None:
        state = shard_state(state, mesh, row_sharded=row_sharded or (lambda path: False))
    multi = is_multiprocess(mesh)
    rows = process_rows(mesh, config.batch_size) if multi else None
    stream = BatchStream(tasks, config, rows=rows)

    def placed(batch: TaskBatch) -> TaskBatch:
        if mesh is None:
            return batch
        return global_batch(batch, mesh, config.batch_size) if multi else shard_batch(batch, mesh)

    if resume and checkpoints is not None and checkpoints.latest_step() is not None:
        state, saved = checkpoints.restore(state)
        stream.restore(saved["position"])
    first = int(state.step) + 1
    last_good = None if checkpoints is None else checkpoints.latest_step()
    where = "" if checkpoints is None else f" in {checkpoints.directory}"
    history: list[dict[str, float]] = []
    every = {"log": log_every, "eval": eval_every or config.steps, "save": checkpoint_every or config.steps}

    def due(kind: str, step: int) -> bool:
        return step % every[kind] == 0 or step == config.steps

    def save(step: int, metrics: Mapping[str, float] | None = None) -> None:
        nonlocal last_good
        checkpoints.save(step, state, extra={"position": stream.position(), "seed": config.seed, **(extra or {})},
                         metrics=metrics)
        last_good = step

    bar = tqdm(range(first, config.steps + 1), desc=desc, disable=not progress, unit="step", leave=False,
               initial=first - 1, total=config.steps)
    last_time, users, step = time.perf_counter(), 0, first - 1
    with _Interrupt() as interrupt:
        for step in bar:
            batch = next(stream)
            state, metrics = learner.step(state, placed(batch))
            users = users + metrics["tasks"]  # stays on device: no sync per step
            if due("log", step) or due("eval", step) or due("save", step) or interrupt.hit:
                loss = float(metrics["loss"])
                if not np.isfinite(loss):
                    good = "no checkpoint yet" if last_good is None else f"last good checkpoint: step {last_good}{where}"
                    raise FloatingPointError(f"{desc}: the loss is {loss} at step {step}; stopped ({good}). "
                                             "Try a lower --inner-lr or --outer-lr.")
            if due("log", step):
                record = {k: float(v) for k, v in metrics.items()}
                now = time.perf_counter()
                record.update(step=step, users_per_s=float(users) / (now - last_time))
                last_time, users = now, 0
                history.append(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", users_s=f"{record['users_per_s']:.0f}")
                if log is not None:
                    log.write("train", step, loss=record["loss"], users_per_s=record["users_per_s"])
            scores = None
            if valid is not None and due("eval", step):
                scores = validation_metrics(learner, to_host(state) if multi else state, valid)
                if log is not None:
                    log.write("valid", step, **scores)
            if checkpoints is not None and (due("save", step) or scores is not None):
                save(step, None if scores is None else {"valid_mae": scores["mae"]})
            if interrupt.hit:
                if checkpoints is not None and last_good != step:
                    save(step)
                raise TrainingInterrupted(step, checkpoints is not None)
    return (to_host(state) if multi else state), history
