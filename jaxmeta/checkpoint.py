"""Checkpoints of a training run, with orbax: the state, where the data stream is, the vocabularies.

A :class:`Checkpoints` folder holds one orbax step directory per saved step,
each with two items:

* ``state``: the :class:`jaxmeta.algorithms.MetaState` (parameters, meta-learned
  hyper-parameters, outer optimizer state, step), saved as a pytree of arrays;
* ``extra``: JSON: the data-stream position (:meth:`jaxmeta.train.BatchStream.position`,
  which holds the numpy generator state), the run's RNG seed, the feature
  vocabularies (:meth:`jaxmeta.data.features.FeatureEncoder.to_dict`) and
  anything else the driver needs to resume exactly; besides, the step's
  ``"metrics"`` and a sha256 digest of each array (``"sha256"``).

Orbax writes each step to a temporary directory and renames it when complete,
so a process killed during a save leaves the previous checkpoints intact; the
unfinished directory is ignored and removed when the folder is next opened.

Preservation is done here, not by orbax (whose best-step policy forgets the
metrics of the steps saved before the folder was reopened): after each save,
every step that is neither among the latest ``keep_last`` nor among the
``keep_best`` best-scored ones is deleted, the scores read from each step's
``extra``. The decisions depend only on the folder and the saves, so every
process of a multi-process job takes the same ones.

A damaged step (a file missing, truncated or altered, found by tensorstore's
checks or by the digest) raises :class:`CheckpointCorrupt`, whose one-line
message names the file and the earlier steps to use instead;
:meth:`Checkpoints.restore_newest_good` walks back to the newest step that is
whole. A step that is whole but holds another model raises
:class:`CheckpointError` saying so.

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

import errno
import hashlib
import inspect
import json
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxmeta.distributed import all_finite

__all__ = ("CheckpointCorrupt", "CheckpointError", "Checkpoints")

_METRICS, _DIGEST = "metrics", "sha256"  # keys of ``extra`` that this module fills
_STEP, _EXTRA_DIGEST = "saved_step", "extra_sha256"  # the step it was saved as; the digest of extra itself
# The files orbax (0.12) writes in every step: without them a step cannot be trusted, even
# where orbax would restore it (it rebuilds the tree from ``like`` when ``_METADATA`` is gone).
_EXTRA_FILE = "extra/metadata"
_REQUIRED = ("_CHECKPOINT_METADATA", "state/_METADATA", _EXTRA_FILE)
_JSON = ("state/_sharding", "state/array_metadatas/*")  # orbax's other JSON files, where it writes them
_DETAIL_CHARS = 110  # of the cause in a message, which stays one line under ~300 characters


class CheckpointError(ValueError):
    """A checkpoint is missing or does not fit the run that restores it."""


_ORBAX = str(Path(ocp.__file__).resolve().parent)  # orbax.checkpoint's own folder
_READER = re.compile(r"(^|_)read(_|$)|deserializ")  # its functions that read (not "thread", not "_write_")
_UNRETRIEVED_LINE = re.compile(r"\w+ exception was never retrieved$")  # Task, Future, _GatheringFuture
# what collecting a read that orbax's loop never started prints (a warning, not an unraisable error): its
# array reads, and the array metadata read (Store._get_array_metadatas, seen once in the suite)
_NEVER_AWAITED = (r"coroutine '(_read_array_index_and_device_put|_read_shard|_read_and_create_array|async_deserialize"
                  r"|Store\._get_array_metadatas)' was never awaited")


def _failed_read(error: BaseException | None) -> bool:
    """Whether ``error`` was raised through one of orbax's array reads: a frame of its own traceback is in
    orbax's code, in a function that reads or deserializes. Its causes are not followed, so an error of
    jaxmeta's raised from a failed read (:class:`CheckpointCorrupt`) is not one."""
    tb = getattr(error, "__traceback__", None)
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename.startswith(_ORBAX) and _READER.search(code.co_name):
            return True
        tb = tb.tb_next
    return False


