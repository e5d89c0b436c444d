"""A training job's settings and what they build: the data, the model, the learners, a saved run.

:class:`TrainConfig` holds the settings of ``jaxmeta train`` (its flags, or a
TOML/YAML file of the same names). From it: :func:`load_dataset` (through
:func:`jaxmeta.data.datasets.load`), :func:`make_model`, :func:`make_learner`
and :func:`baseline_learners`; :func:`restore_run` rebuilds all of them from a
run folder and restores its checkpoint, and :func:`load_teacher` restores the
run a job distils (``config.teacher``). ``jaxmeta train``/``eval``
(:mod:`jaxmeta.runs`), serving (:mod:`jaxmeta.serve`) and the CLI read runs
through this module alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
import pandas as pd
import yaml

from jaxmeta import algorithms
from jaxmeta._checks import positive_int
from jaxmeta.algorithms import MetaLearner, MetaState
from jaxmeta.algorithms.maml import DEFAULT_INNER_STEPS
from jaxmeta.checkpoint import CheckpointError, Checkpoints
from jaxmeta.data import datasets, text_features
from jaxmeta.data.datasets import Dataset
from jaxmeta.evaluation import ITEM_KEY
from jaxmeta.models import Model, biased_mf_by_id, embedding_mlp, hybrid_melu, melu

__all__ = (
    "DATA_SOURCES",
    "MODELS",
    "Restored",
    "TrainConfig",
    "baseline_learners",
    "check_setting",
    "checkpoint_step",
    "data_fingerprint",
    "load_config",
    "load_dataset",
    "load_teacher",
    "make_learner",
    "make_model",
    "restore_run",
    "save_config",
)

DATA_SOURCES = datasets.SOURCES
# The driver's models: {name: (embed_dim, hidden) when the config leaves them unset}. "mlp" reads the
# built-in data's integer ids; "melu", "mf" (biased MF on the raw item ids) and "hybrid" (hybrid MeLU:
# MeLU's features plus item-id vectors and biases, jaxmeta.models.hybrid_melu) read featured data.
MODELS = {"mlp": (8, (32,)), "melu": (32, (64, 64)), "mf": (32, ()), "hybrid": (32, (64, 64))}
ID_MODELS = ("mf", "hybrid")  # the models that read the raw item ids (ITEM_KEY)
# A row-sharded table's rows are rounded up to a multiple of this (the rows added are never read), so that
# it splits over any power-of-two number of devices up to it: a run saved on N devices restores on M.
TABLE_ROWS = 1024
# The algorithms whose inner loop may run on the fused Pallas kernel (TrainConfig.backend).
KERNEL_ALGOS = ("maml", "fomaml", "reptile")
# Fields a resumed run may change: they do not alter the computation of the steps already taken
# (the backend computes the same function, up to rounding).
# The data folder and file may move: the checkpoints' data fingerprint (data_fingerprint) says whether the
# data read from the new place are those the run was trained on.
RESUMABLE_CHANGES = ("steps", "eval_every", "checkpoint_every", "keep_last", "devices", "backend", "data_dir", "path")
CONFIG_FILE = "config.yaml"
TABLE_KINDS = ("categorical", "multi")  # the kinds of MeLU fields that have an embedding table


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
    factors: int = 16  # hybrid MeLU: the width of its user and item vectors (as jaxmeta reproduce's --factors)
    known_min_ratings: int = 10  # hybrid MeLU: fewest training ratings for an item's own id row (rarer: features)
    inner_lr: float = 0.03  # plain-SGD rate of the inner loop (Meta-SGD: initial rates)
    outer_lr: float = 3e-3  # Adam rate of the outer step
    clip_norm: float = 1.0  # global-norm clip of the meta-gradient
    num_buckets: int = 4  # support-size buckets (compiled shapes)
    chunk_size: int | None = None  # users per chunk inside the compiled step
    resplit: bool = False  # deal each user's rows afresh into support and query every epoch
    seed: int = 0  # initialisation and data order
    data_seed: int = 0  # the synthetic data; the split of the others
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
    rating_scale: tuple[float, float] | None = None  # (low, high) of the ratings; None: inferred from the data
    teacher: str = ""  # a run folder whose best checkpoint is the teacher to distil (jaxmeta.algorithms.distill)
    distill_alpha: float = 0.5  # with a teacher: its weight in the query targets, in [0, 1]
    distill_warm_start: bool = False  # with a teacher: start the model's parameters from the teacher's where they match
    implicit_prior: bool = False  # ridge: each user's prior mean moved by which items they rated (ridge(implicit=True))
    implicit_vectors: bool = False  # with implicit_prior on hybrid: that prior reads free item vectors (SVD++'s y_j)

    def __post_init__(self):
        _check_types(self)
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
                             "pass model='melu', 'mf' or 'hybrid' (or 'auto').")
        if self.model_name() != "mlp" and self.data == "synthetic":
            raise ValueError(f"model={self.model!r} reads featured data; the synthetic data has only integer ids: "
                             "pass model='mlp' (or 'auto'), or another data source.")
        if self.model_name() != "hybrid" and (self.factors, self.known_min_ratings) != (
                TrainConfig.factors, TrainConfig.known_min_ratings):
            raise ValueError(f"factors={self.factors}, known_min_ratings={self.known_min_ratings}: only hybrid "
                             f"MeLU has them, not model={self.model_name()!r}; pass model='hybrid' or leave them "
                             "unset.")
        if self.model_name() == "hybrid" and self.algo in ("conditioned", "amortised"):
            raise ValueError(f"algo={self.algo!r} with model='hybrid': its set encoder reads MeLU's dense input, "
                             "which hybrid MeLU does not declare; pass model='melu', or run jaxmeta reproduce "
                             "--model hybrid (which sizes the encoder from the data).")
        if self.model_name() == "mf" and self.hidden:
            raise ValueError(f"hidden={self.hidden}: biased MF has no hidden layers; leave hidden unset with model='mf'.")
        for name in ("steps", "batch_size", "inner_steps", "num_buckets", "eval_every",
                     "checkpoint_every", "keep_last", "factors", "known_min_ratings"):
            positive_int(name, getattr(self, name))
        for name in ("inner_lr", "outer_lr", "clip_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)}: pass a positive number.")
        if self.devices is not None and self.devices < 1:
            raise ValueError(f"devices={self.devices}: pass a positive number of devices, or leave it unset for all.")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size={self.chunk_size}: pass a positive number of users, or leave it unset.")
        if self.embed_dim is not None and self.embed_dim < 1:
            raise ValueError(f"embed_dim={self.embed_dim}: pass a positive integer, or leave it unset.")
        if self.text and self.data not in datasets.MOVIELENS:
            raise ValueError(f"text={self.text!r}: item text comes from MovieLens titles, genres and metadata; "
                             f"pass data='ml-100k' or 'ml-1m', or leave text unset with data={self.data!r}.")
        if isinstance(self.text_tokens, bool) or not isinstance(self.text_tokens, int) or self.text_tokens < 2:
            raise ValueError(f"text_tokens={self.text_tokens!r}: pass a whole number >= 2 ([CLS] and [SEP] count).")
        if self.backend not in algorithms.BACKENDS:
            raise ValueError(f"backend={self.backend!r}: pass one of {algorithms.BACKENDS}.")
        if self.backend != "xla" and self.algo not in KERNEL_ALGOS:
            raise ValueError(f"backend={self.backend!r}: the fused kernel runs the inner loop of {KERNEL_ALGOS}, "
                             f"not algo={self.algo!r}; pass backend='xla' or one of those algorithms.")
        for name in ("seed", "data_seed"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 2**63:
                raise ValueError(f"{name}={value}: pass a whole number from 0 to 2**63 - 1.")
        if isinstance(self.shard_tables, str):
            object.__setattr__(self, "shard_tables", (self.shard_tables,))
        if not isinstance(self.shard_tables, (tuple, list)):
            raise ValueError(f"shard_tables={self.shard_tables!r}: pass 'all' or a list of table names, e.g. "
                             "['actor', 'director'].")
        object.__setattr__(self, "shard_tables", tuple(str(t) for t in self.shard_tables))
        if "all" in self.shard_tables and len(self.shard_tables) > 1:
            raise ValueError(f"shard_tables={self.shard_tables}: pass 'all' alone, or the names of the tables.")
        if self.hidden is not None:
            hidden = _numbers("hidden", self.hidden, int, "positive layer widths, e.g. 64 64")
            object.__setattr__(self, "hidden", hidden)
            if any(h < 1 for h in self.hidden):
                raise ValueError(f"hidden={self.hidden}: pass positive layer widths.")
        if not 0 <= self.distill_alpha <= 1:
            raise ValueError(f"distill_alpha={self.distill_alpha}: pass a number in [0, 1], the teacher's weight in "
                             "the query targets (0: the true ratings alone, 1: the teacher's predictions alone).")
        if not self.teacher and (self.distill_alpha != TrainConfig.distill_alpha or self.distill_warm_start):
            raise ValueError(f"distill_alpha={self.distill_alpha}, distill_warm_start={self.distill_warm_start}: "
                             "they set how a teacher is distilled; pass teacher=<a run folder> (--teacher RUN) too, "
                             "or leave them unset.")
        if self.implicit_prior and self.algo != "ridge":
            raise ValueError(f"implicit_prior=True with algo={self.algo!r}: only ridge's prior reads the items rated; "
                             "pass algo='ridge', or leave implicit_prior unset.")
        if self.implicit_vectors and not (self.implicit_prior and self.model_name() == "hybrid"):
            raise ValueError(f"implicit_vectors=True with implicit_prior={self.implicit_prior}, "
                             f"model={self.model_name()!r}: the free vectors are hybrid MeLU's, read only by ridge's "
                             "implicit prior; pass model='hybrid' and implicit_prior=True, or leave implicit_vectors "
                             "unset.")
        if self.rating_scale is not None:
            scale = _numbers("rating_scale", self.rating_scale, float, "two numbers LOW HIGH, e.g. 1 5")
            if len(scale) != 2 or not all(np.isfinite(scale)) or not scale[0] < scale[1]:
                raise ValueError(f"rating_scale={self.rating_scale!r}: pass two finite numbers LOW HIGH with "
                                 "LOW < HIGH (e.g. 1 5), or leave it unset to infer the scale from the data.")
            object.__setattr__(self, "rating_scale", scale)

    def resolved_paths(self) -> TrainConfig:
        """The config with ``data_dir``, ``path`` and ``teacher`` absolute: a run folder that holds it can be
        read from anywhere."""
        def absolute(path: str) -> str:
            return str(Path(path).expanduser().absolute()) if path else path

        return dataclasses.replace(self, data_dir=absolute(self.data_dir), path=absolute(self.path),
                                   teacher=absolute(self.teacher))

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


# ----------------------------------------------------------------------------- config files


_NUMBER_TYPES = {"float": float, "int": int, "str": str, "bool": bool}


def _numbers(name: str, values: Any, kind: type, what: str) -> tuple:
    """``values`` (a sequence) as a tuple of ``kind``; a ValueError naming ``name`` when they are not numbers."""
    try:
        if isinstance(values, (str, bytes)) or any(isinstance(v, (bool, str)) for v in values):
            raise TypeError
        converted = tuple(kind(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={values!r}: pass {what}.") from None
    if kind is int and converted != tuple(values):
        raise ValueError(f"{name}={values!r}: pass {what}.")
    return converted


def check_setting(name: str, value: Any) -> None:
    """Raises ValueError when ``value`` is not of the type of the :class:`TrainConfig` field ``name``
    (``steps="twenty"``, ``hidden=["wide"]``): a settings file's values, checked one by one."""
    field = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    if name in ("hidden", "rating_scale") and value is not None:
        _numbers(name, value, int if name == "hidden" else float,
                 "positive layer widths, e.g. [64, 64]" if name == "hidden" else "two numbers [LOW, HIGH], e.g. [1, 5]")
    _check_field(field, value, lambda converted: None)


