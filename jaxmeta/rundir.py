"""Run folders: one writer at a time, and no run replaced by accident.

``jaxmeta train --out DIR`` writes a run folder (:mod:`jaxmeta.runs`). Two things
guard it:

* :class:`RunLock`: an exclusive ``flock`` on ``DIR/.lock``, a file holding the
  writer's process id and host. A second writer is refused with one line naming
  them. The system drops the lock when its process ends, however it ends, so a
  lock file left by a process that is gone is taken over (with a notice). A file
  naming a live process of this host is refused even without the system lock (a
  writer of an older jaxmeta), and one naming another host is never taken over
  (its process cannot be checked from here): the message says which file to
  delete once that process is gone. The lock is POSIX ``flock`` (Linux, macOS);
  across hosts it holds only where the shared file system carries such locks.
* :func:`prepare`: a new run needs a new or empty folder. A folder holding a run
  is refused unless the run is resumed (``--resume``) or replaced
  (``--overwrite``: only a folder whose ``config.yaml`` is a jaxmeta run's, and
  only the run's own files, :func:`clear`, once the new run's settings are
  checked); a folder holding other files and no run is never written into.

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

import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ("LOCK_FILE", "RUN_FILES", "RunLock", "RunLocked", "clear", "is_run", "prepare", "to_stderr")

LOCK_FILE = ".lock"
CONFIG = "config.yaml"
RUN_FILES = (CONFIG, "metrics.jsonl", "checkpoints", "baseline", "result.json", "eval.json",
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
        self._held, self._fd = False, -1

    def acquire(self) -> RunLock:
        """Takes the lock: an exclusive ``flock`` on the lock file, which the system drops when the process
        ends however it ends, so a lock is never held by a process that is gone and two takers cannot both
        win. The file names the holder, for the message a second writer gets.

        Raises:
          RunLocked: a live process holds it (or the file names a process of another host).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                if self._take(fd, me):
                    self._fd, self._held = fd, True
                    return self
            except BaseException:  # refused, or a failed write: the descriptor, and with it the lock, goes
                os.close(fd)
                raise
            os.close(fd)  # its last holder removed the file between our open and our lock: again
        raise RunLocked(f"{self.folder}: could not take {self.path}; another process keeps taking it.")

    def _take(self, fd: int, me: dict) -> bool:
        """Locks ``fd`` and writes ``me`` into it; False when the file was removed meanwhile.

        Raises:
          RunLocked: held by a live process.
        """
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # the system's lock: its process is alive
            raise RunLocked(f"{self.folder} is in use by {self._who()}; wait for it to finish, or pass another "
                            "--out.") from None
        if not self._is_file(fd):
            return False
        holder = self._holder()
        other = isinstance(holder.get("pid"), int) and holder["pid"] != me["pid"] if holder else False
        if holder and (holder.get("host") not in (None, me["host"])  # a host this one cannot see
                       or other and _alive(holder["pid"])):  # a live writer without the system lock (older)
            raise RunLocked(f"{self.folder} is in use by {self._who()}; wait for it to finish, pass another "
                            f"--out, or delete {self.path} if that process is gone.")
        if other:
            self.notice(f"{self.path}: taking over the lock of process {holder['pid']}, which is gone "
                        f"(since {holder.get('since', '?')}).")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode())
        return True

    def _is_file(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at :attr:`path` (not one unlinked since it was opened)."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)

    def _who(self) -> str:
        holder = self._holder()
        return (f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('since', '?')})"
                if holder else "another process")

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def release(self) -> None:
        """Removes the lock file and drops the lock, if this process holds it."""
        if self._held:
            if self._is_file(self._fd):
                self.path.unlink(missing_ok=True)
            os.close(self._fd)  # drops the flock
            self._held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds (part of) a run: a config, metrics or checkpoints."""
    folder = Path(folder)
    return any((folder / name).exists() for name in (CONFIG, "metrics.jsonl", "checkpoints", "baseline"))


def prepare(folder: str | os.PathLike, *, resume: bool, overwrite: bool) -> bool:
    """Checks that ``folder`` may receive a run; deletes nothing.

    Call it holding the folder's :class:`RunLock`; with ``overwrite``, call
    :func:`clear` once the new run's settings have been checked, so that a run
    that cannot start leaves the old one in place.

    Returns:
      Whether a run is there to be replaced (``overwrite``, and the folder holds one).

    Raises:
      ValueError: ``folder`` is a file; it holds a run and neither ``resume`` nor
        ``overwrite`` is given; it holds files that are not a run's; both
        ``resume`` and ``overwrite`` are given; or, with ``overwrite``, its
        ``config.yaml`` is not a jaxmeta run's.
    """
    folder = Path(folder)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite: pass one; --resume continues the run, --overwrite replaces it.")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder}: a file is there; pass a folder for the run (new or empty).")
    entries = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE) if folder.is_dir() else []
    if resume or not entries:
        return False
    if not is_run(folder):
        raise ValueError(f"--out {folder}: the folder is not empty and holds no run ({', '.join(entries[:3])}"
                         f"{', ...' if len(entries) > 3 else ''}); pass a new or empty folder.")
    if not overwrite:
        raise ValueError(f"--out {folder} holds a run; pass --resume to continue it, --overwrite to replace it, "
                         "or another --out.")
    # the run's own settings: a config.yaml of another tool is not one (imported here: rundir stays light)
    from jaxmeta.job import read_config

    try:
        read_config(folder)
    except ValueError as error:  # CheckpointError: missing or not a jaxmeta run's
        raise ValueError(f"--out {folder}: --overwrite replaces a jaxmeta run, and this folder's {CONFIG} is not "
                         f"one that can be read ({error}); delete the folder yourself, or pass another --out.") from None
    return True


def clear(folder: str | os.PathLike) -> None:
    """Deletes the run files (:data:`RUN_FILES`) in ``folder``: what ``--overwrite`` replaces.
    ``config.yaml`` goes last, so that a folder cleared in part still reads as a run to replace."""
    for name in sorted(RUN_FILES, key=lambda name: name == CONFIG):
        path = Path(folder) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