class _UnretrievedOrbaxReads(logging.Filter):
    """Drops asyncio's "... exception was never retrieved" records (a Task's, a Future's, or the future of
    an ``asyncio.gather``) of orbax's reads (a failed restore's): the task named in the message is orbax's,
    or the exception was raised through one of orbax's reads (:func:`_failed_read`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not _UNRETRIEVED_LINE.match(message.split("\n", 1)[0]):
            return True
        error = record.exc_info[1] if record.exc_info else None
        return not ("orbax" in message or _failed_read(error))


_UNRETRIEVED = _UnretrievedOrbaxReads()  # one instance: logging adds a filter once


def _is_leftover_read(unraisable) -> bool:
    """Whether ``sys.unraisablehook`` got what a failed restore leaves behind: one of orbax's array reads,
    a coroutine never awaited, or an error raised through one (:func:`_failed_read`); or, from a thread other
    than the main one, tensorstore's callback of a read that finished after orbax's event loop closed
    (``RuntimeError: Event loop is closed``, no object)."""
    obj = unraisable.object
    if inspect.iscoroutine(obj) and "orbax" in getattr(getattr(obj, "cr_code", None), "co_filename", ""):
        return True
    if _failed_read(getattr(unraisable, "exc_value", None)):
        return True
    return (obj is None and getattr(unraisable, "exc_type", None) is RuntimeError
            and str(unraisable.exc_value) == "Event loop is closed"
            and threading.current_thread() is not threading.main_thread())


def _quiet_failed_reads() -> None:
    """Silences what a failed restore leaves behind, and nothing else.

    A failed restore leaves orbax's other array reads running: as coroutines never
    awaited (collected later, at the latest at exit), as tensorstore callbacks that find
    orbax's event loop closed, and as asyncio Tasks and gathered futures whose exceptions
    nobody retrieves. Each prints its exception and a traceback (through
    ``sys.unraisablehook``, asyncio's logger, or a ``RuntimeWarning`` for a read never
    started): up to hundreds of lines around the one-line error. One hook
    (:func:`_is_leftover_read`), one logging filter and one warnings filter drop those
    alone. Installed before a restore reads, since a failing read prints while the others
    still run; installing it again changes nothing.
    """
    if not getattr(sys.unraisablehook, "_jaxmeta_drops_failed_reads", False):
        hook = sys.unraisablehook

        def quiet(unraisable) -> None:
            if not _is_leftover_read(unraisable):
                hook(unraisable)

        quiet._jaxmeta_drops_failed_reads = True
        sys.unraisablehook = quiet
    logging.getLogger("asyncio").addFilter(_UNRETRIEVED)
    warnings.filterwarnings("ignore", message=_NEVER_AWAITED, category=RuntimeWarning)


def _drop_failed_reads() -> None:
    """After a failed restore: :func:`_quiet_failed_reads`, and the reads that can be collected now are."""
    import gc

    _quiet_failed_reads()
    gc.collect()


class CheckpointCorrupt(CheckpointError):
    """A saved step is damaged: one of its files is missing, truncated or altered.

    Attributes:
      step: the damaged step.
      detail: what is wrong, naming the file when it is known (relative to the step's folder).
    """

    def __init__(self, message: str, *, step: int | None = None, detail: str = ""):
        super().__init__(message)
        self.step, self.detail = step, detail


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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
        self.keep_last, self.keep_best = keep_last, keep_best
        self.best_metric, self.best_mode = best_metric, best_mode
        options = ocp.CheckpointManagerOptions(
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=False,  # a save is complete when save() returns
            create=not read_only,
        )  # no max_to_keep, no preservation policy: orbax keeps every step, _prune chooses
        self._read_only = read_only
        self._scores: dict[int, float | None] = {}  # step -> its best_metric; filled as steps are saved or read
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            "state": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()})

    def save(self, step: int, state: Any, *, extra: Mapping[str, Any] | None = None,
             metrics: Mapping[str, float] | None = None) -> None:
        """Saves ``state`` (a pytree of arrays) and ``extra`` (JSON-ready) as ``step``, then
        deletes the steps that are neither among the latest ``keep_last`` nor the best ``keep_best``.

        In a job of several processes, every process calls it with the same arguments.

        Raises:
          FloatingPointError: a leaf of ``state`` is not finite; nothing is written.
          ValueError: ``extra`` has a key this module fills (``"metrics"``, ``"sha256"``).
        """
        if self._read_only:
            raise CheckpointError(f"{self.directory}: opened read-only; open it with read_only=False to save.")
        reserved = sorted({_METRICS, _DIGEST, _STEP, _EXTRA_DIGEST} & set(extra or {}))
        if reserved:
            raise ValueError(f"extra has the key(s) {reserved}, which Checkpoints fills; pass metrics with "
                             "metrics= and rename the others.")
        if not all_finite(state):
            raise FloatingPointError(f"step {step}: the state has non-finite values; not saving a corrupt checkpoint.")
        step = int(step)
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        saved = {**dict(extra or {}), _METRICS: metrics, _STEP: step}
        digests = _digests(state)
        if digests is not None:
            saved[_DIGEST] = digests
        saved = json.loads(json.dumps(saved))  # as the JSON file will give it back
        saved[_EXTRA_DIGEST] = _json_digest(saved)
        try:
            self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                             extra=ocp.args.JsonSave(saved)), force=True)
            self._manager.wait_until_finished()
        except Exception as error:
            if not _disk_full(error):
                raise
            last = self.latest_step()
            raise OSError(errno.ENOSPC, f"{self.directory}: no space left on the device while saving step {step}; "
                          "free some space, then resume the run"
                          + ("" if last is None else f" (step {last}, the last saved, is whole)")) from error
        self._scores[step] = self._score(metrics)
        self._prune()

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """``(state, extra)`` of ``step`` (default the latest).

        Args:
          like: a pytree with the structure, shapes and dtypes of the saved
            state (e.g. ``learner.init(key)``); the restored arrays follow it
            (its shardings, and its dtypes, cast to where they differ).
          step: which step; ``None`` for the latest.

        Raises:
          CheckpointCorrupt: the step is damaged (a file missing, truncated or
            altered); the message names the file and the earlier steps.
          CheckpointError: there is no such step, or the saved state does not
            fit ``like`` (another model, algorithm or vocabulary).
        """
        steps = self.all_steps()
        step = (steps[-1] if steps else None) if step is None else int(step)
        if step is None or step not in steps:
            raise CheckpointError(f"{self.directory}: no checkpoint at step {step}; saved steps: {steps}.")
        return self._restore(like, step)

    def restore_newest_good(self, like: Any, *, before: int | None = None,
                            notice: Callable[[str], None] = _to_stderr) -> tuple[Any, dict[str, Any], int]:
        """``(state, extra, step)`` of the newest step (before ``before``) that is not damaged.

        Walks back from the newest step, skipping damaged ones: each is reported
        through ``notice`` in one line (``checkpoint step 40 is damaged (...);
        resuming from step 30``) and, unless the folder is read-only, deleted,
        since the run that resumes will save that step again. Every process of
        a multi-process job calls it alike and they agree on each step.

        Args:
          like: as for :meth:`restore`.
          before: only steps below it (default: all).
          notice: called with one line per damaged step skipped (default: print to stderr).

        Raises:
          CheckpointCorrupt: every step is damaged.
          CheckpointError: no step to restore, or the newest whole step does not fit ``like``.
        """
        steps = [s for s in self.all_steps() if before is None or s < before]
        if not steps:
            raise CheckpointError(f"{self.directory}: no checkpoint{'' if before is None else f' before step {before}'}"
                                  f"; saved steps: {self.all_steps()}.")
        damaged: list[CheckpointCorrupt] = []
        for step in reversed(steps):
            try:
                state, extra = self._restore(like, step)
                error = None
            except CheckpointCorrupt as corrupt:
                error = corrupt
            if _agree(error is None):  # a process that read a damaged shard holds the others back
                break
            damaged.append(error or CheckpointCorrupt("", step=step, detail="damaged on another process"))
        else:
            raise CheckpointCorrupt(
                f"{self.directory}: every checkpoint is damaged (steps {', '.join(map(str, sorted(e.step for e in damaged)[-6:]))}; "
                f"step {steps[-1]}: {damaged[0].detail}); start a new run in another folder.",
                step=steps[-1], detail=damaged[0].detail)
        for error in damaged:
            if not self._read_only:
                self._manager.delete(error.step)
                self._scores.pop(error.step, None)
            notice(_line(f"checkpoint step {error.step} is damaged ({error.detail}); resuming from step {step}"
                         + ("" if self._read_only else f" (step {error.step} deleted)")))
        return state, extra, step

    def all_steps(self) -> list[int]:
        """The complete saved steps, ascending."""
        self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete step, or ``None``."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The kept step with the best ``best_metric``, or ``None`` when no step has metrics
        (steps whose ``extra`` cannot be read count as unscored)."""
        ranked = self._ranked(self.all_steps())
        return ranked[0] if ranked else None

    def extra(self, step: int) -> dict[str, Any]:
        """The JSON ``extra`` of ``step`` alone (with ``"metrics"``, those passed to :meth:`save`).

        Raises:
          CheckpointCorrupt: the step's ``extra`` file is missing or damaged.
          CheckpointError: there is no such step.
        """
        extra = self._read_extra(int(step))
        extra.pop(_DIGEST, None)
        extra.pop(_STEP, None)
        return extra

    def close(self) -> None:
        """Waits for pending work and releases the folder."""
        self._manager.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _score(self, metrics: Mapping[str, Any] | None) -> float | None:
        value = (metrics or {}).get(self.best_metric)
        return None if value is None else float(value)

    def _ranked(self, steps: Sequence[int]) -> list[int]:
        """The scored ones of ``steps``, best first (ties: the earlier step first)."""
        for step in steps:
            if step not in self._scores:
                try:
                    self._scores[step] = self._score(self._read_extra(step).get(_METRICS))
                except CheckpointError:  # damaged, or deleted since it was listed
                    self._scores[step] = None
        sign = 1.0 if self.best_mode == "min" else -1.0
        scored = [(sign * score, step) for step in steps if (score := self._scores[step]) is not None]
        return [step for _, step in sorted(scored)]

    def _prune(self) -> None:
        """Deletes every step neither among the latest ``keep_last`` nor the best ``keep_best``.

        It lists the steps the manager tracks (those it found on opening, plus
        the saves, less the deletions), not the folder now, so that every
        process of a job decides alike.
        """
        steps = sorted(int(s) for s in self._manager.all_steps())
        keep = set(steps[-self.keep_last:]) | set(self._ranked(steps)[:self.keep_best] if self.keep_best else ())
        for step in steps:
            if step not in keep:
                self._manager.delete(step)
                self._scores.pop(step, None)

    def _folder(self, step: int) -> Path:
        return self.directory / str(step)  # orbax's default step name: the number alone

    def _corrupt(self, step: int, detail: str) -> CheckpointCorrupt:
        """The error for a damaged ``step``, naming the earlier steps to use instead."""
        steps = self.all_steps()
        earlier = [s for s in steps if s < step]
        listed = ", ".join(map(str, steps[-6:]))
        listed = listed if len(steps) <= 6 else "..., " + listed
        instead = (f"use an earlier one: --checkpoint {earlier[-1]} (saved steps: {listed})." if earlier
                   else f"there is no earlier one (saved steps: {listed}); start a new run in another folder.")
        detail = _clip(detail, _DETAIL_CHARS)
        return CheckpointCorrupt(f"{self._folder(step)}: the checkpoint of step {step} is damaged ({detail}); "
                                 f"{instead}", step=step, detail=detail)

    def _read_extra(self, step: int) -> dict[str, Any]:
        if not self._folder(step).is_dir():
            raise CheckpointError(f"{self.directory}: no checkpoint at step {step}; saved steps: {self.all_steps()}.")
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))
        except (FileNotFoundError, KeyError) as error:  # KeyError: the whole item's folder is gone
            raise self._corrupt(step, f"{_EXTRA_FILE}: missing") from error
        except ValueError as error:  # UnicodeDecodeError, JSONDecodeError
            raise self._corrupt(step, f"{_EXTRA_FILE}: not valid JSON") from error
        except Exception as error:  # a damaged file fails in many ways; each one means the same here
            raise self._corrupt(step, f"{_EXTRA_FILE}: {_cause(error, self._folder(step))}") from error
        extra = out["extra"]
        if extra is not None and not isinstance(extra, dict):
            raise self._corrupt(step, f"{_EXTRA_FILE}: holds a {type(extra).__name__}, not a JSON object")
        extra = dict(extra or {})
        expected = extra.pop(_EXTRA_DIGEST, None)  # None: saved before the digest existed
        if expected is not None and expected != _json_digest(extra):
            raise self._corrupt(step, f"{_EXTRA_FILE}: altered (its checksum differs)")
        if extra.get(_STEP, step) != step:
            raise self._corrupt(step, f"{_EXTRA_FILE}: saved as step {extra[_STEP]}, found as step {step} (a step "
                                      "folder renamed?)")
        return extra

    def _restore(self, like: Any, step: int) -> tuple[Any, dict[str, Any]]:
        folder = self._folder(step)
        for name in (*_REQUIRED, *(str(p.relative_to(folder)) for pattern in _JSON for p in folder.glob(pattern))):
            try:
                json.loads((folder / name).read_bytes())
            except FileNotFoundError as error:
                raise self._corrupt(step, f"{name}: missing") from error
            except ValueError as error:  # UnicodeDecodeError, JSONDecodeError
                raise self._corrupt(step, f"{name}: not valid JSON") from error
        extra = self._read_extra(step)
        try:
            metadata = self._manager.item_metadata(step)["state"]
        except Exception as error:  # reading the metadata opens every array's header in the database
            raise self._corrupt(step, _locate(folder, error)) from error
        if metadata is None:
            raise self._corrupt(step, "state/_METADATA: unreadable")
        saved = {leaf.name: (tuple(leaf.shape), np.dtype(leaf.dtype)) for leaf in jax.tree.leaves(metadata.tree)}
        names = jax.tree.leaves(ocp.tree.get_param_names(like, include_empty_nodes=False))
        wanted = [ocp.utils.to_shape_dtype_struct(x) for x in jax.tree.leaves(like)]
        misfit = _misfit(saved, dict(zip(names, (tuple(w.shape) for w in wanted))))
        if misfit:
            raise CheckpointError(
                f"{self.directory}: the checkpoint of step {step} does not fit this run's model ({misfit}); "
                "resume with the config it was saved with, or start a new run in another folder.")
        # restored as saved, so that the digest checks the saved bytes; cast to ``like`` after
        abstract = [w.update(dtype=saved[name][1]) for name, w in zip(names, wanted)]
        _quiet_failed_reads()  # before the read: a failing one prints while the others still run
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(
                jax.tree.unflatten(jax.tree.structure(like), abstract))))
        except Exception as error:  # tensorstore and orbax raise Exception, ValueError, OSError, ...
            _drop_failed_reads()
            raise self._corrupt(step, _locate(folder, error)) from error
        restored = out["state"]
        expected = extra.pop(_DIGEST, None)
        extra.pop(_METRICS, None)
        extra.pop(_STEP, None)
        found = None if expected is None else _digests(restored)
        if found is not None:
            altered = [name for name in names if expected.get(name) != found[name]]
            if altered:
                raise self._corrupt(step, _locate_altered(folder, altered[0]))
        leaves = [x if x.dtype == w.dtype else x.astype(w.dtype)
                  for x, w in zip(jax.tree.leaves(restored), wanted)]
        return jax.tree.unflatten(jax.tree.structure(like), leaves), extra


