"""Training jobs and their run folders: what ``jaxmeta train``, ``eval`` and ``plot`` work on.

:func:`run` meta-trains ``config.algo`` on ``config.data``, trains the
baselines' global model on the same users for the same number of steps, and
reports the query MSE on held-out *new* users:

* ``before``: the meta-learned initialisation, not adapted;
* ``after``: the meta-learned initialisation adapted on each new user's support set;
* ``no_adaptation``: the global model;
* ``finetune``: the global model with all its fast weights adapted per user by
  plain SGD at the config's inner rate for the config's inner steps.

With an output folder it is a resumable job. The folder holds:

* ``config.yaml``: the resolved :class:`jaxmeta.train.TrainConfig`;
* ``metrics.jsonl``: training and validation records (:class:`jaxmeta.train.MetricsLog`);
* ``checkpoints/``: the meta-learner (:class:`jaxmeta.checkpoint.Checkpoints`:
  the latest few and the best by validation MAE; each with the data position
  and, for MovieLens, the vocabularies);
* ``baseline/``: the global model's checkpoints;
* ``result.json``: what :func:`run` returns;
* after ``jaxmeta eval``: ``eval.json`` (every scenario's metrics) and
  ``adaptation.json`` (query loss against inner steps); after ``jaxmeta plot``:
  ``plots/``.

Validation users are a seeded 10% of the training users (synthetic data) or
those of :func:`jaxmeta.reproduce.load` (MovieLens); they never train.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
import pandas as pd
import yaml

from jaxmeta import algorithms
from jaxmeta.algorithms import MetaLearner, MetaState
from jaxmeta.checkpoint import CheckpointError, Checkpoints
from jaxmeta.data import interactions, splits, synthetic
from jaxmeta.data.features import FeatureEncoder
from jaxmeta.evaluation import ITEM_KEY, evaluation_batches, predict_tasks, query_metrics, with_item_ids
from jaxmeta.models import Model, biased_mf_by_id, melu
from jaxmeta.tasks import RaggedTasks, TaskBatch, pad_tasks
from jaxmeta.train import (
    RESUMABLE_CHANGES,
    MetricsLog,
    TrainConfig,
    fit,
    make_learner,
    make_model,
    outer_optimizer,
    row_sharded,
    run_devices,
    table_rows,
)

__all__ = (
    "RunData",
    "evaluate_run",
    "format_table",
    "load_config",
    "load_data",
    "restore_learner",
    "run",
    "save_config",
)

CONFIG_FILE = "config.yaml"
TABLE_KINDS = ("categorical", "multi")  # the kinds of MeLU fields that have an embedding table
VALID_FRACTION = 0.1


class RunData(NamedTuple):
    """A data source made ready for training."""

    train: RaggedTasks  # meta-training users
    valid: RaggedTasks  # validation users (never trained on)
    scenarios: dict[str, RaggedTasks]  # {scenario: new users to evaluate}
    model: Model
    encoder: FeatureEncoder | None  # the vocabularies (None for the synthetic ids)
    tables: dict[str, tuple[str, ...]]  # the model's embedding tables: {name: parameter path}


def load_data(config: TrainConfig) -> RunData:
    """The users, the model and the vocabularies of ``config.data``."""
    if config.data == "synthetic":
        data = synthetic.generate(seed=config.data_seed)
        order = np.random.default_rng(config.data_seed).permutation(len(data.train))
        held = max(1, round(VALID_FRACTION * len(order)))
        return RunData(data.train.take(order[held:]), data.train.take(order[:held]), {"user_cold": data.new},
                       make_model(config, data), None, {f: ("embeddings", str(i)) for i, f in enumerate(synthetic.FIELDS)})
    if config.data == "table":
        return _table_data(config)
    from jaxmeta import reproduce  # noqa: I001 (reproduce builds on this module's driver: import it when needed)

    data = reproduce.load(config.data, config.data_dir, seed=config.data_seed, text=config.text or None,
                          text_tokens=config.text_tokens)
    model = _featured_model(config, data.encoder, data.warm_ratings)
    return RunData(data.train, data.valid, data.scenarios, model, data.encoder, _featured_tables(config, data.encoder))


def _featured_model(config: TrainConfig, encoder: FeatureEncoder, warm: pd.DataFrame) -> Model:
    """The config's model of featured data (MeLU, or biased MF on the raw item ids), biased to the mean warm rating."""
    embed_dim, hidden = config.model_sizes()
    mean = float(warm["rating"].mean())
    if config.model_name() == "mf":
        items = warm["item"].to_numpy()
        rows = table_rows(config, "items", len(np.unique(items)) + 1)
        return biased_mf_by_id(items, key=ITEM_KEY, dim=embed_dim, global_bias=mean, rows=rows)
    spec = [f._replace(size=table_rows(config, f.name, f.size)) if f.kind in TABLE_KINDS else f for f in encoder.spec]
    return melu(spec, embed_dim=embed_dim, hidden=hidden, output_bias=mean)


