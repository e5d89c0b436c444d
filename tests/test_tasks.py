"""Task batching on the host: padding and masks, ragged-user validation, the padded
fraction, optimal bucketing (against brute force) and epoch iteration."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmeta.tasks import (
    RaggedTasks,
    TaskBatch,
    bucket_by_support,
    epoch_batches,
    epoch_plan,
    pad_tasks,
    padded_fraction,
    resplit,
    task_mask,
)

SUPPORT_SIZES = (2, 4, 1)
QUERY_SIZES = (1, 3, 2)


def labelled_rows(user: int, part: int, n: int):
    """Rows whose every entry encodes (user, part, row), so misplaced data shows."""
    rows = np.arange(n)
    x = np.stack([1000 * (user + 1) + 100 * part + rows, -(user + 1) * np.ones(n, int)], axis=1)
    y = (user + 1) + 0.01 * (rows + 1) + 0.5 * part
    return x.astype(np.int32), y.astype(np.float64)


def make_tasks(support_sizes=SUPPORT_SIZES, query_sizes=QUERY_SIZES) -> RaggedTasks:
    sx, sy, qx, qy = [], [], [], []
    for u, (ns, nq) in enumerate(zip(support_sizes, query_sizes)):
        x, y = labelled_rows(u, 0, ns)
        sx.append(x), sy.append(y)
        x, y = labelled_rows(u, 1, nq)
        qx.append(x), qy.append(y)
    return RaggedTasks(sx, sy, qx, qy)


def expected_mask(sizes, num_tasks, size):
    mask = np.zeros((num_tasks, size), bool)
    for i, n in enumerate(sizes):
        mask[i, :n] = True
    return mask


# --------------------------------------------------------------------------- pad_tasks


def test_pad_tasks_default_sizes_shapes_dtypes_and_masks():
    tasks = make_tasks()
    batch = pad_tasks(tasks)
    assert (batch.num_tasks, batch.support_size, batch.query_size) == (3, 4, 3)
    assert batch.support_x.shape == (3, 4, 2) and batch.support_x.dtype == np.int32
    assert batch.query_x.shape == (3, 3, 2) and batch.query_x.dtype == np.int32
    assert batch.support_y.shape == (3, 4) and batch.support_y.dtype == np.float32
    assert batch.query_y.shape == (3, 3) and batch.query_y.dtype == np.float32
    assert batch.support_mask.dtype == np.bool_ and batch.query_mask.dtype == np.bool_
    np.testing.assert_array_equal(
        batch.support_mask,
        [[True, True, False, False], [True, True, True, True], [True, False, False, False]],
    )
    np.testing.assert_array_equal(
        batch.query_mask, [[True, False, False], [True, True, True], [True, True, False]]
    )


def test_pad_tasks_copies_real_rows_and_zero_fills_padding():
    tasks = make_tasks()
    batch = pad_tasks(tasks, support_size=5, query_size=4)
    for part, sizes in (("support", SUPPORT_SIZES), ("query", QUERY_SIZES)):
        x, y = getattr(batch, f"{part}_x"), getattr(batch, f"{part}_y")
        for u, n in enumerate(sizes):
            np.testing.assert_array_equal(x[u, :n], getattr(tasks, f"{part}_x")[u])
            np.testing.assert_array_equal(y[u, :n], getattr(tasks, f"{part}_y")[u].astype(np.float32))
            assert not x[u, n:].any() and not y[u, n:].any()


def test_pad_tasks_target_dtype():
    batch = pad_tasks(make_tasks(), dtype=np.float64)
    assert batch.support_y.dtype == np.float64 and batch.query_y.dtype == np.float64
    np.testing.assert_array_equal(batch.support_y[1], labelled_rows(1, 0, 4)[1])  # no float32 rounding
    assert batch.support_x.dtype == np.int32  # inputs keep their own dtype


def test_pad_tasks_padding_users_are_all_masked_zeros():
    tasks = make_tasks()
    batch = pad_tasks(tasks, support_size=6, query_size=3, num_tasks=5)
    assert (batch.num_tasks, batch.support_size, batch.query_size) == (5, 6, 3)
    np.testing.assert_array_equal(batch.support_mask, expected_mask(SUPPORT_SIZES, 5, 6))
    np.testing.assert_array_equal(batch.query_mask, expected_mask(QUERY_SIZES, 5, 3))
    for field in batch:
        assert not np.asarray(field)[3:].any(), "padding users must hold zeros"
    np.testing.assert_array_equal(task_mask(batch), [True, True, True, False, False])


def test_pad_tasks_pytree_inputs():
    rng = np.random.default_rng(0)

    def rows(n):
        return {"ids": rng.integers(1, 9, size=(n, 2)).astype(np.int32),
                "dense": rng.normal(size=(n, 3)).astype(np.float32)}, rng.normal(size=n)

    users = [rows(n) + rows(m) for n, m in zip(SUPPORT_SIZES, QUERY_SIZES)]
    tasks = RaggedTasks(*(list(f) for f in zip(*users)))
    batch = pad_tasks(tasks, num_tasks=4)
    assert set(batch.support_x) == {"ids", "dense"}
    assert batch.support_x["ids"].shape == (4, 4, 2) and batch.support_x["ids"].dtype == np.int32
    assert batch.support_x["dense"].shape == (4, 4, 3) and batch.support_x["dense"].dtype == np.float32
    assert batch.query_x["dense"].shape == (4, 3, 3)
    for part, sizes in (("support", SUPPORT_SIZES), ("query", QUERY_SIZES)):
        padded = getattr(batch, f"{part}_x")
        for key in ("ids", "dense"):
            for u, n in enumerate(sizes):
                np.testing.assert_array_equal(padded[key][u, :n], getattr(tasks, f"{part}_x")[u][key])
                assert not padded[key][u, n:].any()
            assert not padded[key][3].any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(support_size=3), r"user 1 has 4 support rows but support_size=3.*support_size >= 4"),
        (dict(query_size=2), r"user 1 has 3 query rows but query_size=2.*query_size >= 3"),
        (dict(num_tasks=2), r"num_tasks=2 is smaller than the 3 users.*num_tasks >= 3"),
    ],
)
def test_pad_tasks_rejects_too_small_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pad_tasks(make_tasks(), **kwargs)


def test_pad_tasks_rejects_no_users():
    with pytest.raises(ValueError, match="no users"):
        pad_tasks(RaggedTasks([], [], [], []))


def test_task_mask_counts_users_with_a_query_row():
    tasks = make_tasks(support_sizes=(2, 3, 1), query_sizes=(1, 0, 2))
    batch = pad_tasks(tasks, num_tasks=4)
    np.testing.assert_array_equal(task_mask(batch), [True, False, True, False])
    device = TaskBatch(*(jnp.asarray(f) for f in batch))
    np.testing.assert_array_equal(np.asarray(task_mask(device)), [True, False, True, False])


# --------------------------------------------------------------------------- RaggedTasks


def test_ragged_tasks_sizes_len_and_take():
    tasks = make_tasks()
    assert len(tasks) == 3
    np.testing.assert_array_equal(tasks.support_sizes, SUPPORT_SIZES)
    np.testing.assert_array_equal(tasks.query_sizes, QUERY_SIZES)
    picked = tasks.take(np.array([2, 0, 2]))
    assert len(picked) == 3
    np.testing.assert_array_equal(picked.support_sizes, [1, 2, 1])
    np.testing.assert_array_equal(picked.query_sizes, [2, 1, 2])
    for new, old in enumerate([2, 0, 2]):
        for field in ("support_x", "support_y", "query_x", "query_y"):
            np.testing.assert_array_equal(getattr(picked, field)[new], getattr(tasks, field)[old])


@pytest.mark.parametrize("field", ["support_x", "query_x", "query_y"])
def test_ragged_tasks_rejects_mismatched_user_counts(field):
    tasks = make_tasks()
    fields = dict(support_x=tasks.support_x, support_y=tasks.support_y, query_x=tasks.query_x, query_y=tasks.query_y)
    fields[field] = fields[field][:2]
    with pytest.raises(ValueError, match=rf"RaggedTasks.{field} has 2 users but support_y has 3"):
        RaggedTasks(**fields)


def test_ragged_tasks_rejects_rows_mismatch():
    tasks = make_tasks()
    support_x = list(tasks.support_x)
    support_x[1] = support_x[1][:3]
    with pytest.raises(ValueError, match="user 1: support_x has 3 rows but support_y has 4"):
        RaggedTasks(support_x, tasks.support_y, tasks.query_x, tasks.query_y)
    query_x = [{"ids": x, "dense": np.zeros((len(x), 2))} for x in tasks.query_x]
    query_x[2] = {"ids": query_x[2]["ids"], "dense": np.zeros((5, 2))}  # one bad leaf of a pytree
    with pytest.raises(ValueError, match="user 2: query_x has 5 rows but query_y has 2"):
        RaggedTasks(tasks.support_x, tasks.support_y, query_x, tasks.query_y)


def test_ragged_tasks_rejects_a_leaf_without_rows():
    with pytest.raises(ValueError, match="user 0: support_x"):
        RaggedTasks([np.int32(3)], [np.ones(1)], [np.zeros((1, 2), np.int32)], [np.ones(1)])


# --------------------------------------------------------------------------- padded_fraction


def test_padded_fraction_hand_values():
    tasks = make_tasks()  # 7 support + 6 query real rows
    tight = pad_tasks(tasks)  # 3 * 4 + 3 * 3 = 21 slots
    loose = pad_tasks(tasks, support_size=6, query_size=3, num_tasks=5)  # 5 * 6 + 5 * 3 = 45 slots
    assert padded_fraction(tight) == pytest.approx(8 / 21)
    assert padded_fraction(loose) == pytest.approx(32 / 45)
    assert padded_fraction([tight, loose]) == pytest.approx(40 / 66)
    assert padded_fraction(b for b in (tight, loose)) == pytest.approx(40 / 66)
    full = pad_tasks(make_tasks(support_sizes=(2, 2), query_sizes=(1, 1)))
    assert padded_fraction(full) == 0.0


def test_padded_fraction_rejects_no_batches():
    with pytest.raises(ValueError, match="no rows"):
        padded_fraction([])


# --------------------------------------------------------------------------- bucket_by_support


def brute_force_waste(sizes, k: int) -> int:
    """Least padded rows over every split of the sorted distinct sizes into <= k contiguous groups."""
    sizes = np.asarray(sizes)
    values = np.unique(sizes)
    best = None
    for cuts in range(min(k, len(values))):
        for points in itertools.combinations(range(1, len(values)), cuts):
            bounds = (0, *points, len(values))
            waste = 0
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                group = sizes[(sizes >= values[lo]) & (sizes <= values[hi - 1])]
                waste += int(np.sum(values[hi - 1] - group))
            best = waste if best is None else min(best, waste)
    return best


def check_buckets(sizes, k, buckets):
    sizes = np.asarray(sizes)
    assert 1 <= len(buckets.indices) <= k
    assert len(buckets.indices) == len(buckets.support_sizes)
    everyone = np.concatenate(buckets.indices)
    np.testing.assert_array_equal(np.sort(everyone), np.arange(len(sizes)))  # each user exactly once
    for idx, padded in zip(buckets.indices, buckets.support_sizes):
        assert len(idx) > 0 and padded == sizes[idx].max()
    assert list(buckets.support_sizes) == sorted(set(buckets.support_sizes))  # strictly increasing
    for (lo_idx, _), (hi_idx, _) in itertools.pairwise(zip(buckets.indices, buckets.support_sizes)):
        assert sizes[lo_idx].max() < sizes[hi_idx].min()


def bucket_waste(sizes, buckets) -> int:
    sizes = np.asarray(sizes)
    return sum(int(np.sum(p - sizes[idx])) for idx, p in zip(buckets.indices, buckets.support_sizes))


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(1, 20), min_size=1, max_size=12), k=st.integers(1, 4))
def test_bucket_by_support_is_optimal(sizes, k):
    buckets = bucket_by_support(sizes, num_buckets=k)
    check_buckets(sizes, k, buckets)
    assert bucket_waste(sizes, buckets) == brute_force_waste(sizes, k)


@pytest.mark.parametrize(
    "sizes, k, padded, indices",
    [
        ([1, 1, 1, 1, 10], 2, (1, 10), [[0, 1, 2, 3], [4]]),
        ([5, 2, 5, 2], 1, (5,), [[0, 1, 2, 3]]),
        ([4, 1, 3, 2], 9, (1, 2, 3, 4), [[1], [3], [2], [0]]),  # more buckets than sizes
        ([7], 3, (7,), [[0]]),
        ([2, 3, 9, 10, 10], 2, (3, 10), [[0, 1], [2, 3, 4]]),
    ],
)
def test_bucket_by_support_hand_cases(sizes, k, padded, indices):
    buckets = bucket_by_support(np.array(sizes), num_buckets=k)
    assert buckets.support_sizes == padded
    assert [list(i) for i in buckets.indices] == indices


@pytest.mark.parametrize(
    "sizes, k, message",
    [
        ([], 2, r"non-empty 1-D.*shape \(0,\)"),
        ([[1, 2], [3, 4]], 2, r"non-empty 1-D.*shape \(2, 2\)"),
        ([1, 2], 0, "num_buckets=0"),
        ([1, 2], -1, "num_buckets=-1"),
    ],
)
def test_bucket_by_support_rejects_bad_input(sizes, k, message):
    with pytest.raises(ValueError, match=message):
        bucket_by_support(sizes, num_buckets=k)


# --------------------------------------------------------------------------- epoch_batches


def epoch_tasks(num_users=13, seed=0) -> RaggedTasks:
    """Users with 1..8 support rows whose every target is ``user + 1`` (0 is padding)."""
    rng = np.random.default_rng(seed)
    sx, sy, qx, qy = [], [], [], []
    for u in range(num_users):
        ns, nq = int(rng.integers(1, 9)), int(rng.integers(1, 4))
        sx.append(np.full((ns, 2), u, np.int32)), sy.append(np.full(ns, u + 1.0))
        qx.append(np.full((nq, 2), u, np.int32)), qy.append(np.full(nq, u + 1.0))
    return RaggedTasks(sx, sy, qx, qy)


def users_in(batch: TaskBatch) -> list[int]:
    real = np.asarray(task_mask(batch))
    return [int(batch.query_y[t, 0]) - 1 for t in np.flatnonzero(real)]


@pytest.mark.parametrize("num_buckets", [None, 1, 3])
@pytest.mark.parametrize("batch_size", [1, 4, 5])
def test_epoch_batches_visits_every_user_once(num_buckets, batch_size):
    tasks = epoch_tasks()
    buckets = None if num_buckets is None else bucket_by_support(tasks.support_sizes, num_buckets)
    batches = list(epoch_batches(tasks, batch_size, rng=np.random.default_rng(3), buckets=buckets))
    if buckets is None:
        buckets = bucket_by_support(tasks.support_sizes, 1)
    assert len(batches) == sum(-(-len(i) // batch_size) for i in buckets.indices)
    bucket_of = {int(u): b for b, idx in enumerate(buckets.indices) for u in idx}
    seen = []
    for batch in batches:
        assert batch.num_tasks == batch_size
        assert batch.support_size in buckets.support_sizes
        assert batch.query_size == tasks.query_sizes.max()
        assert batch.support_x.shape == (batch_size, batch.support_size, 2)
        assert batch.query_x.shape == (batch_size, batch.query_size, 2)
        users = users_in(batch)
        assert len(users) >= 1
        for slot, u in enumerate(users):  # real users come first, padding users after them
            assert buckets.support_sizes[bucket_of[u]] == batch.support_size
            assert batch.support_mask[slot].sum() == tasks.support_sizes[u]
            assert batch.query_mask[slot].sum() == tasks.query_sizes[u]
            assert np.all(batch.support_y[slot][batch.support_mask[slot]] == u + 1)
            assert np.all(batch.support_x[slot][batch.support_mask[slot]] == u)
        assert not batch.support_mask[len(users):].any()
        seen += users
    assert sorted(seen) == list(range(len(tasks)))


def test_epoch_batches_is_deterministic_in_the_seed():
    tasks = epoch_tasks()
    buckets = bucket_by_support(tasks.support_sizes, 2)
    run = lambda seed: list(epoch_batches(tasks, 3, rng=np.random.default_rng(seed), buckets=buckets))  # noqa: E731
    first, again, other = run(7), run(7), run(8)
    assert len(first) == len(again)
    for a, b in zip(first, again):
        for fa, fb in zip(a, b):
            np.testing.assert_array_equal(fa, fb)
    assert [users_in(b) for b in first] != [users_in(b) for b in other]


def test_epoch_batches_query_size_and_errors():
    tasks = epoch_tasks()
    batches = list(epoch_batches(tasks, 4, rng=np.random.default_rng(0), query_size=6))
    assert all(b.query_size == 6 for b in batches)
    with pytest.raises(ValueError, match="batch_size=0"):
        next(epoch_batches(tasks, 0, rng=np.random.default_rng(0)))


def pair_tasks(sizes):
    """Users whose rows hold a code (user * 100 + row) in x (a dict of two leaves) and y alike."""
    parts = []
    for u, (ns, nq) in enumerate(sizes):
        codes = u * 100 + np.arange(ns + nq)
        x = {"a": codes.astype(np.int32), "b": np.stack([codes, -codes], 1).astype(np.float32)}
        parts.append(({k: v[:ns] for k, v in x.items()}, codes[:ns].astype(np.float32),
                      {k: v[ns:] for k, v in x.items()}, codes[ns:].astype(np.float32)))
    return RaggedTasks(*(list(f) for f in zip(*parts)))


def test_resplit_keeps_sizes_rows_and_alignment():
    tasks = pair_tasks([(3, 2), (5, 4), (1, 1)])
    out = resplit(tasks, rng=1)
    np.testing.assert_array_equal(out.support_sizes, tasks.support_sizes)
    np.testing.assert_array_equal(out.query_sizes, tasks.query_sizes)
    for u in range(len(tasks)):
        before = np.concatenate([tasks.support_y[u], tasks.query_y[u]])
        after = np.concatenate([out.support_y[u], out.query_y[u]])
        np.testing.assert_array_equal(np.sort(after), np.sort(before))  # same rows, none lost or repeated
        for x, y in ((out.support_x[u], out.support_y[u]), (out.query_x[u], out.query_y[u])):
            np.testing.assert_array_equal(x["a"], y)  # inputs travel with their targets
            np.testing.assert_array_equal(x["b"][:, 1], -y)


def test_resplit_is_seeded_and_moves_rows():
    tasks = pair_tasks([(30, 10)] * 4)
    a, b, c = resplit(tasks, rng=0), resplit(tasks, rng=0), resplit(tasks, rng=1)
    assert all(np.array_equal(x, y) for x, y in zip(a.query_y, b.query_y))
    assert not all(np.array_equal(x, y) for x, y in zip(a.query_y, c.query_y))
    # over the 4 users, rows from the original support set reach the query set
    moved = sum(int(np.isin(q, s).sum()) for q, s in zip(a.query_y, tasks.support_y))
    assert moved > 0


def test_training_batches_resplit_every_epoch_with_fixed_shapes():
    from jaxmeta.train import BatchStream

    tasks = pair_tasks([(4, 2), (6, 2), (5, 2), (3, 2)])
    stream = BatchStream(tasks, batch_size=4, num_buckets=1, resplit=True)  # 4 users, one batch of 4 per epoch
    first, second = next(stream), next(stream)
    assert first.support_x["a"].shape == second.support_x["a"].shape == (4, 6)
    assert first.query_y.shape == second.query_y.shape == (4, 2)
    codes = lambda b: sorted(np.asarray(b.query_y)[np.asarray(b.query_mask)].tolist())  # noqa: E731
    assert codes(first) != codes(second)  # new query rows in the second epoch
    fixed = next(BatchStream(tasks, batch_size=4, num_buckets=1))
    assert codes(fixed) == sorted(np.concatenate(tasks.query_y).tolist())


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=60), k=st.integers(1, 5), batch_size=st.integers(1, 9))
def test_epoch_plan_spill_visits_every_user_once_with_one_partial_batch(sizes, k, batch_size):
    buckets = bucket_by_support(sizes, k)
    plan = epoch_plan(sizes, batch_size, rng=np.random.default_rng(0), buckets=buckets, spill=True)
    seen = np.concatenate([idx for idx, _ in plan])
    assert sorted(seen.tolist()) == list(range(len(sizes)))
    assert sum(len(idx) < batch_size for idx, _ in plan) <= 1  # only the last users of the pass
    for idx, width in plan:
        assert width in buckets.support_sizes and width >= max(sizes[i] for i in idx)
        # padded to the largest bucket it draws from, not beyond
        assert width == min(s for s in buckets.support_sizes if s >= max(sizes[i] for i in idx))