_DISK_FULL = ("no space left on device", "file too large", "disk quota exceeded")


def _disk_full(error: BaseException) -> bool:
    """Whether ``error``, or one it was raised from, is a full disk or file-size limit (as tensorstore and
    orbax report it, in words as often as in an errno)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or any(
                words in str(error).lower() for words in _DISK_FULL):
            return True
        error = error.__cause__ or error.__context__
    return False


def _json_digest(value: Any) -> str:
    """The sha256 of ``value``'s canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _digests(tree: Any) -> dict[str, str] | None:
    """The sha256 of each leaf's bytes, by orbax's name for the leaf; ``None`` when a leaf is
    spread over several processes (no process holds its bytes)."""
    leaves = jax.tree.leaves(tree)
    if not all(getattr(x, "is_fully_addressable", True) for x in leaves):
        return None
    names = jax.tree.leaves(ocp.tree.get_param_names(tree, include_empty_nodes=False))
    return {name: hashlib.sha256(np.ascontiguousarray(x).reshape(-1).view(np.uint8)).hexdigest()
            for name, x in zip(names, jax.device_get(leaves))}


def _misfit(saved: Mapping[str, tuple], wanted: Mapping[str, tuple]) -> str:
    """What differs between the saved arrays' shapes and those wanted, or ``""``."""
    for name in sorted(set(saved) | set(wanted)):
        if name not in wanted:
            return f"{name} is saved but not in the model"
        if name not in saved:
            return f"{name} of the model is not saved"
        if saved[name][0] != wanted[name]:
            return f"{name} is {saved[name][0]} there, {wanted[name]} here"
    return ""


