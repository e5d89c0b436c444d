"""The ratings of the service's users, in one SQLite file.

One table, ``ratings (user TEXT, item, rating REAL, time REAL)``, its primary
key ``(user, item)``: a user has at most one rating of an item, and a later
rating of the same item replaces the earlier one (latest wins). The ``item``
column has no declared type, so item ids keep the type they are given (an
integer stays an integer, a text a text).

Durability: the database runs in WAL mode with ``synchronous=FULL``, and
:meth:`RatingStore.add` commits before it returns, so ratings acknowledged to a
client survive a crash of the process or of the machine.
:meth:`RatingStore.add_many` writes several users' ratings in one transaction:
one commit (one ``fsync``) for all of them, which is how the service groups the
writes that arrive together.

Reads (:meth:`~RatingStore.history`, the counts) have a connection of their own:
in WAL mode they see every committed write and never wait for a commit in
progress.

Order: a user's :meth:`~RatingStore.history` is in the order of writing. A
rating is written as a new row (SQLite's ``INSERT OR REPLACE`` deletes the row it
replaces), so a re-rated item moves to the end: the history is ordered by when
each item was last rated.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Hashable, Sequence
from pathlib import Path

__all__ = ("RatingStore",)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    user TEXT NOT NULL,
    item NOT NULL,
    rating REAL NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (user, item)
)
"""


class RatingStore:
    """Users' ratings in a SQLite file, safe to use from several threads at once.

    Two connections serve every thread, one writing and one reading, each
    behind its own lock: a read never waits for a write's ``fsync``.

    Args:
      path: the database file; created (with its folder) when absent.

    Example:
      >>> import tempfile
      >>> store = RatingStore(Path(tempfile.mkdtemp()) / "ratings.sqlite")
      >>> store.add("ann", [(10, 4.0), (11, 2.0)])
      2
      >>> store.add("ann", [(10, 5.0)])  # latest wins, and moves to the end
      2
      >>> store.history("ann"), store.history("bob"), store.count_users()
      ([(11, 2.0), (10, 5.0)], [], 1)
      >>> store.add_many([("bob", [(10, 1.0)]), ("ann", [(12, 3.0)])])  # one commit
      [1, 3]
      >>> store.close()
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"{self.path} is a folder: pass the path of a database file, e.g. {self.path}/service.sqlite.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the writing connection's
        self._read_lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.DatabaseError as err:
            raise ValueError(f"{self.path} is not a usable SQLite database ({err}): pass a new file or the one "
                             "the service wrote.") from None

    def add(self, user: str, ratings: Sequence[tuple[Hashable, float]]) -> int:
        """Writes ``user``'s ``(item, rating)`` pairs in one transaction, committed when it returns.

        A pair whose item the user has rated replaces that rating (latest
        wins, pairs of one call in order).

        Returns:
          How many items the user has rated now.
        """
        return self.add_many([(user, ratings)])[0]

    def add_many(self, writes: Sequence[tuple[str, Sequence[tuple[Hashable, float]]]]) -> list[int]:
        """Every ``(user, ratings)`` of ``writes``, in order, as :meth:`add` writes one, in ONE transaction:
        all are committed when it returns, or none (it raises).

        Returns:
          For each write, how many items its user had rated once it was written.
        """
        now = time.time()
        totals = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for user, ratings in writes:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO ratings (user, item, rating, time) VALUES (?, ?, ?, ?)",
                        [(user, item, float(rating), now) for item, rating in ratings])
                    totals.append(int(self._db.execute("SELECT COUNT(*) FROM ratings WHERE user = ?",
                                                       (user,)).fetchone()[0]))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT leaves it open: every later BEGIN would fail
                    self._db.execute("ROLLBACK")
                raise
        return totals

    def history(self, user: str) -> list[tuple[Hashable, float]]:
        """``user``'s ``(item, rating)`` pairs, oldest write first; empty for a user never seen."""
        with self._read_lock:
            rows = self._reader.execute("SELECT item, rating FROM ratings WHERE user = ? ORDER BY rowid",
                                        (user,)).fetchall()
        return [(item, float(rating)) for item, rating in rows]

    def count(self, user: str) -> int:
        """How many items ``user`` has rated."""
        with self._read_lock:
            return int(self._reader.execute("SELECT COUNT(*) FROM ratings WHERE user = ?", (user,)).fetchone()[0])

    def count_users(self) -> int:
        """How many users have rated something."""
        with self._read_lock:
            return int(self._reader.execute("SELECT COUNT(DISTINCT user) FROM ratings").fetchone()[0])

    def close(self) -> None:
        """Closes the connections (every write is committed already)."""
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()
