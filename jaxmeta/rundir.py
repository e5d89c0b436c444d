"""Run folders: one writer at a time, and no run replaced by accident.

``jaxmeta train --out DIR`` writes a run folder (:mod:`jaxmeta.runs`). Two things
guard it:

* :class:`RunLock`: a lock file, ``DIR/.lock``, holding the writer's process id
  and host. A second writer is refused with one line naming them. A lock left by
  a process that is gone (killed, crashed) on this host is taken over with a
  notice; a lock from another host is never taken over (its process cannot be
  checked from here): the message says which file to delete once that process is
  known to be gone.
* :func:`prepare`: a new run needs a new or empty folder. A folder holding a run
  is refused unless the run is resumed (``--resume``) or replaced
  (``--overwrite``, which deletes only the run's own files); a folder holding
  other files is never written into.

Example:
  >>> import tempfile
  >>> with tempfile.TemporaryDirectory() as folder:
  ...     with RunLock(folder):
  ...         try:
  ...             RunLock(folder).acquire()
  ...         except RunLocked as error:
  ...             print(str(error).split(" by ")[0].endswith("is in use"))
  True
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ("LOCK_FILE", "RUN_FILES", "RunLock", "RunLocked", "is_run", "prepare", "to_stderr")

LOCK_FILE = ".lock"
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints", "baseline", "result.json", "eval.json",
             "adaptation.json", "plots")
"""What ``jaxmeta train``, ``eval`` and ``plot`` write into a run folder (``--overwrite`` deletes these only)."""


class RunLocked(ValueError):
    """Another process is writing the run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def to_stderr(message: str) -> None:
    """Prints a notice line to stderr (the default ``notice`` of :class:`RunLock`)."""
    print(message, file=sys.stderr, flush=True)


class RunLock:
    """``folder/.lock`` held by this process while it writes the run (a context manager).

    Args:
      folder: the run folder (created if missing).
      notice: where the notice of a stale lock taken over goes (default: stderr).
    """

    def __init__(self, folder: str | os.PathLike, *, notice: Callable[[str], None] = to_stderr):
        self.folder, self.notice = Path(folder), notice
        self.path = self.folder / LOCK_FILE
        self._held = False

    def acquire(self) -> RunLock:
        """Takes the lock.

        Raises:
          RunLocked: a live process holds it (or a process of another host).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:  # half-written by a writer that is starting, or unreadable: try again
                    time.sleep(0.1)
                    holder = self._holder()
                if holder and holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                        and not _alive(holder["pid"]):
                    self.notice(f"{self.path}: taking over the lock of process {holder['pid']}, which is gone "
                                f"(since {holder.get('since', '?')}).")
                    self.path.unlink(missing_ok=True)
                    continue
                who = (f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('since', '?')})"
                       if holder else "another process")
                raise RunLocked(f"{self.folder} is in use by {who}; wait for it to finish, pass another --out, "
                                f"or delete {self.path} if that process is gone.") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._held = True
            return self
        raise RunLocked(f"{self.folder}: could not take {self.path}; another process keeps taking it.")

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def release(self) -> None:
        """Removes the lock file, if this process holds it."""
        if self._held:
            holder = self._holder()
            if holder is None or holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds (part of) a run: a config, metrics or checkpoints."""
    folder = Path(folder)
    return any((folder / name).exists() for name in ("config.yaml", "metrics.jsonl", "checkpoints", "baseline"))


def prepare(folder: str | os.PathLike, *, resume: bool, overwrite: bool) -> Path:
    """Checks that ``folder`` may receive a run; with ``overwrite``, deletes the run there.

    Call it holding the folder's :class:`RunLock`.

    Raises:
      ValueError: ``folder`` is a file; it holds a run and neither ``resume`` nor
        ``overwrite`` is given; it holds files that are not a run's; or both
        ``resume`` and ``overwrite`` are given.
    """
    folder = Path(folder)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite: pass one; --resume continues the run, --overwrite replaces it.")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder}: a file is there; pass a folder for the run (new or empty).")
    entries = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE) if folder.is_dir() else []
    if resume or not entries:
        return folder
    if not is_run(folder):
        raise ValueError(f"--out {folder}: the folder is not empty and holds no run ({', '.join(entries[:3])}"
                         f"{', ...' if len(entries) > 3 else ''}); pass a new or empty folder.")
    if not overwrite:
        raise ValueError(f"--out {folder} holds a run; pass --resume to continue it, --overwrite to replace it, "
                         "or another --out.")
    for name in RUN_FILES:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return folder