def _agree(ok: bool) -> bool:
    """Whether ``ok`` holds on every process of the job."""
    if jax.process_count() == 1:
        return ok
    return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def _line(text: str) -> str:
    return " ".join(text.split())


def _clip(text: str, chars: int) -> str:
    """``text`` on one line, cut at a word to at most about ``chars`` characters."""
    text = _line(text)
    return text if len(text) <= chars else text[:chars].rsplit(" ", 1)[0] + " ..."


def _cause(error: BaseException, folder: Path) -> str:
    """The innermost message of ``error``'s chain, on one line, without tensorstore's spec."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = re.sub(r"\s*\[tensorstore_spec.*", "", _line(str(error))).replace(f"{folder}/", "")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _locate(folder: Path, error: BaseException) -> str:
    """The damaged file of a step that ``error`` came from, and why, as ``'path: why'``."""
    chain, text = error, []
    while chain is not None:
        text.append(str(chain))
        chain = chain.__cause__ or chain.__context__
    files = [f for f in re.findall(r'local file "([^"]+)"', " ".join(text)) if not f.endswith("/")]
    if files and files[-1].startswith(f"{folder}/"):
        name = files[-1][len(f"{folder}/"):]
        if not (folder / name).is_file():
            return f"{name}: missing"
        why = re.search(rf'local file "{re.escape(files[-1])}": (.*?)(?: \[tensorstore_spec|$)', text[-1])
        return f"{name}: {_why(why.group(1)) if why else _cause(error, folder)}"
    for _, name, size, end in _ocdbt_locations(folder / "state"):
        if size < end:
            return f"state/{name}: " + ("missing" if size < 0 else f"truncated ({size} of {end} bytes)")
    return _cause(error, folder)


def _why(text: str) -> str:
    """Tensorstore's reason for failing to read a file, in a few words."""
    short = re.search(r"byte range \[0, (\d+)\) is not valid for value of size (\d+)", text)
    if short:
        return f"truncated ({short.group(2)} of {short.group(1)} bytes)"
    if "checksum verification failed" in text:
        return "its checksum does not match"
    if re.search("zstd", text, re.IGNORECASE):
        return "it does not decompress"
    return text


