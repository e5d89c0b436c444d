"""The thin training driver: data in, a meta-trained learner and a results table out.

``run(TrainConfig(...))`` meta-trains one algorithm on the built-in synthetic
data, trains the global model of the baselines on the same users for the same
number of steps, and reports the query MSE on held-out *new* users:

* ``before``: the meta-learned initialisation, not adapted;
* ``after``: the meta-learned initialisation adapted on each new user's support set;
* ``no_adaptation``: the global model;
* ``finetune``: the global model with all its fast weights adapted per user by
  plain SGD at the config's inner rate for the config's inner steps.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxmeta import algorithms
from jaxmeta.algorithms import MetaLearner, MetaState
from jaxmeta.algorithms.maml import DEFAULT_INNER_STEPS
from jaxmeta.data import synthetic
from jaxmeta.models import Model, embedding_mlp
from jaxmeta.tasks import RaggedTasks, TaskBatch, bucket_by_support, epoch_batches, pad_tasks


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of a training job (the flags of ``jaxmeta train``)."""

    algo: str = "maml"  # a key of jaxmeta.algorithms.META_LEARNERS
    steps: int = 1500  # outer steps, for the algorithm and for the baselines' global model
    batch_size: int = 32  # users per outer step
    inner_steps: int = DEFAULT_INNER_STEPS  # inner steps, at training and at test time
    hidden: tuple[int, ...] = (32,)  # hidden widths of the MLP on the embeddings
    embed_dim: int = 8  # embedding width per field
    inner_lr: float = 0.03  # plain-SGD rate of the inner loop (Meta-SGD: initial rates)
    outer_lr: float = 3e-3  # Adam rate of the outer step
    clip_norm: float = 1.0  # global-norm clip of the meta-gradient
    num_buckets: int = 4  # support-size buckets (compiled shapes)
    chunk_size: int | None = None  # users per chunk inside the compiled step
    seed: int = 0  # initialisation and data order
    data_seed: int = 0  # the synthetic data

    def __post_init__(self):
        if self.algo not in algorithms.META_LEARNERS:
            raise ValueError(f"algo={self.algo!r}: pass one of {sorted(algorithms.META_LEARNERS)}.")
        for name in ("steps", "batch_size", "inner_steps", "num_buckets", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: pass a positive integer.")
        for name in ("inner_lr", "outer_lr", "clip_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)}: pass a positive number.")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size={self.chunk_size}: pass a positive number of users, or leave it unset.")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden={self.hidden}: pass positive layer widths.")


def outer_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.adam(config.outer_lr))


def make_model(config: TrainConfig, data: synthetic.SyntheticData) -> Model:
    """The MLP on embeddings of the built-in data's three fields."""
    return embedding_mlp(
        data.vocab_sizes, embed_dim=config.embed_dim, hidden=config.hidden, output_bias=data.mean_rating
    )


def make_learner(config: TrainConfig, model: Model) -> MetaLearner:
    """The config's meta-learning algorithm."""
    kwargs: dict[str, Any] = dict(
        inner_steps=config.inner_steps, outer_optimizer=outer_optimizer(config), chunk_size=config.chunk_size
    )
    if config.algo == "metasgd":
        kwargs["inner_lr"] = config.inner_lr
    else:
        kwargs["inner_optimizer"] = optax.sgd(config.inner_lr)
    return algorithms.META_LEARNERS[config.algo](model, **kwargs)


def batches(tasks: RaggedTasks, config: TrainConfig) -> Iterator[TaskBatch]:
    """Endless shuffled, bucketed, fixed-shape batches of training users."""
    rng = np.random.default_rng(config.seed)
    buckets = bucket_by_support(tasks.support_sizes, config.num_buckets)
    while True:
        yield from epoch_batches(tasks, config.batch_size, rng=rng, buckets=buckets)


def fit(
    learner: MetaLearner,
    tasks: RaggedTasks,
    config: TrainConfig,
    *,
    desc: str = "train",
    progress: bool = True,
    log_every: int = 50,
) -> tuple[MetaState, list[dict[str, float]]]:
    """Runs ``config.steps`` outer steps; returns the state and a log of metrics.

    The log holds one record every ``log_every`` steps (and at the last step):
    the step, the step's metrics and the real users per second since the last
    record (the first record includes compilation).
    """
    state = learner.init(jax.random.key(config.seed))
    history: list[dict[str, float]] = []
    stream = batches(tasks, config)
    bar = tqdm(range(1, config.steps + 1), desc=desc, disable=not progress, unit="step", leave=False)
    last_time, users = time.perf_counter(), 0
    for step in bar:
        state, metrics = learner.step(state, next(stream))
        users = users + metrics["tasks"]  # stays on device: no sync per step
        if step % log_every == 0 or step == config.steps:
            record = {k: float(v) for k, v in metrics.items()}
            now = time.perf_counter()
            record.update(step=step, users_per_s=float(users) / (now - last_time))
            last_time, users = now, 0
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", users_s=f"{record['users_per_s']:.0f}")
            if not np.isfinite(record["loss"]):
                raise FloatingPointError(
                    f"{desc}: training diverged (loss {record['loss']} at step {step}); "
                    "try a lower --inner-lr or --outer-lr."
                )
    return state, history


def run(config: TrainConfig = TrainConfig(), *, progress: bool = True) -> dict[str, Any]:
    """Meta-trains ``config.algo`` and the baselines; evaluates them on new users.

    Returns:
      ``{"algo", "query_mse": {"before", "after", "no_adaptation", "finetune"},
      "new_users", "seconds", "config"}``.
    """
    start = time.perf_counter()
    data = synthetic.generate(seed=config.data_seed)
    model = make_model(config, data)
    new_users = pad_tasks(data.new)

    learner = make_learner(config, model)
    state, _ = fit(learner, data.train, config, desc=config.algo, progress=progress)
    meta = learner.evaluate(state, new_users)

    outer = outer_optimizer(config)
    global_state, _ = fit(
        algorithms.no_adaptation(model, outer_optimizer=outer, chunk_size=config.chunk_size),
        data.train,
        config,
        desc="global model",
        progress=progress,
    )
    tuned = algorithms.finetune(
        model, inner_optimizer=optax.sgd(config.inner_lr), inner_steps=config.inner_steps, chunk_size=config.chunk_size
    ).evaluate(global_state, new_users)
    return {
        "algo": config.algo,
        "query_mse": {
            "before": float(meta["query_loss_before"]),
            "after": float(meta["query_loss_after"]),
            "no_adaptation": float(tuned["query_loss_before"]),
            "finetune": float(tuned["query_loss_after"]),
        },
        "new_users": int(meta["tasks"]),
        "seconds": round(time.perf_counter() - start, 2),
        "config": dataclasses.asdict(config),
    }


def format_table(result: dict[str, Any]) -> str:
    """The results of :func:`run` as a plain-text table."""
    rows = [
        (f"{result['algo']}, before adaptation", "before"),
        (f"{result['algo']}, after adaptation", "after"),
        ("baseline: no adaptation", "no_adaptation"),
        ("baseline: pretrain + fine-tune", "finetune"),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [
        f"query MSE on {result['new_users']} new users (synthetic data)",
        f"{'model':<{width}}  query MSE",
        f"{'-' * width}  ---------",
    ]
    lines += [f"{label:<{width}}  {result['query_mse'][key]:9.4f}" for label, key in rows]
    lines.append(f"({result['seconds']:.1f} s)")
    return "\n".join(lines)