def _check_types(config: TrainConfig) -> None:
    """Raises ValueError naming a field whose value is not of the field's type (``steps="twenty"``);
    an int where a float is expected is taken as that float."""
    for field in dataclasses.fields(config):
        _check_field(field, getattr(config, field.name),
                     lambda converted, name=field.name: object.__setattr__(config, name, converted))


def _check_field(field: dataclasses.Field, value: Any, convert: Callable[[Any], None]) -> None:
    """Raises ValueError when ``value`` is not of ``field``'s scalar type; an int for a float is passed to
    ``convert`` as that float. Tuple fields are left to :meth:`TrainConfig.__post_init__`."""
    kinds = [_NUMBER_TYPES[t] for t in str(field.type).replace(" ", "").split("|") if t in _NUMBER_TYPES]
    if not kinds or (value is None and "None" in str(field.type)):
        return
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        convert(float(value))
        return
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, tuple(kinds)):
        wanted = " or ".join({"float": "a number", "int": "a whole number", "str": "a string",
                              "bool": "true or false"}[k.__name__] for k in kinds)
        raise ValueError(f"{field.name}={value!r}: pass {wanted}.")


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Writes ``config`` as YAML, whole or not at all: into a temporary file, then renamed over ``path``
    (a failed write, a full disk say, leaves the file that was there)."""
    fields = dataclasses.asdict(config)
    for name in ("hidden", "shard_tables", "rating_scale"):
        if fields[name] is not None:
            fields[name] = list(fields[name])
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(partial, "w") as f:
            f.write(yaml.safe_dump(fields, sort_keys=False))
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """The settings of a TOML (``.toml``) or YAML (``.yaml``, ``.yml``) file, checked against TrainConfig's fields.

    Raises:
      FileNotFoundError: no such file.
      ValueError: another suffix, a parse error, a non-table document, or an
        unknown key (the message lists the known ones).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file.")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ValueError(f"{path}: a config file must end in .toml, .yaml or .yml.")
    try:
        if suffix == ".toml":
            import tomllib

            values = tomllib.loads(path.read_text())
        else:
            values = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, ValueError) as error:
        raise ValueError(f"{path}: cannot parse it ({str(error).splitlines()[0]}).") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: the config must be a table of settings, not {type(values).__name__}.")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; the settings are {sorted(known)}.")
    return values


