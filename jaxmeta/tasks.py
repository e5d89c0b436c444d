"""Batches of user tasks: the padded, masked arrays every algorithm consumes.

A *task* is one user: a support set (the ratings the model adapts on) and a query
set (the ratings it is judged on). Users have different numbers of ratings, so a
batch pads every user to a common support and query size and carries boolean
masks; a batch may also carry whole padding users (all rows masked) so that its
shape, and hence the compiled step, stays the same from batch to batch.

Masking contract (every loss, gradient and metric in jaxmeta honours it):

* a row whose mask is ``False`` contributes nothing: losses are masked means
  over real rows only (see :func:`jaxmeta.losses.masked_mean`);
* a task counts in a meta-batch average iff it has at least one real query row
  (:func:`task_mask`); padding users therefore leave means and gradients as they
  are.

Host-side helpers build batches from ragged per-user numpy arrays
(:class:`RaggedTasks`), bucket users by support size so that padding stays small
(:func:`bucket_by_support`), and report the padded fraction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

PyTree = Any


class TaskBatch(NamedTuple):
    """A batch of user tasks, padded to fixed sizes and masked.

    ``*_x`` may be an array or any pytree of arrays (e.g. a dict of id and dense
    fields); every leaf has the leading axes ``[tasks, rows]``.
    """

    support_x: PyTree  # leaves [tasks, support, ...]
    support_y: jax.Array  # float32 [tasks, support]
    support_mask: jax.Array  # bool [tasks, support]; False marks a padded row
    query_x: PyTree  # leaves [tasks, query, ...]
    query_y: jax.Array  # float32 [tasks, query]
    query_mask: jax.Array  # bool [tasks, query]; False marks a padded row

    @property
    def num_tasks(self) -> int:
        return self.support_y.shape[0]

    @property
    def support_size(self) -> int:
        return self.support_y.shape[1]

    @property
    def query_size(self) -> int:
        return self.query_y.shape[1]


def task_mask(batch: TaskBatch) -> jax.Array:
    """Which tasks of a batch are real users: those with at least one query row.

    Works on host (numpy) and device (jax) batches alike.

    Returns:
      bool ``[tasks]``.
    """
    return batch.query_mask.any(axis=-1)


def padded_fraction(batches: TaskBatch | Iterable[TaskBatch]) -> float:
    """Fraction of the rows of one or many batches that are padding.

    Counts support and query rows of every task slot, padding users included,
    i.e. the share of the work spent on nothing.

    Example:
      >>> import numpy as np
      >>> tasks = RaggedTasks(
      ...     support_x=[np.zeros((2, 1), np.int32), np.zeros((4, 1), np.int32)],
      ...     support_y=[np.ones(2), np.ones(4)],
      ...     query_x=[np.zeros((1, 1), np.int32), np.zeros((1, 1), np.int32)],
      ...     query_y=[np.ones(1), np.ones(1)])
      >>> round(padded_fraction(pad_tasks(tasks)), 6)  # 2 of 10 rows are padding
      0.2
    """
    if isinstance(batches, TaskBatch):
        batches = [batches]
    real = total = 0
    for batch in batches:
        for mask in (batch.support_mask, batch.query_mask):
            real += int(np.asarray(mask).sum())
            total += int(np.asarray(mask).size)
    if total == 0:
        raise ValueError("padded_fraction got no rows: pass at least one non-empty TaskBatch.")
    return (total - real) / total


@dataclasses.dataclass(frozen=True)
class RaggedTasks:
    """Per-user support and query sets of varying length, on the host (numpy).

    Element ``i`` of each list belongs to user ``i``. ``support_x[i]`` is an array
    (or pytree of arrays) whose leaves have ``len(support_y[i])`` rows.
    """

    support_x: Sequence[PyTree]
    support_y: Sequence[np.ndarray]
    query_x: Sequence[PyTree]
    query_y: Sequence[np.ndarray]

    def __post_init__(self):
        n = len(self.support_y)
        for name in ("support_x", "query_x", "query_y"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"RaggedTasks.{name} has {len(getattr(self, name))} users but support_y "
                    f"has {n}: pass one entry per user in every field."
                )
        for i in range(n):
            for part in ("support", "query"):
                rows = len(getattr(self, f"{part}_y")[i])
                for leaf in jax.tree.leaves(getattr(self, f"{part}_x")[i]):
                    if np.ndim(leaf) == 0:
                        raise ValueError(
                            f"user {i}: {part}_x has a scalar leaf; pass arrays with one row per "
                            "rating (shape [rows, ...])."
                        )
                    if np.shape(leaf)[0] != rows:
                        raise ValueError(
                            f"user {i}: {part}_x has {np.shape(leaf)[0]} rows but {part}_y has "
                            f"{rows}: inputs and targets must have one row per rating."
                        )

    def __len__(self) -> int:
        return len(self.support_y)

    @property
    def support_sizes(self) -> np.ndarray:
        """int ``[users]``: number of support rows of each user."""
        return np.array([len(y) for y in self.support_y], dtype=np.int64)

    @property
    def query_sizes(self) -> np.ndarray:
        """int ``[users]``: number of query rows of each user."""
        return np.array([len(y) for y in self.query_y], dtype=np.int64)

    def take(self, indices: Sequence[int] | np.ndarray) -> RaggedTasks:
        """The users at ``indices``, in that order."""
        pick = lambda seq: [seq[int(i)] for i in indices]  # noqa: E731
        return RaggedTasks(
            pick(self.support_x), pick(self.support_y), pick(self.query_x), pick(self.query_y)
        )



def resplit(tasks: RaggedTasks, rng: np.random.Generator | int | None = None) -> RaggedTasks:
    """Each user's rows dealt afresh between support and query, sizes kept.

    Meta-augmentation for training: a user seen again in a later epoch is
    judged on different held-back ratings, so the meta-learner cannot lower
    its query loss by memorising fixed query rows (the memorisation problem of
    meta-learning, Yin et al., ICLR 2020), and every rating serves in both
    roles. Support and query sizes stay as they were, so the support-size
    buckets of :func:`bucket_by_support` remain valid. For training only:
    evaluation keeps its fixed split.

    Args:
      tasks: the users; each keeps ``len(support_y[i])`` support rows and
        ``len(query_y[i])`` query rows.
      rng: a numpy Generator or a seed.

    Example:
      >>> t = RaggedTasks([np.arange(3.0)], [np.arange(3.0)], [np.arange(3.0, 5.0)], [np.arange(3.0, 5.0)])
      >>> r = resplit(t, rng=0)
      >>> len(r.support_y[0]), len(r.query_y[0]), np.sort(np.concatenate([r.support_y[0], r.query_y[0]])).tolist()
      (3, 2, [0.0, 1.0, 2.0, 3.0, 4.0])
    """
    rng = np.random.default_rng(rng)
    support_x, support_y, query_x, query_y = [], [], [], []
    for sx, sy, qx, qy in zip(tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y):
        n = len(sy)
        x = jax.tree.map(lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)]), sx, qx)
        y = np.concatenate([np.asarray(sy), np.asarray(qy)])
        order = rng.permutation(len(y))
        first, rest = order[:n], order[n:]
        support_x.append(jax.tree.map(lambda a, rows=first: a[rows], x))
        query_x.append(jax.tree.map(lambda a, rows=rest: a[rows], x))
        support_y.append(y[first])
        query_y.append(y[rest])
    return RaggedTasks(support_x, support_y, query_x, query_y)

def _pad_rows(parts: Sequence[PyTree], size: int, num_tasks: int) -> PyTree:
    """Stacks per-user pytrees of ``[rows, ...]`` leaves into ``[num_tasks, size, ...]``."""

    def stack(*leaves):
        first = np.asarray(leaves[0])
        out = np.zeros((num_tasks, size) + first.shape[1:], dtype=first.dtype)
        for i, leaf in enumerate(leaves):
            out[i, : len(leaf)] = leaf
        return out

    return jax.tree.map(stack, *parts)


def pad_tasks(
    tasks: RaggedTasks,
    *,
    support_size: int | None = None,
    query_size: int | None = None,
    num_tasks: int | None = None,
    dtype: np.dtype = np.float32,
) -> TaskBatch:
    """Pads ragged users into one :class:`TaskBatch` (numpy arrays).

    Args:
      tasks: the users to batch.
      support_size: padded support length; defaults to the longest support set.
      query_size: padded query length; defaults to the longest query set.
      num_tasks: padded number of tasks; extra task slots are all-masked padding
        users. Defaults to ``len(tasks)``. Fix it (with the sizes) to give every
        batch the same shape, so the compiled step is reused.
      dtype: dtype of the targets.

    Returns:
      A TaskBatch whose padded rows hold zeros and have mask ``False``.

    Raises:
      ValueError: a user has more rows than the requested size, or there are more
        users than ``num_tasks``.
    """
    n = len(tasks)
    if n == 0:
        raise ValueError("pad_tasks got no users: pass a RaggedTasks with at least one user.")
    num_tasks = n if num_tasks is None else num_tasks
    if num_tasks < n:
        raise ValueError(f"num_tasks={num_tasks} is smaller than the {n} users given: pass num_tasks >= {n}.")
    fields = {}
    for part, size in (("support", support_size), ("query", query_size)):
        sizes = [len(y) for y in getattr(tasks, f"{part}_y")]
        size = max(sizes) if size is None else size
        if max(sizes) > size:
            worst = int(np.argmax(sizes))
            raise ValueError(
                f"user {worst} has {sizes[worst]} {part} rows but {part}_size={size}: pass "
                f"{part}_size >= {max(sizes)}, or bucket users with bucket_by_support."
            )
        mask = np.zeros((num_tasks, size), dtype=bool)
        for i, k in enumerate(sizes):
            mask[i, :k] = True
        fields[f"{part}_x"] = _pad_rows(getattr(tasks, f"{part}_x"), size, num_tasks)
        fields[f"{part}_y"] = _pad_rows(
            [np.asarray(y, dtype=dtype) for y in getattr(tasks, f"{part}_y")], size, num_tasks
        )
        fields[f"{part}_mask"] = mask
    return TaskBatch(**fields)


class Buckets(NamedTuple):
    """Users grouped by support size; each group is padded to its own size."""

    indices: tuple[np.ndarray, ...]  # int [users in bucket], per bucket
    support_sizes: tuple[int, ...]  # padded support size of each bucket (its longest user)


def bucket_by_support(support_sizes: Sequence[int] | np.ndarray, num_buckets: int) -> Buckets:
    """Splits users into at most ``num_buckets`` groups of similar support size.

    The split points are chosen by dynamic programming over the distinct sizes to
    minimise the total number of padded support rows (each user padded to the
    largest size of its bucket); this is exact, and cheap because there are few
    distinct sizes.

    Args:
      support_sizes: int ``[users]``, e.g. ``RaggedTasks.support_sizes``.
      num_buckets: the most buckets to use (each is one compiled shape).

    Returns:
      Buckets, ordered by increasing support size.

    Example:
      >>> b = bucket_by_support([3, 3, 4, 10, 11], num_buckets=2)
      >>> b.support_sizes, [i.tolist() for i in b.indices]
      ((4, 11), [[0, 1, 2], [3, 4]])
    """
    sizes = np.asarray(support_sizes, dtype=np.int64)
    if sizes.ndim != 1 or sizes.size == 0:
        raise ValueError(f"support_sizes must be a non-empty 1-D sequence of ints, got shape {sizes.shape}.")
    if num_buckets < 1:
        raise ValueError(f"num_buckets={num_buckets}: pass a positive number of buckets.")
    values, counts = np.unique(sizes, return_counts=True)
    m = len(values)
    k = min(num_buckets, m)
    cum_count = np.concatenate([[0], np.cumsum(counts)])
    cum_rows = np.concatenate([[0], np.cumsum(values * counts)])

    def waste(i, j: int):  # padded rows when distinct sizes i..j share a bucket of size values[j]
        return values[j] * (cum_count[j + 1] - cum_count[i]) - (cum_rows[j + 1] - cum_rows[i])

    inf = np.iinfo(np.int64).max // 2
    cost = np.full((k + 1, m), inf, dtype=np.int64)  # cost[b, j]: sizes 0..j in b buckets
    split = np.zeros((k + 1, m), dtype=np.int64)  # first distinct size of the last bucket
    cost[1] = [waste(0, j) for j in range(m)]
    for b in range(2, k + 1):
        for j in range(1, m):
            starts = np.arange(1, j + 1)  # the last bucket holds distinct sizes i..j
            total = cost[b - 1, starts - 1] + waste(starts, j)
            best = int(np.argmin(total))
            cost[b, j], split[b, j] = total[best], starts[best]
    best_b = int(np.argmin(cost[1:, m - 1])) + 1
    ends, j, b = [], m - 1, best_b
    while b >= 1:
        ends.append(j)
        i = split[b, j] if b > 1 else 0
        j, b = i - 1, b - 1
    ends.reverse()
    indices, padded, lo = [], [], -np.inf
    for end in ends:
        hi = values[end]
        indices.append(np.flatnonzero((sizes > lo) & (sizes <= hi)))
        padded.append(int(hi))
        lo = hi
    return Buckets(tuple(indices), tuple(padded))


def epoch_plan(
    support_sizes: Sequence[int] | np.ndarray,
    batch_size: int,
    *,
    rng: np.random.Generator,
    buckets: Buckets | None = None,
    spill: bool = False,
) -> list[tuple[np.ndarray, int]]:
    """The batches of one shuffled pass, as ``(user indices, padded support size)``.

    Users are shuffled within each bucket; batches are drawn bucket by bucket in
    a shuffled order. :func:`epoch_batches` pads them; a resumable stream
    (:class:`jaxmeta.train.BatchStream`) replans an epoch from a saved generator
    state without padding the batches it skips.

    With ``spill``, the users of all buckets form one sequence (bucket after
    bucket, by increasing support size) cut into batches, so that the last
    users of a bucket share a batch with the first users of the next instead
    of padding users: such a batch is padded to the larger bucket's size (no
    new compiled shape), and only the last batch of the pass is partial. It
    wastes fewer rows when buckets hold few batches each.

    Example:
      >>> plan = epoch_plan([3, 3, 9], 2, rng=np.random.default_rng(0))
      >>> sorted(int(i) for idx, _ in plan for i in idx), {size for _, size in plan}
      ([0, 1, 2], {9})
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: pass a positive number of users per batch.")
    if buckets is None:
        buckets = bucket_by_support(support_sizes, num_buckets=1)
    chunks = []
    if spill:
        order = np.concatenate([rng.permutation(idx) for idx in buckets.indices])
        sizes = np.concatenate([np.full(len(idx), size) for idx, size in zip(buckets.indices, buckets.support_sizes)])
        chunks = [(order[s : s + batch_size], int(sizes[s : s + batch_size].max()))
                  for s in range(0, len(order), batch_size)]
    else:
        for idx, size in zip(buckets.indices, buckets.support_sizes):
            idx = rng.permutation(idx)
            chunks += [(idx[s : s + batch_size], size) for s in range(0, len(idx), batch_size)]
    return [chunks[c] for c in rng.permutation(len(chunks))]


def epoch_batches(
    tasks: RaggedTasks,
    batch_size: int,
    *,
    rng: np.random.Generator,
    buckets: Buckets | None = None,
    query_size: int | None = None,
) -> Iterator[TaskBatch]:
    """One shuffled pass over all users, as fixed-shape TaskBatches.

    Users are shuffled within each bucket; batches are drawn bucket by bucket in a
    shuffled order (:func:`epoch_plan`). Every batch has exactly ``batch_size``
    task slots (the last batch of a bucket is filled with padding users), so there
    is one compiled shape per bucket.

    Args:
      tasks: the users.
      batch_size: task slots per batch.
      rng: numpy random generator, the only source of randomness.
      buckets: from :func:`bucket_by_support`; default one bucket padded to the
        longest support set.
      query_size: padded query size; default the longest query set.
    """
    query_size = int(tasks.query_sizes.max()) if query_size is None else query_size
    plan = epoch_plan(tasks.support_sizes, batch_size, rng=rng, buckets=buckets)
    for idx, size in plan:
        yield pad_tasks(tasks.take(idx), support_size=size, query_size=query_size, num_tasks=batch_size)