def _featured_tables(config: TrainConfig, encoder: FeatureEncoder) -> dict[str, tuple[str, ...]]:
    """The embedding tables of :func:`_featured_model`: MF's item table, or MeLU's one per id field."""
    if config.model_name() == "mf":
        return {"items": ("items",)}
    return {f.name: ("embeddings", f.name) for f in encoder.spec if f.kind in TABLE_KINDS}


def _table_data(config: TrainConfig) -> RunData:
    """Any ratings table: the four cold-start scenarios computed from it, the item id as the one feature.

    Cold users: a seeded random 20%. Cold items: those first rated in the
    latest 20% of first-rating times when the table has a ``timestamp``
    column, else a seeded random 20%. The item vocabulary holds the warm items
    only, so every cold item is the OOV item. Validation: 10% of the warm users.
    """
    ratings = interactions.read_interactions(config.path, user="user", item="item", rating="rating",
                                             timestamp=_timestamp_column(config.path))
    users_rng, items_rng, valid_rng, query_rng = np.random.default_rng(config.data_seed).spawn(4)
    if "timestamp" in ratings:
        cold_items: Any = "first_rating"
    else:
        ids = np.sort(ratings["item"].unique())
        cold_items = set(items_rng.choice(ids, size=round(0.2 * len(ids)), replace=False).tolist())
    frames = splits.cold_start_scenarios(ratings, cold_items=cold_items, cold_users="random", rng=users_rng)
    frames = splits.hold_out_users(frames, VALID_FRACTION, rng=valid_rng)
    items = pd.DataFrame({"item": np.sort(ratings["item"].unique())})
    encoder = FeatureEncoder.fit(None, items[items["item"].isin(frames["warm"]["item"])],
                                 item_categorical=["item"]).with_tables(items=items)
    tables = splits.split_tables(frames, rng=query_rng)
    if config.model_name() == "mf" and not pd.api.types.is_integer_dtype(ratings["item"]):
        raise ValueError(f"{config.path}: model='mf' reads integer item ids, but the item column has dtype "
                         f"{ratings['item'].dtype}; pass integer item ids or model='melu'.")
    ids = with_item_ids if config.model_name() == "mf" else lambda tasks, _: tasks
    tasks = {name: ids(splits.build_tasks(t, encoder), t) for name, t in tables.items() if len(t)}
    if "warm" not in tasks or "valid" not in tasks:
        raise ValueError(f"{config.path}: too few users with {splits.MIN_RATINGS}-{splits.MAX_RATINGS} ratings "
                         "to train and validate on; pass a larger table.")
    scenarios = {s: tasks[s] for s in splits.SCENARIOS if s in tasks}
    return RunData(tasks["warm"], tasks["valid"], scenarios, _featured_model(config, encoder, frames["warm"]), encoder,
                   _featured_tables(config, encoder))