def config_from_fields(fields: Mapping[str, Any]) -> TrainConfig:
    """The TrainConfig of saved fields (YAML lists back to tuples)."""
    return TrainConfig(**{k: tuple(v) if k in ("hidden", "shard_tables", "rating_scale") and isinstance(v, list)
                          else v for k, v in fields.items()})


def check_resumable(saved: Mapping[str, Any], config: TrainConfig, folder: Path) -> None:
    """Raises :class:`CheckpointError` when ``config`` differs from the ``saved`` fields in a
    setting that changes the steps already taken (anything but :data:`RESUMABLE_CHANGES`)."""

    def resolved(fields: Mapping[str, Any]) -> dict[str, Any]:
        """Every field, with the model and its sizes resolved (an unset size is the model's default; a field
        a run's file predates is its default) and the tuples as the file's lists."""
        try:
            settled = config_from_fields(fields)
        except (TypeError, ValueError):
            return dict(fields)
        embed_dim, hidden = settled.model_sizes()
        scale = None if settled.rating_scale is None else list(settled.rating_scale)
        return {**dataclasses.asdict(settled), "model": settled.model_name(), "embed_dim": embed_dim,
                "hidden": list(hidden), "shard_tables": list(settled.shard_tables), "rating_scale": scale}

    now, before = resolved(dataclasses.asdict(config)), resolved(saved)
    for key, value in before.items():
        if key not in RESUMABLE_CHANGES and key in now and now[key] != value:
            raise CheckpointError(f"{folder}: --resume with {key}={now[key]!r}, but the run was made with "
                                  f"{key}={value!r}; resume with the same settings (only {', '.join(RESUMABLE_CHANGES)} "
                                  "may change) or start a new run in another folder.")


