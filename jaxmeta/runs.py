"""Training jobs and their run folders: what ``jaxmeta train`` and ``eval`` work on.

:func:`run` meta-trains ``config.algo`` (:class:`jaxmeta.job.TrainConfig`) on
``config.data``, trains the baselines' global model on the same users for the
same number of steps, and reports the query MSE on held-out *new* users:

* ``before``: the meta-learned initialisation, not adapted;
* ``after``: the meta-learned initialisation adapted on each new user's support set;
* ``no_adaptation``: the global model;
* ``finetune``: the global model with all its fast weights adapted per user by
  plain SGD at the config's inner rate for the config's inner steps.

With an output folder it is a resumable job, and one writer at a time
(:mod:`jaxmeta.rundir`: a folder that holds a run is refused unless it is resumed
or overwritten). The folder holds:

* ``.lock``: while a process writes the run, its system lock (``flock``), the file naming its process id
  and host;
* ``config.yaml``: the resolved :class:`jaxmeta.job.TrainConfig` (data paths absolute);
* ``metrics.jsonl``: training and validation records (:class:`jaxmeta.train.MetricsLog`);
* ``checkpoints/``: the meta-learner (:class:`jaxmeta.checkpoint.Checkpoints`:
  the latest few and the best by validation MAE; each with the data position,
  the seed, the data's fingerprint (:func:`jaxmeta.job.data_fingerprint`) and,
  for featured data, the vocabularies);
* ``baseline/``: the global model's checkpoints;
* ``result.json``: what :func:`run` returns;
* after ``jaxmeta eval``: ``eval.json`` (every scenario's metrics) and
  ``adaptation.json`` (query loss against inner steps); after ``jaxmeta plot``:
  ``plots/``.

The data, validation users included, come from :func:`jaxmeta.job.load_dataset`.

With ``config.teacher`` the meta-learner is distilled from that run's best checkpoint
(:func:`jaxmeta.job.load_teacher`, :func:`jaxmeta.algorithms.distill`); its checkpoints
record the teacher's folder and step, and a resume refuses a teacher whose best
checkpoint has moved on. The checkpoints hold the student alone: ``jaxmeta eval``,
serving and streaming read a distilled run without its teacher.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import yaml
from jax.experimental import multihost_utils

from jaxmeta._checks import json_ready
from jaxmeta.algorithms import MetaLearner, MetaState
from jaxmeta.checkpoint import CheckpointError, Checkpoints
from jaxmeta.decoding import fit_predictor, is_discrete
from jaxmeta.distributed import (
    global_batch,
    is_multiprocess,
    make_mesh,
    process_rows,
    shard_batch,
    shard_state,
    to_host,
)
from jaxmeta.evaluation import (
    adaptation_curve,
    evaluation_batches,
    predict_tasks,
    query_metrics,
)
from jaxmeta.job import (
    CONFIG_FILE,
    TrainConfig,
    baseline_learners,
    check_checkpoint,
    check_resumable,
    data_fingerprint,
    load_dataset,
    load_teacher,
    make_learner,
    make_model,
    model_tables,
    read_config,
    restore_run,
    row_sharded,
    save_config,
)
from jaxmeta.rundir import RunLock, clear, prepare, to_stderr
from jaxmeta.tasks import TaskBatch
from jaxmeta.train import (
    BatchStream,
    LogMetrics,
    MetricsLog,
    SaveCheckpoints,
    StopOnNaN,
    Validate,
    fit,
)

__all__ = ("Evaluation", "evaluate_run", "format_eval", "format_table", "run", "run_devices", "stale_evaluation")

EVAL_BATCH = 256  # users per evaluation batch (one compiled shape per learner)


def run_devices(config: TrainConfig) -> list[jax.Device]:
    """The devices a run splits its users over: ``config.devices`` of every process (all by default)."""
    local = jax.local_devices()
    count = len(local) if config.devices is None else config.devices
    if count > len(local):
        raise ValueError(f"devices={count}: this process has {len(local)} device(s); pass at most {len(local)}.")
    return [d for p in range(jax.process_count())
            for d in sorted((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)[:count]]


def _mesh(config: TrainConfig):
    """The mesh of :func:`run_devices`; None for one device."""
    used = run_devices(config)
    if len(used) == 1:
        return None
    if config.batch_size % len(used):
        raise ValueError(f"batch_size={config.batch_size} does not split over {len(used)} devices: pass a multiple "
                         f"of {len(used)}, or fewer devices.")
    return make_mesh(used)


def _train(learner: MetaLearner, data, config: TrainConfig, *, desc: str, progress: bool, valid: list[TaskBatch],
           folder: Path | None, name: str, resume: bool, extra: dict[str, Any], log: MetricsLog | None,
           row_sharded_tables, ready: Callable[[], None] | None = None) -> MetaState:
    """One learner trained with :func:`jaxmeta.train.fit`: validation, logs, checkpoints in ``folder/name``;
    ``ready`` is called once a resumed checkpoint has been checked against the run (at once without one)."""
    mesh = _mesh(config)
    multi = is_multiprocess(mesh)
    stream = BatchStream(data.train, batch_size=config.batch_size, num_buckets=config.num_buckets,
                         seed=config.seed, resplit=config.resplit,
                         rows=process_rows(mesh, config.batch_size) if multi else None)
    state = jax.jit(learner.init)(jax.random.key(config.seed))
    if mesh is not None:
        state = shard_state(state, mesh, row_sharded=row_sharded_tables)
    checkpoints = None if folder is None else Checkpoints(folder / name, keep_last=config.keep_last)
    # the baseline trains after the meta-learner: a run stopped before it has no baseline checkpoint yet
    if resume and checkpoints is not None and checkpoints.latest_step() is not None:
        state, saved, step = checkpoints.restore_newest_good(state, notice=to_stderr)
        check_checkpoint(saved, config, extra["data"], f"{checkpoints.directory}/{step}")
        if saved.get("teacher") != extra.get("teacher"):
            raise CheckpointError(f"{checkpoints.directory}/{step}: distilled from the teacher {saved.get('teacher')}, "
                                  f"but the teacher is now {extra.get('teacher')} (its best checkpoint moved on); "
                                  "resume with the teacher as it was, or start a new run in another folder.")
        stream.restore(saved["position"])
        if log is not None:
            log.trim(step)  # the records of steps past the checkpoint are written again as they are retaken
    if ready is not None:
        ready()

    def place(batch: TaskBatch) -> TaskBatch:
        if mesh is None:
            return batch
        return global_batch(batch, mesh, config.batch_size) if multi else shard_batch(batch, mesh)

    validate = Validate({"users": valid}, learner, every=config.eval_every, log=log,
                        gather=to_host if multi else None)
    hooks: list[Any] = [StopOnNaN(checkpoints=checkpoints, desc=desc, hint=_divergence_hint(data),
                                  also=(config.eval_every, config.checkpoint_every if checkpoints else None)),
                        LogMetrics(log=log), validate]
    if checkpoints is not None:
        hooks.append(SaveCheckpoints(checkpoints, stream, every=config.checkpoint_every, seed=config.seed,
                                     extra=extra, validation=validate))
    state = fit(learner, stream, steps=config.steps, state=state, hooks=hooks, place=place, desc=desc,
                progress=progress)
    return to_host(state) if multi else state


def _divergence_hint(data) -> str:
    """What to try when training diverges: the rates, or for ratings on a wide scale, the scale."""
    scale = getattr(data, "rating_scale", None)
    if scale is not None and scale[1] - scale[0] > 20:
        return (f"The ratings span {scale[0]:g} to {scale[1]:g}; the default rates suit scales such as 1-5: "
                "rescale the ratings (e.g. to 1-5), or lower --inner-lr and --outer-lr a lot.")
    return "Try a lower --inner-lr or --outer-lr."


def _check_resume(folder: Path | None, config: TrainConfig) -> None:
    """Raises when ``folder`` holds no run to resume with ``config``: no run, other settings, no
    meta-learner checkpoint, or ``config.steps`` below the step the run has reached."""
    if folder is None or not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"--resume: no run in {folder}; pass the --out folder of an earlier run.")
    check_resumable(yaml.safe_load((folder / CONFIG_FILE).read_text()), config, folder)
    store = folder / "checkpoints"
    steps = Checkpoints(store, read_only=True).all_steps() if store.is_dir() else []
    if not steps:
        raise CheckpointError(f"--resume: {store} holds no checkpoint to resume from; pass --overwrite to train "
                              "the run again from step 0.")
    if config.steps < steps[-1]:
        raise ValueError(f"--steps {config.steps}: the run in {folder} is at step {steps[-1]}; pass --steps "
                         f">= {steps[-1]}, or leave --steps out to finish at the saved steps.")


def run(
    config: TrainConfig = TrainConfig(),
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Meta-trains ``config.algo`` and the baselines; evaluates them on new users.

    Args:
      config: the job.
      out: the run folder (see the module docstring); ``None``: nothing is saved.
      resume: continue the run in ``out`` from its latest checkpoints. The
        settings must be those it was made with (``steps`` may grow, the data
        may move); a damaged latest checkpoint is passed over for the one before,
        with a notice.
      overwrite: replace a run already in ``out`` (without it, a folder that
        holds a run is refused: see :func:`jaxmeta.rundir.prepare`).
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
      ValueError: ``out`` holds a run (and neither ``resume`` nor ``overwrite``),
        or another process writes it (:class:`jaxmeta.rundir.RunLocked`).
      FloatingPointError: the loss became NaN or infinite (see :class:`jaxmeta.train.StopOnNaN`).
      jaxmeta.train.TrainingInterrupted: Ctrl-C; the checkpoint is saved first.
    """
    folder = None if out is None else Path(out)
    main = jax.process_index() == 0  # in a job of several processes, process 0 writes the files and reports
    if folder is None or not main:
        return _run(config, folder, resume=resume, progress=progress and main, main=main)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder}: a file is there; pass a folder for the run (new or empty).")
    if config.teacher and Path(config.teacher).expanduser().resolve() == folder.resolve():
        raise ValueError(f"teacher={config.teacher!r} is this run's own folder (--out); pass the folder of another, "
                         "finished run.")
    with RunLock(folder, notice=to_stderr):
        replace = prepare(folder, resume=resume, overwrite=overwrite)
        return _run(config, folder, resume=resume, progress=progress, main=main, replace=replace)