def _timestamp_column(path: str) -> str | None:
    """``"timestamp"`` when the table's header has it."""
    if Path(path).suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
    else:
        names = pd.read_csv(path, nrows=0, sep=None, engine="python").columns
    return "timestamp" if "timestamp" in names else None


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Writes ``config`` as YAML."""
    fields = dataclasses.asdict(config)
    for name in ("hidden", "shard_tables"):
        if fields[name] is not None:
            fields[name] = list(fields[name])
    Path(path).write_text(yaml.safe_dump(fields, sort_keys=False))


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
    try:
        if suffix == ".toml":
            import tomllib

            values = tomllib.loads(path.read_text())
        elif suffix in (".yaml", ".yml"):
            values = yaml.safe_load(path.read_text())
        else:
            raise ValueError(f"{path}: a config file must end in .toml, .yaml or .yml.")
    except (yaml.YAMLError, ValueError) as error:
        if "must end in" in str(error):
            raise
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


def _check_resumable(saved: dict[str, Any], config: TrainConfig, folder: Path) -> None:
    def resolved(fields: dict[str, Any]) -> dict[str, Any]:
        """The fields with the model and its sizes resolved (an unset size is the model's default)."""
        try:
            settled = _config(fields)
        except (TypeError, ValueError):
            return fields
        embed_dim, hidden = settled.model_sizes()
        return {**fields, "model": settled.model_name(), "embed_dim": embed_dim, "hidden": list(hidden),
                "shard_tables": list(settled.shard_tables)}

    now, saved = resolved(dataclasses.asdict(config)), resolved(saved)
    for key, value in saved.items():
        if key not in RESUMABLE_CHANGES and key in now and now[key] != value:
            raise CheckpointError(f"{folder}: --resume with {key}={now[key]!r}, but the run was made with "
                                  f"{key}={value!r}; resume with the same settings (only {', '.join(RESUMABLE_CHANGES)} "
                                  "may change) or start a new run in another folder.")


def _config(fields: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of saved fields (YAML lists back to tuples)."""
    return TrainConfig(**{k: tuple(v) if k == "hidden" and v is not None else v for k, v in fields.items()})


def _baseline_learners(config: TrainConfig, model: Model) -> tuple[MetaLearner, MetaLearner]:
    outer = outer_optimizer(config)
    glob = algorithms.no_adaptation(model, outer_optimizer=outer, chunk_size=config.chunk_size)
    tune = algorithms.finetune(model, inner_optimizer=config.inner_lr, inner_steps=config.inner_steps,
                               outer_optimizer=outer, chunk_size=config.chunk_size, backend=config.backend)
    return glob, tune


def _valid_batches(tasks: RaggedTasks, batch_size: int = 256) -> list[TaskBatch]:
    return list(evaluation_batches(tasks, batch_size))


def run(
    config: TrainConfig = TrainConfig(),
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Meta-trains ``config.algo`` and the baselines; evaluates them on new users.

    Args:
      config: the job.
      out: the run folder (see the module docstring); ``None``: nothing is saved.
      resume: continue the run in ``out`` from its latest checkpoints. The
        settings must be those it was made with (``steps`` may grow).
      progress: show progress bars.

    In a job of several processes (:func:`jaxmeta.distributed.initialize`), every
    process calls ``run`` with the same arguments and output folder (on a file
    system they share); process 0 writes the files and shows the progress.

    Returns:
      ``{"algo", "query_mse": {"before", "after", "no_adaptation", "finetune"},
      "new_users", "seconds", "devices", "processes", "config"}`` (new users:
      those of ``config.scenario``; devices: those the users were split over).

    Raises:
      CheckpointError: ``resume`` without a run in ``out``, or with other settings.
      FloatingPointError: the loss became NaN or infinite (see :func:`jaxmeta.train.fit`).
      jaxmeta.train.TrainingInterrupted: Ctrl-C; the checkpoint is saved first.
    """
    start = time.perf_counter()
    folder = None if out is None else Path(out)
    if resume:
        if folder is None or not (folder / CONFIG_FILE).is_file():
            raise CheckpointError(f"--resume: no run in {folder}; pass the --out folder of an earlier run.")
        _check_resumable(yaml.safe_load((folder / CONFIG_FILE).read_text()), config, folder)
    data = load_data(config)
    valid = _valid_batches(data.valid)
    if config.scenario not in data.scenarios:
        raise ValueError(f"scenario={config.scenario!r}: the {config.data} data has the scenarios "
                         f"{sorted(data.scenarios)}; pass one of them.")
    new_users = pad_tasks(data.scenarios[config.scenario])
    extra = {"config": json.loads(json.dumps(dataclasses.asdict(config)))}
    if data.encoder is not None:
        extra["encoder"] = data.encoder.to_dict()
    options: dict[str, Any] = {"row_sharded": row_sharded(config, data.tables)}
    log = None
    main = jax.process_index() == 0  # in a job of several processes, process 0 writes the files and reports
    progress = progress and main
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        if main:
            save_config(config, folder / CONFIG_FILE)
            log = MetricsLog(folder / "metrics.jsonl", offset=MetricsLog.last_wall_time(folder / "metrics.jsonl"))
        options.update(checkpoint_every=config.checkpoint_every, resume=resume, extra=extra)

    def checkpoints(name: str) -> Checkpoints | None:
        return None if folder is None else Checkpoints(folder / name, keep_last=config.keep_last)

    learner = make_learner(config, data.model)
    state, _ = fit(learner, data.train, config, desc=config.algo, progress=progress, valid=valid,
                   eval_every=config.eval_every, checkpoints=checkpoints("checkpoints"), log=log, **options)
    meta = learner.evaluate(state, new_users)
    glob, tune = _baseline_learners(config, data.model)
    global_state, _ = fit(glob, data.train, config, desc="global model", progress=progress, valid=valid,
                          eval_every=config.eval_every, checkpoints=checkpoints("baseline"), **options)
    tuned = tune.evaluate(global_state, new_users)
    result = {
        "algo": config.algo,
        "query_mse": {
            "before": float(meta["query_loss_before"]),
            "after": float(meta["query_loss_after"]),
            "no_adaptation": float(tuned["query_loss_before"]),
            "finetune": float(tuned["query_loss_after"]),
        },
        "new_users": int(meta["tasks"]),
        "seconds": round(time.perf_counter() - start, 2),
        "devices": len(run_devices(config)),
        "processes": jax.process_count(),
        "config": dataclasses.asdict(config),
    }
    if folder is not None and main:
        (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def restore_learner(run_dir: str | os.PathLike, *, which: str = "best", name: str = "checkpoints"
                    ) -> tuple[TrainConfig, RunData, MetaLearner, MetaState, int]:
    """A saved run's config, data, learner and state.

    Args:
      run_dir: the ``--out`` folder of ``jaxmeta train``.
      which: ``"best"`` (validation MAE; the latest when no step was scored),
        ``"latest"``, or a step number.
      name: ``"checkpoints"`` (the meta-learner) or ``"baseline"`` (the global model).

    Returns:
      ``(config, data, learner, state, step)``; for ``"baseline"`` the learner
      is the fine-tuning one (its ``evaluate`` reports both without and with
      adaptation).
    """
    folder = Path(run_dir)
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"{folder}: not a run folder (no {CONFIG_FILE}); pass the --out folder of jaxmeta train.")
    config = _config(yaml.safe_load((folder / CONFIG_FILE).read_text()))
    data = load_data(config)
    learner = make_learner(config, data.model) if name == "checkpoints" else _baseline_learners(config, data.model)[1]
    store = Checkpoints(folder / name, read_only=True)
    if which == "best":
        step = store.best_step() or store.latest_step()
    elif which == "latest":
        step = store.latest_step()
    else:
        step = int(which)
    state, extra = store.restore(learner.init(jax.random.key(config.seed)), step)
    if data.encoder is not None and extra.get("encoder") != data.encoder.to_dict():
        raise CheckpointError(f"{folder}: the checkpoint's vocabularies differ from those of the data now; "
                              "evaluate with the data the run was trained on.")
    return config, data, learner, state, step


def evaluate_run(run_dir: str | os.PathLike, *, which: str = "best", write: bool = True) -> dict[str, Any]:
    """Scores a saved run on every scenario; writes ``eval.json`` and ``adaptation.json``.

    Returns:
      ``{scenario: {method: {"mae", "rmse", "ndcg@1", ..., "ndcg@10"}}}`` with the
      methods ``config.algo`` (the chosen checkpoint), ``no_adaptation`` and
      ``finetune`` (the global model).
    """
    folder = Path(run_dir)
    config, data, learner, state, step = restore_learner(folder, which=which)
    _, _, tune, base_state, _ = restore_learner(folder, which="latest", name="baseline")
    glob, _ = _baseline_learners(config, data.model)
    methods = {config.algo: (learner, state), "no_adaptation": (glob, base_state), "finetune": (tune, base_state)}
    results: dict[str, Any] = {}
    for scenario, tasks in data.scenarios.items():
        batches = list(evaluation_batches(tasks, 256))
        results[scenario] = {}
        for method, (lrn, st) in methods.items():
            predictions, queries = predict_tasks(lambda b, lrn=lrn, st=st: lrn.predict(st, b), batches)
            results[scenario][method] = query_metrics(predictions, queries)
    if write:
        (folder / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
        first = next(iter(data.scenarios))
        batch = pad_tasks(data.scenarios[first])
        depth = 2 * config.inner_steps
        curves = {
            f"meta-learned ({config.algo})": _curve(learner, state, config, batch, depth, data.model),
            "pretrained, fine-tuned (no meta-learning)": _curve(tune, base_state, config, batch, depth, data.model),
        }
        (folder / "adaptation.json").write_text(json.dumps(
            {"inner_steps": list(range(depth + 1)), "curves": curves, "scenario": first, "checkpoint_step": step},
            indent=2) + "\n")
    return results


def _curve(learner: MetaLearner, state: MetaState, config: TrainConfig, batch: TaskBatch, depth: int,
           model: Model) -> list[float]:
    """Query MSE after 0..depth plain-SGD inner steps at the config's inner rate
    (Meta-SGD's learned rates are set aside, so every model adapts alike)."""
    out = []
    for k in range(depth + 1):
        probe = algorithms.finetune(model, inner_optimizer=optax.sgd(config.inner_lr), inner_steps=k,
                                    is_fast=learner.is_fast)
        out.append(float(probe.evaluate(state._replace(hyper=()), batch)["query_loss_after"]))
    return out


def format_table(result: dict[str, Any]) -> str:
    """The results of :func:`run` as a plain-text table."""
    rows = [
        (f"{result['algo']}, before adaptation", "before"),
        (f"{result['algo']}, after adaptation", "after"),
        ("baseline: no adaptation", "no_adaptation"),
        ("baseline: pretrain + fine-tune", "finetune"),
    ]
    width = max(len(label) for label, _ in rows)
    data = result["config"].get("data", "synthetic")
    lines = [
        f"query MSE on {result['new_users']} new users ({'synthetic data' if data == 'synthetic' else data}, "
        f"{result['config'].get('scenario', 'user_cold')})",
        f"{'model':<{width}}  query MSE",
        f"{'-' * width}  ---------",
    ]
    lines += [f"{label:<{width}}  {result['query_mse'][key]:9.4f}" for label, key in rows]
    devices, processes = result.get("devices", 1), result.get("processes", 1)
    where = "" if devices == 1 else f" on {devices} devices" + (f" of {processes} processes" if processes > 1 else "")
    lines.append(f"({result['seconds']:.1f} s{where})")
    return "\n".join(lines)


def format_eval(results: dict[str, Any], metrics: Sequence[str] = ("mae", "rmse", "ndcg@3", "ndcg@5")) -> str:
    """:func:`evaluate_run`'s results as one plain-text table per scenario."""
    lines = []
    for scenario, methods in results.items():
        width = max(len(m) for m in methods)
        lines += [scenario, f"{'method':<{width}}  " + "  ".join(f"{m:>8}" for m in metrics)]
        for method, values in methods.items():
            cells = ["       –" if values.get(m) is None else f"{values[m]:8.4f}" for m in metrics]
            lines.append(f"{method:<{width}}  " + "  ".join(cells))
        lines.append("")
    return "\n".join(lines).rstrip()
