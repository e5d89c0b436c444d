"""Checkpoints of a training run, with orbax: the state, where the data stream is, the vocabularies.

A :class:`Checkpoints` folder holds one orbax step directory per saved step,
each with two items:

* ``state``: the :class:`jaxmeta.algorithms.MetaState` (parameters, meta-learned
  hyper-parameters, outer optimizer state, step), saved as a pytree of arrays;
* ``extra``: JSON: the data-stream position (:meth:`jaxmeta.train.BatchStream.position`,
  which holds the numpy generator state), the run's RNG seed, the feature
  vocabularies (:meth:`jaxmeta.data.features.FeatureEncoder.to_dict`) and
  anything else the driver needs to resume exactly.

Orbax writes each step to a temporary directory and renames it when complete,
so a process killed during a save leaves the previous checkpoints intact; the
unfinished directory is ignored and removed when the folder is next opened.
Preservation keeps the latest ``keep_last`` steps and the ``keep_best`` steps
with the best validation metric.

Example:
  >>> import tempfile, jax.numpy as jnp
  >>> with tempfile.TemporaryDirectory() as folder:
  ...     ckpt = Checkpoints(folder, keep_last=1, keep_best=1)
  ...     for step, mae in ((10, 0.5), (20, 0.3), (30, 0.4)):
  ...         ckpt.save(step, {"w": jnp.full(2, step / 10)}, extra={"epoch": step // 10}, metrics={"valid_mae": mae})
  ...     state, extra = ckpt.restore({"w": jnp.zeros(2)})  # the latest
  ...     ckpt.all_steps(), ckpt.latest_step(), ckpt.best_step(), state["w"].tolist(), extra
  ([20, 30], 30, 20, [3.0, 3.0], {'epoch': 3})
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from jaxmeta.distributed import all_finite

__all__ = ("CheckpointError", "Checkpoints")


class CheckpointError(ValueError):
    """A checkpoint is missing or does not fit the run that restores it."""


class Checkpoints:
    """A folder of checkpoints of one run.

    Args:
      directory: the folder (created unless ``read_only``).
      keep_last: how many of the latest steps to keep.
      keep_best: how many of the best steps by ``best_metric`` to keep as well
        (steps saved without metrics count only as latest).
      best_metric: the key of the ``metrics`` passed to :meth:`save` that ranks steps.
      best_mode: ``"min"`` (lower is better, e.g. an error) or ``"max"``.
      read_only: open an existing folder without writing to it.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep_last: int = 3,
        keep_best: int = 1,
        best_metric: str = "valid_mae",
        best_mode: str = "min",
        read_only: bool = False,
    ):
        if keep_last < 1 or keep_best < 0:
            raise ValueError(f"keep_last={keep_last}, keep_best={keep_best}: keep at least the last step "
                             "(keep_last >= 1) and keep_best >= 0.")
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode={best_mode!r}: pass 'min' or 'max'.")
        self.directory = Path(directory).absolute()
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"{self.directory}: no checkpoint folder there; pass the checkpoints of a run.")
        self.best_metric, self.best_mode = best_metric, best_mode
        policies: list[Any] = [preservation_policy.LatestN(keep_last)]
        if keep_best:
            policies.append(preservation_policy.BestN(
                get_metric_fn=lambda metrics: metrics[best_metric], reverse=best_mode == "min", n=keep_best,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation_policy.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=False,  # a save is complete when save() returns
            create=not read_only,
        )
        self._read_only = read_only
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, *, extra: Mapping[str, Any] | None = None,
             metrics: Mapping[str, float] | None = None) -> None:
        """Saves ``state`` (a pytree of arrays) and ``extra`` (JSON-ready) as ``step``.

        Raises:
          FloatingPointError: a leaf of ``state`` is not finite; nothing is written.
        """
        if self._read_only:
            raise CheckpointError(f"{self.directory}: opened read-only; open it with read_only=False to save.")
        if not all_finite(state):
            raise FloatingPointError(f"step {step}: the state has non-finite values; not saving a corrupt checkpoint.")
        extra = {**dict(extra or {}), "metrics": None if metrics is None else {k: float(v) for k, v in metrics.items()}}
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)),
            metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """``(state, extra)`` of ``step`` (default the latest).

        Args:
          like: a pytree with the structure, shapes and dtypes of the saved
            state (e.g. ``learner.init(key)``); the restored arrays follow it.
          step: which step; ``None`` for the latest.

        Raises:
          CheckpointError: there is no such step, or the saved state does not
            fit ``like`` (another model, algorithm or vocabulary).
        """
        step = self.latest_step() if step is None else int(step)
        if step is None or step not in self.all_steps():
            raise CheckpointError(f"{self.directory}: no checkpoint at step {step}; saved steps: {self.all_steps()}.")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"{self.directory}: the checkpoint of step {step} does not fit this run's model "
                f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); resume with the config it was "
                "saved with, or start a new run in another folder.") from error
        restored, extra = out["state"], dict(out["extra"] or {})
        extra.pop("metrics", None)
        shapes = lambda tree: [(np.shape(x), np.dtype(x.dtype)) for x in jax.tree.leaves(tree)]
        if jax.tree.structure(restored) != jax.tree.structure(like) or shapes(restored) != shapes(like):
            raise CheckpointError(f"{self.directory}: the checkpoint of step {step} holds other shapes than this "
                                  "run's model; resume with the config it was saved with.")
        return restored, extra

    def all_steps(self) -> list[int]:
        """The complete saved steps, ascending."""
        self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete step, or ``None``."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The kept step with the best ``best_metric``, or ``None`` when no step has metrics."""
        scored = []
        for step in self.all_steps():
            metrics = self.extra(step).get("metrics") or {}
            if self.best_metric in metrics:
                scored.append((float(metrics[self.best_metric]), step))
        if not scored:
            return None
        return (min if self.best_mode == "min" else max)(scored)[1]

    def extra(self, step: int) -> dict[str, Any]:
        """The JSON ``extra`` of ``step`` alone (with ``"metrics"``, those passed to :meth:`save`)."""
        out = self._manager.restore(int(step), args=ocp.args.Composite(extra=ocp.args.JsonRestore()))
        return dict(out["extra"] or {})

    def close(self) -> None:
        """Waits for pending work and releases the folder."""
        self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