# ----------------------------------------------------------------------------- what a config builds


def load_dataset(config: TrainConfig) -> Dataset:
    """The :class:`~jaxmeta.data.datasets.Dataset` of ``config.data`` (split with ``config.data_seed``)."""
    options: dict[str, Any] = {}
    if config.data in datasets.MOVIELENS:
        options = {"text": config.text or None, "text_tokens": config.text_tokens}
    data = datasets.load(config.data, data_dir=config.data_dir, path=config.path or None, seed=config.data_seed,
                         rating_scale=config.rating_scale, **options)
    if config.model_name() in ID_MODELS and not pd.api.types.is_integer_dtype(data.warm_ratings["item"]):
        raise ValueError(f"{config.path or config.data}: model={config.model_name()!r} reads integer item ids, but "
                         f"the item column has dtype {data.warm_ratings['item'].dtype}; pass integer item ids or "
                         "model='melu'.")
    return data


def data_fingerprint(data: Dataset) -> str:
    """A digest of what a run trains, validates and is scored on: every user's support and query rows
    of the training, validation and scenario sets (so: the data, their split and its seed).

    A checkpoint keeps it; restoring with data that give another digest (another file, another
    version of the data) is an error rather than a silently different run.
    """
    digest = hashlib.sha256(f"{data.name}|{data.split}".encode())
    for name, tasks in [("train", data.train), *data.valid.items(), *data.scenarios.items()]:
        digest.update(f"|{name}:{len(tasks)}".encode())
        for part in (tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y):
            for user in part:
                for leaf in jax.tree.leaves(user):
                    digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()[:16]