def _run(config: TrainConfig, folder: Path | None, *, resume: bool, progress: bool, main: bool,
         replace: bool = False) -> dict[str, Any]:
    """The run; with ``replace``, the run in ``folder`` is deleted once every setting has been checked (the data
    loaded, the model, devices and teacher found). ``config.yaml`` is written after that, and on a resume only
    once the checkpoint's seed, data and teacher have been checked too (``_train``'s ``ready``)."""
    start = time.perf_counter()
    config = config.resolved_paths()
    if resume:
        _check_resume(folder, config)
    data = load_dataset(config)
    if config.scenario not in data.scenarios:
        raise ValueError(f"scenario={config.scenario!r}: the {config.data} data has the scenarios "
                         f"{sorted(data.scenarios)}; pass one of them.")
    batches = evaluation_batches([data.valid["users"], *data.scenarios.values()], EVAL_BATCH)
    valid, new_users = batches[0], batches[1 + list(data.scenarios).index(config.scenario)]
    model = make_model(config, data)
    extra = {"config": json.loads(json.dumps(dataclasses.asdict(config))), "data": data_fingerprint(data)}
    if data.encoder is not None:
        extra["encoder"] = data.encoder.to_dict()
    options = dict(progress=progress, valid=valid, folder=folder, resume=resume, extra=extra,
                   row_sharded_tables=row_sharded(config, model_tables(config, data)))
    mesh = _mesh(config)  # checks the devices and the batch's split over them
    teacher = None
    if config.teacher:
        teacher = load_teacher(config, data)
        if mesh is not None:  # the teacher predicts inside the sharded step: replicate it on the same devices
            teacher = teacher._replace(state=shard_state(teacher.state, mesh))
        extra["teacher"] = {"run": config.teacher, "step": teacher.step}
    learner = make_learner(config, model, teacher)
    log = None
    if folder is not None:  # every setting checked: only now is the old run replaced
        if replace and main:
            clear(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if main:
            log = MetricsLog(folder / "metrics.jsonl", offset=MetricsLog.last_wall_time(folder / "metrics.jsonl"))
        if jax.process_count() > 1:  # the other processes open the checkpoints once the old run is gone
            multihost_utils.sync_global_devices("jaxmeta: run folder ready")

    def settled() -> None:  # a resume's checkpoint checked too (seed, data, teacher): the settings are saved
        if folder is not None and main:
            save_config(config, folder / CONFIG_FILE)

    state = _train(learner, data, config, desc=config.algo, name="checkpoints", log=log, ready=settled, **options)
    glob, tune = baseline_learners(config, model)
    global_state = _train(glob, data, config, desc="global model", name="baseline", log=None, **options)
    meta = _mean_evaluation(learner, state, new_users)
    tuned = _mean_evaluation(tune, global_state, new_users)
    result = {
        "algo": config.algo,
        "query_mse": {
            "before": meta["query_loss_before"],
            "after": meta["query_loss_after"],
            "no_adaptation": tuned["query_loss_before"],
            "finetune": tuned["query_loss_after"],
        },
        "new_users": int(meta["tasks"]),
        "seconds": round(time.perf_counter() - start, 2),
        "devices": len(run_devices(config)),
        "processes": jax.process_count(),
        "config": dataclasses.asdict(config),
    }
    if folder is not None and main:
        (folder / "result.json").write_text(json.dumps(json_ready(result), indent=2, allow_nan=False) + "\n")
    return result


def _mean_evaluation(learner: MetaLearner, state: MetaState, batches: Sequence[TaskBatch]) -> dict[str, float]:
    """``learner.evaluate`` over several batches: the query losses averaged over all their real users."""
    outs = [learner.evaluate(state, b) for b in batches]
    users = sum(float(o["tasks"]) for o in outs)
    mean = {k: sum(float(o[k]) * float(o["tasks"]) for o in outs) / max(users, 1.0)
            for k in ("query_loss_before", "query_loss_after")}
    return {**mean, "tasks": users}


class Evaluation(NamedTuple):
    """What :func:`evaluate_run` scored."""

    results: dict[str, Any]  # {scenario: {method: {"mae", "rmse", "ndcg@1", ..., "ndcg@10", "mae_decoded"}}}
    step: int  # the meta-learner's checkpoint step
    latest: int  # the run's latest checkpoint step then (a later one makes the files stale)


def _discrete_scale(data) -> bool:
    """Whether the run's ratings are a discrete scale, judged on every training rating (a small validation
    sample of continuous ratings has few distinct values too)."""
    if data.warm_ratings is not None:
        ratings = data.warm_ratings["rating"].to_numpy()
    else:
        ratings = np.concatenate([np.ravel(y) for y in (*data.train.support_y, *data.train.query_y)])
    return is_discrete(ratings, np.ones(ratings.shape, bool))


def evaluate_run(run_dir: str | os.PathLike, *, which: str | int = "best", write: bool = True,
                 data_dir: str | os.PathLike | None = None) -> Evaluation:
    """Scores a saved run on every scenario; writes ``eval.json`` and ``adaptation.json``.

    Args:
      run_dir: the run folder.
      which: the meta-learner's checkpoint: ``"best"``, ``"latest"`` or a step.
      write: write the two files (``adaptation.json`` records the step scored
        and the run's latest step, which :func:`jaxmeta.plots.write_plots` reads
        to tell stale files).
      data_dir: where the run's data are now, when they moved (see
        :func:`jaxmeta.job.restore_run`).

    Returns:
      The results ``{scenario: {method: {"mae", "rmse", "ndcg@1", ..., "ndcg@10", "mae_decoded"}}}``
      with the methods ``config.algo`` (the chosen checkpoint), ``no_adaptation``
      and ``finetune`` (the global model), and the step scored. ``mae_decoded``: the MAE of
      the predictions decoded onto the rating levels by each method's cut points on the
      validation users (:func:`jaxmeta.decoding.fit_cut_points`); ``None`` where the ratings
      are not a discrete scale (the built-in synthetic data).
    """
    folder = Path(run_dir)
    meta = restore_run(folder, which=which, data_dir=data_dir)
    config, data = meta.config, meta.data
    base = restore_run(folder, which="latest", name="baseline", data=data, data_dir=data_dir)
    glob, _ = baseline_learners(config, meta.model)
    methods = {config.algo: (meta.learner, meta.state), "no_adaptation": (glob, base.state),
               "finetune": (base.learner, base.state)}
    names = list(data.scenarios)
    valid, *scored = evaluation_batches([data.valid["users"], *(data.scenarios[s] for s in names)], EVAL_BATCH)
    batches = dict(zip(names, scored))
    latest = Checkpoints(folder / "checkpoints", read_only=True).latest_step()
    decoders = {}
    if _discrete_scale(data):
        # each method's cut points on the validation users, the set that chose the checkpoint (also for the item
        # scenarios, whose items those users never rated: a train run holds no items out to validate on)
        decoders = {method: fit_predictor(functools.partial(lrn.predict, st), valid)
                     for method, (lrn, st) in methods.items()}
    results: dict[str, Any] = {}
    for scenario in names:
        results[scenario] = {}
        for method, (lrn, st) in methods.items():
            predictions, queries = predict_tasks(functools.partial(lrn.predict, st), batches[scenario])
            results[scenario][method] = query_metrics(predictions, queries)
            decode = decoders.get(method)
            results[scenario][method]["mae_decoded"] = None if decode is None else query_metrics(
                decode(predictions), queries, ks=())["mae"]
    if write:
        (folder / "eval.json").write_text(json.dumps(json_ready(results), indent=2, allow_nan=False) + "\n")
        first = names[0]
        depth = 2 * config.inner_steps

        def curve(learner: MetaLearner, state: MetaState) -> list[float]:
            # plain SGD at the config's inner rate (Meta-SGD's learned rates are set aside: every model adapts alike)
            return adaptation_curve(meta.model, state.params, batches[first], learning_rate=config.inner_lr,
                                    steps=depth, is_fast=learner.is_fast).tolist()

        curves = {
            f"meta-learned ({config.algo})": curve(meta.learner, meta.state),
            "pretrained, fine-tuned (no meta-learning)": curve(base.learner, base.state),
        }
        (folder / "adaptation.json").write_text(json.dumps(json_ready(
            {"inner_steps": list(range(depth + 1)), "curves": curves, "scenario": first, "checkpoint_step": meta.step,
             "run_step": latest}), indent=2, allow_nan=False) + "\n")
    return Evaluation(results, meta.step, latest)


def stale_evaluation(run_dir: str | os.PathLike) -> str | None:
    """Why the run's ``eval.json`` and ``adaptation.json`` do not describe its latest checkpoint, or
    None when they do (they record the run's latest step when :func:`evaluate_run` wrote them)."""
    folder = Path(run_dir)
    read_config(folder)  # a run folder, or a clear error
    if not (folder / "eval.json").is_file() or not (folder / "adaptation.json").is_file():
        return "the run has no evaluation files yet"
    try:
        scored = json.loads((folder / "adaptation.json").read_text()).get("run_step")
    except (ValueError, AttributeError):
        return "adaptation.json is not valid"
    latest = Checkpoints(folder / "checkpoints", read_only=True).latest_step()
    if scored is None:
        return "the evaluation files do not say which checkpoints they scored"
    if latest is not None and latest > scored:
        return f"the evaluation files were made at step {scored}; the run is now at step {latest}"
    return None


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


def format_eval(results: dict[str, Any],
                metrics: Sequence[str] = ("mae", "rmse", "ndcg@3", "ndcg@5", "mae_decoded")) -> str:
    """:func:`evaluate_run`'s results as one plain-text table per scenario."""
    lines = []
    sizes = [max(8, len(m)) for m in metrics]
    for scenario, methods in results.items():
        width = max(len(m) for m in methods)
        header = "  ".join(f"{m:>{n}}" for m, n in zip(metrics, sizes, strict=True))
        lines += [scenario, f"{'method':<{width}}  {header}"]
        for method, values in methods.items():
            cells = [f"{'–':>{n}}" if values.get(m) is None else f"{values[m]:{n}.4f}"
                     for m, n in zip(metrics, sizes, strict=True)]
            lines.append(f"{method:<{width}}  " + "  ".join(cells))
        lines.append("")
    return "\n".join(lines).rstrip()