def _locate_altered(folder: Path, leaf: str) -> str:
    """``'path: why'`` for the array ``leaf`` whose bytes differ from its digest."""
    files = sorted({name for kind, name, _, _ in _ocdbt_locations(folder / "state", key=f"{leaf}/")
                    if kind == "value"})
    return f"{f'state/{files[0]}' if files else 'state'}: the bytes of {leaf} differ from their sha256 at the save"


def _ocdbt_locations(database: Path, *, key: str = "") -> list[tuple[str, str, int, int]]:
    """``(kind, file, its size or -1 when missing, the end of the piece in it)`` for each B-tree
    node of orbax's OCDBT ``database`` and each value stored outside the nodes (those under
    keys that start with ``key``); what could be read of it.

    Only used to name a damaged file in a message, so it reads what it can and no more.
    """
    import tensorstore as ts  # orbax's storage; only needed here

    found: list[tuple[str, str, int, int]] = []
    if any(database.glob("ocdbt.process_*")):  # the processes' databases, joined by the manifest
        manifest = database / "manifest.ocdbt"
        found.append(("manifest", manifest.name, manifest.stat().st_size if manifest.is_file() else -1, 0))

    def visit(location: str, prefix: bytes) -> None:
        kind, base, name, offset, length = location.split(":")
        path, end = database / base / name, int(offset) + int(length)
        size = path.stat().st_size if path.is_file() else -1
        found.append((kind, f"{base}{name}", size, end))
        if kind != "btreenode" or size < end:
            return
        for entry in ts.ocdbt.dump(kv, location).result().get("entries", []):
            full = prefix + entry.get("key", b"")
            if "indirect_value" in entry and full.startswith(key.encode()):
                visit(entry["indirect_value"], full)
            elif "node" in entry:  # an interior node: its children's keys drop their common prefix
                common = entry.get("subtree_common_prefix", b"")
                visit(entry["node"], prefix + (full[:common] if isinstance(common, int) else common))

    try:
        kv = ts.KvStore.open({"driver": "file", "path": f"{database}/"}).result()
        root = ts.ocdbt.dump(kv).result()["versions"][-1]["root"]
        if "location" in root:
            visit(root["location"], b"")
    except (ValueError, OSError, KeyError):  # tensorstore's errors; what was read before still helps
        return found
    return found