def table_rows(config: TrainConfig, name: str, rows: int) -> int:
    """The rows to give table ``name`` of ``rows`` ids: rounded up to a multiple of :data:`TABLE_ROWS`
    when ``config.shard_tables`` splits it over the devices."""
    if "all" in config.shard_tables or name in config.shard_tables:
        return -(-rows // TABLE_ROWS) * TABLE_ROWS
    return rows


def model_tables(config: TrainConfig, data: Dataset) -> dict[str, tuple[str, ...]]:
    """The embedding tables of :func:`make_model`: ``{name: parameter path}``."""
    if data.encoder is None:
        from jaxmeta.data.synthetic import FIELDS

        return {f: ("embeddings", str(i)) for i, f in enumerate(FIELDS)}
    if config.model_name() == "mf":
        return {"items": ("items",)}
    return {f.name: ("embeddings", f.name) for f in data.encoder.spec if f.kind in TABLE_KINDS}


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


def make_model(config: TrainConfig, data: Dataset) -> Model:
    """The config's model of ``data``, its output bias the mean training rating: the MLP on the
    synthetic ids, MeLU on the encoder's fields, biased MF on the raw item ids, or hybrid MeLU
    (``config.factors`` wide vectors, an id row for each item with at least
    ``config.known_min_ratings`` training ratings)."""
    embed_dim, hidden = config.model_sizes()
    if data.encoder is None:
        from jaxmeta.data.synthetic import FIELDS

        vocab = tuple(table_rows(config, name, size) for name, size in zip(FIELDS, data.vocab_sizes))
        return embedding_mlp(vocab, embed_dim=embed_dim, hidden=hidden, output_bias=data.mean_rating)
    if config.model_name() == "mf":
        items = data.warm_ratings["item"].to_numpy()
        rows = table_rows(config, "items", len(np.unique(items)) + 1)
        return biased_mf_by_id(items, key=ITEM_KEY, dim=embed_dim, global_bias=data.mean_rating, rows=rows)
    spec = [f._replace(size=table_rows(config, f.name, f.size)) if f.kind in TABLE_KINDS else f
            for f in data.encoder.spec]
    if config.model_name() == "hybrid":
        known = datasets.frequent_items(data, config.known_min_ratings)
        if not len(known):
            raise ValueError(f"{config.path or config.data}: no item has {config.known_min_ratings} training "
                             "ratings, so hybrid MeLU has no item to give an id row; pass model='melu'.")
        return hybrid_melu(spec, known, item_fields=data.encoder.table_columns("item")[1:], id_key=ITEM_KEY,
                           factors=config.factors, global_bias=data.mean_rating, embed_dim=embed_dim, hidden=hidden,
                           implicit_vectors=config.implicit_vectors)
    return melu(spec, embed_dim=embed_dim, hidden=hidden, output_bias=data.mean_rating)


def outer_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam at ``config.outer_lr`` after a global-norm clip at ``config.clip_norm``."""
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.adam(config.outer_lr))


def make_learner(config: TrainConfig, model: Model, teacher: Restored | None = None) -> MetaLearner:
    """The config's meta-learning algorithm: plain SGD at ``inner_lr`` for ``inner_steps`` inner steps.

    With ``teacher`` (the run of ``config.teacher``, :func:`load_teacher`), it is distilled from it
    (:func:`jaxmeta.algorithms.distill` at ``config.distill_alpha``, warm-started with
    ``config.distill_warm_start``). Without, a config with a teacher gives the student alone: what
    evaluation and serving use, and what its checkpoints hold.

    Raises:
      ValueError: ``teacher`` given to a config without one.
    """
    options: dict[str, Any] = dict(inner_optimizer=config.inner_lr, inner_steps=config.inner_steps,
                                   outer_optimizer=outer_optimizer(config), chunk_size=config.chunk_size)
    if config.algo in algorithms.CLOSED_FORM:  # no inner loop of gradient steps: no inner rate, steps or kernel
        del options["inner_optimizer"], options["inner_steps"]
    elif config.backend != "xla":
        options["backend"] = config.backend
    if config.implicit_prior:
        options["implicit"] = True
    learner = algorithms.META_LEARNERS[config.algo](model, **options)
    if teacher is None:
        return learner
    if not config.teacher:
        raise ValueError("make_learner: a teacher was given, but config.teacher is empty; pass the config of a job "
                         "with teacher=<its run folder>, or no teacher.")
    return algorithms.distill(learner, teacher.learner, teacher.state, alpha=config.distill_alpha,
                              warm_start=config.distill_warm_start)


def baseline_learners(config: TrainConfig, model: Model) -> tuple[MetaLearner, MetaLearner]:
    """``(no_adaptation, finetune)``: the global model, and the same fine-tuned per user by
    plain SGD at the config's inner rate for its inner steps."""
    outer = outer_optimizer(config)
    glob = algorithms.no_adaptation(model, outer_optimizer=outer, chunk_size=config.chunk_size)
    tune = algorithms.finetune(model, inner_optimizer=config.inner_lr, inner_steps=config.inner_steps,
                               outer_optimizer=outer, chunk_size=config.chunk_size, backend=config.backend)
    return glob, tune


# ----------------------------------------------------------------------------- saved runs


class Restored(NamedTuple):
    """A saved run, rebuilt."""

    config: TrainConfig
    data: Dataset
    model: Model
    learner: MetaLearner  # the meta-learner; for the baseline, the fine-tuning learner
    state: MetaState
    step: int  # the checkpoint's step


def read_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The config of the run in ``run_dir``.

    Raises:
      CheckpointError: not a run folder.
    """
    folder = Path(run_dir)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a run folder (no {CONFIG_FILE}); pass the --out folder of jaxmeta train.")
    try:
        fields = yaml.safe_load(path.read_text())
        if not isinstance(fields, dict):
            raise ValueError(f"it holds {type(fields).__name__}, not the settings' table")
        return config_from_fields(fields)
    except (yaml.YAMLError, ValueError, TypeError) as error:
        reason = " ".join(str(error).split())
        raise CheckpointError(f"{path} is damaged ({reason[:200]}); the run's settings cannot be read: restore the "
                              "file, or delete the folder and train the run again.") from None


def checkpoint_step(store: Checkpoints, which: str | int) -> int:
    """The step ``which`` names in ``store``: ``"best"`` (validation MAE; the latest when no step was
    scored), ``"latest"`` or a saved step number.

    Raises:
      CheckpointError: no checkpoint there, or no such step; ValueError: ``which`` is none of those.
    """
    steps = store.all_steps()
    if not steps:
        raise CheckpointError(f"{store.directory}: no checkpoint saved yet; train the run (or resume it) first.")
    if which == "best":
        return store.best_step() or steps[-1]
    if which == "latest":
        return steps[-1]
    if isinstance(which, int) or str(which).isdigit():
        if int(which) not in steps:
            raise CheckpointError(f"--checkpoint {which}: no checkpoint at that step; saved steps: "
                                  f"{', '.join(map(str, steps))}.")
        return int(which)
    raise ValueError(f"--checkpoint {which!r}: pass 'best', 'latest' or a saved step "
                     f"({', '.join(map(str, steps))}).")


def check_checkpoint(extra: Mapping[str, Any], config: TrainConfig, fingerprint: str, where: str) -> None:
    """Raises :class:`CheckpointError` when a checkpoint's ``extra`` was saved by a run with another seed
    or on other data than ``config`` and the data whose :func:`data_fingerprint` is ``fingerprint``."""
    if "seed" in extra and extra["seed"] != config.seed:
        raise CheckpointError(f"{where}: saved by a run with seed={extra['seed']}, but this run has seed="
                              f"{config.seed}; pass the run folder those checkpoints belong to.")
    if extra.get("data") not in (None, fingerprint):
        raise CheckpointError(f"{where}: the data read now ({config.path or config.data_dir}) differ from those the "
                              "run was trained on; pass the data it was trained on (--data-dir, or the same "
                              "--path file).")


def load_teacher(config: TrainConfig, data: Dataset) -> Restored:
    """The best checkpoint of the run ``config.teacher``, to distil into the job of ``config`` on ``data``.

    The teacher adapts on the job's support sets and predicts its query rows, so it must
    have been trained on the same data and split: the same source and file, and data whose
    fingerprint (:func:`data_fingerprint`) and vocabularies are those of ``data`` (which
    also keeps the job's validation and new users out of the teacher's training). Its
    model may differ (compression: a smaller student).

    Raises:
      CheckpointError: ``config.teacher`` is not a run folder, has no checkpoint, or was
        trained on other data; each message names the folder and what to pass.
    """
    folder = Path(config.teacher).expanduser()
    hint = ("pass the --out folder of a jaxmeta train run on the same data (--data, --path, --data-seed and "
            "--rating-scale as this job)")
    if not (folder / CONFIG_FILE).is_file():
        what = "no such folder" if not folder.exists() else f"not a run folder (no {CONFIG_FILE})"
        raise CheckpointError(f"teacher={config.teacher!r}: {what}; {hint}.")
    theirs = read_config(folder)
    for name in ("data", "data_seed"):
        if getattr(theirs, name) != getattr(config, name):
            raise CheckpointError(f"teacher={config.teacher!r}: the teacher was trained with {name}="
                                  f"{getattr(theirs, name)!r}, this job has {name}={getattr(config, name)!r}; {hint}.")
    try:
        return restore_run(folder, which="best", data=data)
    except CheckpointError as error:
        raise CheckpointError(f"teacher={config.teacher!r}: {error} (The teacher must be trained on this job's data "
                              f"and split: {hint}.)") from error


def restore_run(run_dir: str | os.PathLike, *, which: str | int = "best", name: str = "checkpoints",
                data: Dataset | None = None, data_dir: str | os.PathLike | None = None) -> Restored:
    """A saved run's config, data, model, learner and state.

    Args:
      run_dir: the ``--out`` folder of ``jaxmeta train``.
      which: ``"best"`` (validation MAE; the latest when no step was scored),
        ``"latest"``, or a step number.
      name: ``"checkpoints"`` (the meta-learner) or ``"baseline"`` (the global
        model, restored with the fine-tuning learner, whose ``evaluate``
        reports both without and with adaptation).
      data: the run's dataset when already loaded (else loaded from the config).
      data_dir: where the data are now, when they moved since training: the
        folder holding ``ml-100k/`` and ``ml-1m/``, or for a ``table`` run the
        folder holding its file (same name).

    Raises:
      CheckpointError: not a run folder, no such checkpoint, a damaged one, or
        one saved with another seed or on other data than those read now.
    """
    folder = Path(run_dir)
    config = read_config(folder)
    if data_dir is not None:
        moved = Path(data_dir).expanduser().absolute()
        config = dataclasses.replace(config, data_dir=str(moved),
                                     path=str(moved / Path(config.path).name) if config.path else "")
    store = Checkpoints(folder / name, read_only=True)
    step = checkpoint_step(store, which)
    data = load_dataset(config) if data is None else data
    model = make_model(config, data)
    learner = make_learner(config, model) if name == "checkpoints" else baseline_learners(config, model)[1]
    check_checkpoint(store.extra(step), config, data_fingerprint(data), f"{store.directory}/{step}")
    state, extra = store.restore(jax.jit(learner.init)(jax.random.key(config.seed)), step)
    if data.encoder is not None and extra.get("encoder") != data.encoder.to_dict():
        raise CheckpointError(f"{folder}: the checkpoint's vocabularies differ from those of the data now; "
                              "evaluate with the data the run was trained on.")
    return Restored(config, data, model, learner, state, step)
