"""Checkpoints: preservation across reopenings, damaged steps named in one line, the fallback to
the newest whole step, and a checkpoint of another model told apart from a damaged one."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmeta.checkpoint import CheckpointCorrupt, CheckpointError, Checkpoints, _digests

SMALL = {"w": jnp.arange(4.0)}  # stored inside orbax's B-tree node, which has a checksum
# over the 1 KiB that OCDBT keeps inline: stored in a file of its own, unchecked; random, so that
# zstd keeps the bytes as they are and a flipped byte decodes to another value without an error
BIG = {"w": jnp.asarray(np.random.default_rng(0).normal(size=2000), jnp.float32)}


def one_line(error: BaseException | str) -> str:
    text = str(error)
    assert "\n" not in text and len(text) < 300, text
    return text


def saved(folder: Path, tree=SMALL, steps=(10, 20, 30), **options) -> Checkpoints:
    """``folder`` with ``tree + step`` saved at each step, scored ``1 / step``."""
    store = Checkpoints(folder, **options)
    for step in steps:
        store.save(step, {k: v + step for k, v in tree.items()}, extra={"at": step},
                   metrics={"valid_mae": 1 / step})
    return store


def data_files(step: Path) -> list[Path]:
    """The files of the state's database in ``step``, largest first."""
    return sorted((p for p in (step / "state").rglob("d/*") if p.is_file()), key=lambda p: -p.stat().st_size)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("mode", ["min", "max"])
def test_the_best_step_survives_reopening_and_saving(tmp_path, mode):
    # orbax's own best-N policy forgot the scores of the steps saved before a reopening and
    # deleted the best one on the next save
    sign = 1 if mode == "min" else -1  # step 20 is the best either way
    cycles = [[(10, 0.5), (20, 0.2), (30, 0.6)], [(40, 0.7), (50, 0.8)], [(60, 0.9), (70, 0.95)]]
    for cycle in cycles:
        with Checkpoints(tmp_path, keep_last=1, best_mode=mode) as store:
            for step, mae in cycle:
                store.save(step, {"w": jnp.full(2, float(step))}, metrics={"valid_mae": sign * mae})
            assert store.all_steps() == [20, cycle[-1][0]]
            assert store.best_step() == 20
            assert store.restore({"w": jnp.zeros(2)}, 20)[0]["w"].tolist() == [20, 20]


def test_unscored_and_damaged_steps_count_only_as_latest(tmp_path):
    store = Checkpoints(tmp_path, keep_last=2, keep_best=2)
    for step, mae in ((1, 0.3), (2, None), (3, 0.1), (4, None), (5, None)):
        store.save(step, SMALL, metrics=None if mae is None else {"valid_mae": mae})
    assert store.all_steps() == [1, 3, 4, 5]
    (tmp_path / "3" / "extra" / "metadata").unlink()
    with pytest.raises(CheckpointCorrupt, match="extra/metadata: missing") as error:
        store.extra(3)
    one_line(error.value)
    reopened = Checkpoints(tmp_path, keep_last=2, keep_best=2)
    assert reopened.best_step() == 1  # 3 cannot be read any more
    reopened.save(6, SMALL)
    assert reopened.all_steps() == [1, 5, 6]


@pytest.mark.parametrize("tree, pick", [(BIG, lambda files: files[0]),  # the array's own file
                                        (SMALL, lambda files: next(f for f in files if f.parent.parent.name == "state"))])
def test_a_truncated_data_file_is_named_with_the_step_to_use_instead(tmp_path, tree, pick):
    store = saved(tmp_path, tree)
    damaged = pick(data_files(tmp_path / "30"))
    truncate(damaged)
    with pytest.raises(CheckpointCorrupt) as error:
        store.restore(tree)
    message = one_line(error.value)
    assert message.startswith(f"{tmp_path / '30'}: the checkpoint of step 30 is damaged (")
    assert f"{damaged.relative_to(tmp_path / '30')}: truncated" in message
    assert message.endswith("use an earlier one: --checkpoint 20 (saved steps: 10, 20, 30).")
    assert "does not fit" not in message
    assert store.restore(tree, 20)[1] == {"at": 20}


@pytest.mark.parametrize("tree, found", [(BIG, "differ from their sha256"), (SMALL, "checksum does not match|does not decompress")])
def test_a_flipped_byte_in_the_biggest_data_file_is_found(tmp_path, tree, found):
    store = saved(tmp_path, tree)
    damaged = data_files(tmp_path / "30")[0]
    flip(damaged)
    with pytest.raises(CheckpointCorrupt) as error:
        store.restore(tree)
    message = one_line(error.value)
    assert re.search(f"is damaged \\({damaged.relative_to(tmp_path / '30')}: .*({found})", message), message
    assert "--checkpoint 20" in message


@pytest.mark.parametrize("name", ["_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt", "extra/metadata"])
def test_a_missing_metadata_file_is_damage_not_another_config(tmp_path, name):
    store = saved(tmp_path)
    (tmp_path / "30" / name).unlink()
    with pytest.raises(CheckpointCorrupt) as error:
        store.restore(SMALL)
    message = one_line(error.value)
    assert f"is damaged ({name}: missing)" in message and "does not fit" not in message


@pytest.mark.parametrize("name", ["_CHECKPOINT_METADATA", "state/_METADATA", "state/_sharding", "extra/metadata"])
def test_a_garbled_metadata_file_is_named(tmp_path, name):
    store = saved(tmp_path)
    flip(tmp_path / "30" / name)
    with pytest.raises(CheckpointCorrupt, match=f"damaged \\({name}: not valid JSON\\)") as error:
        store.restore(SMALL)
    one_line(error.value)


@pytest.mark.parametrize("like, why", [({"w": jnp.zeros(5)}, r"w is \(4,\) there, \(5,\) here"),
                                       ({"v": jnp.zeros(4)}, "v of the model is not saved"),
                                       ({"w": jnp.zeros(4), "b": jnp.zeros(1)}, "b of the model is not saved")])
def test_a_checkpoint_of_another_model_says_so(tmp_path, like, why):
    store = saved(tmp_path)
    with pytest.raises(CheckpointError, match=f"the checkpoint of step 30 does not fit this run's model \\({why}\\)") \
            as error:
        store.restore(like)
    assert not isinstance(error.value, CheckpointCorrupt)
    one_line(error.value)


def test_the_fallback_resumes_from_the_newest_whole_step(tmp_path):
    store = saved(tmp_path, BIG, steps=(10, 20, 30, 40), keep_last=4)
    truncate(data_files(tmp_path / "40")[0])
    flip(data_files(tmp_path / "30")[0])
    lines: list[str] = []
    state, extra, step = Checkpoints(tmp_path, read_only=True).restore_newest_good(BIG, notice=lines.append)
    assert (step, extra) == (20, {"at": 20})
    np.testing.assert_array_equal(state["w"], BIG["w"] + 20)
    assert [one_line(line).split(" (")[0] for line in lines] == ["checkpoint step 40 is damaged",
                                                                 "checkpoint step 30 is damaged"]
    assert all(line.endswith("; resuming from step 20") for line in lines)
    assert store.all_steps() == [10, 20, 30, 40]  # read-only: left as they are

    lines.clear()
    assert store.restore_newest_good(BIG, before=30, notice=lines.append)[2] == 20 and lines == []
    assert store.restore_newest_good(BIG, notice=lines.append)[2] == 20
    assert lines[0].endswith("; resuming from step 20 (step 40 deleted)")
    assert store.all_steps() == [10, 20]  # so that the resumed run can save them again
    store.save(30, {"w": BIG["w"] + 31})
    assert store.restore(BIG)[0]["w"].tolist() == (BIG["w"] + 31).tolist()


def test_the_fallback_fails_in_one_line_when_every_step_is_damaged(tmp_path):
    store = saved(tmp_path, BIG, steps=(10, 20))
    for step in (10, 20):
        truncate(data_files(tmp_path / str(step))[0])
    with pytest.raises(CheckpointCorrupt, match="every checkpoint is damaged") as error:
        Checkpoints(tmp_path, read_only=True).restore_newest_good(BIG, notice=pytest.fail)
    one_line(error.value)
    with pytest.raises(CheckpointError, match="no checkpoint before step 10"):
        store.restore_newest_good(BIG, before=10)


def test_read_only_opening_restores_and_refuses_to_save(tmp_path):
    saved(tmp_path, keep_last=2).close()
    store = Checkpoints(tmp_path, read_only=True)
    assert (store.all_steps(), store.latest_step(), store.best_step()) == ([20, 30], 30, 30)
    state, extra = store.restore(SMALL, 20)
    assert state["w"].tolist() == [20.0, 21.0, 22.0, 23.0] and extra == {"at": 20}
    assert store.extra(20) == {"at": 20, "metrics": {"valid_mae": 1 / 20}}
    with pytest.raises(CheckpointError, match="opened read-only"):
        store.save(40, SMALL)
    with pytest.raises(CheckpointError, match="no checkpoint folder there"):
        Checkpoints(tmp_path / "none", read_only=True)


def test_a_checkpoint_without_a_digest_still_restores(tmp_path):
    store = saved(tmp_path, BIG)
    path = tmp_path / "30" / "extra" / "metadata"
    extra = json.loads(path.read_text())
    assert set(extra["sha256"]) == {"w"}
    for key in ("sha256", "extra_sha256", "saved_step"):
        del extra[key]
    path.write_text(json.dumps(extra))  # as checkpoints were saved before digests
    np.testing.assert_array_equal(store.restore(BIG)[0]["w"], BIG["w"] + 30)


def test_an_altered_value_in_extra_is_damage_and_never_the_best(tmp_path):
    """A changed data position or score that still reads as JSON: the checksum of extra tells it, the step is
    damaged (resumed from the one before), and its score does not make it the best."""
    store = saved(tmp_path)
    for step, old, new in ((30, '"at": 30', '"at": 20'), (10, '"valid_mae": 0.1', '"valid_mae": 0.0')):
        path = tmp_path / str(step) / "extra" / "metadata"
        text = path.read_text()
        assert old in text, text
        path.write_text(text.replace(old, new))
    with pytest.raises(CheckpointCorrupt, match=r"step 30 is damaged \(extra/metadata: altered"):
        Checkpoints(tmp_path).restore(SMALL, 30)
    reopened = Checkpoints(tmp_path)
    assert reopened.best_step() == 20 and reopened.extra(20) == {"at": 20, "metrics": {"valid_mae": 0.05}}
    _, extra, step = reopened.restore_newest_good(SMALL, notice=lambda line: None)
    assert (step, extra) == (20, {"at": 20})
    assert store.all_steps() == [10, 20]  # the damaged newest was deleted for the run to save again


def test_a_full_disk_during_a_save_is_one_plain_line_naming_the_last_whole_step(tmp_path):
    store = saved(tmp_path)

    def full(*args, **kwargs):  # as tensorstore words it, wrapped by orbax
        try:
            raise ValueError("FAILED_PRECONDITION: Error writing local file \"d/ab12\": [OS error 28: No space "
                             "left on device]")
        except ValueError as error:
            raise RuntimeError("orbax: save failed") from error

    store._manager.save = full
    with pytest.raises(OSError, match=r"no space left on the device while saving step 40; free some space, then "
                                      r"resume the run \(step 30, the last saved, is whole\)") as raised:
        store.save(40, {k: v + 40 for k, v in SMALL.items()})
    assert raised.value.errno == errno.ENOSPC

    def other(*args, **kwargs):
        raise RuntimeError("something else")

    store._manager.save = other
    with pytest.raises(RuntimeError, match="something else"):  # any other failure as it was
        store.save(40, {k: v + 40 for k, v in SMALL.items()})


def test_a_renamed_step_folder_is_damage(tmp_path):
    saved(tmp_path)
    (tmp_path / "30").rename(tmp_path / "40")
    lines = []
    _, extra, step = Checkpoints(tmp_path).restore_newest_good(SMALL, notice=lines.append)
    assert (step, extra) == (20, {"at": 20})
    assert "step 40 is damaged (extra/metadata: saved as step 30, found as step 40" in lines[0]


def test_every_dtype_round_trips_with_its_digest_and_casts_to_the_model(tmp_path):
    tree = {"f": jnp.linspace(0, 1, 5), "h": jnp.ones((2, 3), jnp.bfloat16), "i": jnp.arange(3, dtype=jnp.int32),
            "b": jnp.asarray([True, False]), "s": jnp.asarray(7, jnp.int32), "n": np.arange(4.0, dtype=np.float32)}
    store = Checkpoints(tmp_path)
    store.save(1, tree)
    state, _ = store.restore(tree)
    for key, value in tree.items():
        assert state[key].dtype == value.dtype
        np.testing.assert_array_equal(np.asarray(state[key]), np.asarray(value))
    cast, _ = store.restore({**tree, "f": jnp.zeros(5, jnp.float16)})  # as before: the model's dtype
    assert cast["f"].dtype == jnp.float16


def test_no_digest_for_a_state_no_process_holds_whole():
    class Spread:  # what a jax.Array spread over several processes says of itself
        is_fully_addressable = False

    assert _digests({"w": jnp.ones(2), "v": Spread()}) is None
    assert set(_digests({"w": jnp.ones(2), "v": jnp.ones(1)})) == {"w", "v"}


def test_extra_keys_the_store_fills_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\['metrics'\]"):
        Checkpoints(tmp_path).save(1, SMALL, extra={"metrics": {}})


def test_after_a_failed_restore_only_orbaxs_abandoned_reads_are_silenced(monkeypatch):
    import types

    from jaxmeta.checkpoint import _drop_failed_reads

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.object))

    def coroutine(filename):
        namespace = {}
        exec(compile("async def read():\n    raise OSError('truncated')\n", filename, "exec"), namespace)
        return namespace["read"]()

    _drop_failed_reads()
    _drop_failed_reads()  # twice: one filter, not two stacked
    orbax, other = coroutine("/site-packages/orbax/checkpoint/serialization.py"), coroutine("/elsewhere/x.py")
    for obj in (orbax, other, "not a coroutine"):
        sys.unraisablehook(types.SimpleNamespace(object=obj))
    assert seen == [other, "not a coroutine"]
    orbax.close(), other.close()


def test_a_failed_restores_late_reads_are_dropped_and_nothing_else(monkeypatch):
    """What tensorstore's threads and orbax's tasks print after a failed restore (found under load:
    about one ``jaxmeta eval`` of a damaged checkpoint in 15 printed them) is dropped; the same errors
    elsewhere, and other errors, still reach the hooks."""
    import logging
    import threading
    import types

    from jaxmeta import checkpoint

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append((u.exc_type, str(u.exc_value))))
    checkpoint._quiet_failed_reads()
    checkpoint._quiet_failed_reads()  # idempotent: one filter
    closed = types.SimpleNamespace(object=None, exc_type=RuntimeError, exc_value=RuntimeError("Event loop is closed"))
    other = types.SimpleNamespace(object=None, exc_type=RuntimeError, exc_value=RuntimeError("something else"))
    worker = threading.Thread(target=lambda: [sys.unraisablehook(closed), sys.unraisablehook(other)])
    worker.start()
    worker.join()
    sys.unraisablehook(closed)  # on the main thread: not a late read, kept
    assert seen == [(RuntimeError, "something else"), (RuntimeError, "Event loop is closed")]
    drop = checkpoint._UnretrievedOrbaxReads()
    record = lambda message: logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, None)  # noqa: E731
    assert not drop.filter(record("Task exception was never retrieved\nfuture: <Task coro=<async_deserialize() "
                                  "done, defined at .../orbax/checkpoint/_src/serialization/serialization.py:394>>"))
    assert drop.filter(record("Task exception was never retrieved\nfuture: <Task coro=<mine() done>>"))
    assert drop.filter(record("Unclosed client session"))


def _orbax_code(source: str, filename: str = "_src/serialization/serialization.py") -> dict:
    """``source`` run as if it were a file of orbax.checkpoint's own folder (or ``filename``, when absolute)."""
    from jaxmeta import checkpoint

    namespace = {}
    exec(compile(source, os.path.join(checkpoint._ORBAX, filename), "exec"), namespace)
    return namespace


def _raised_in(name: str, filename: str = "_src/serialization/serialization.py") -> BaseException:
    """An error raised in a function ``name`` of orbax's code, chained from a tensorstore-like one."""
    source = (f"def {name}():\n    try:\n        raise ValueError('OUT_OF_RANGE: requested byte range')\n"
              "    except ValueError as error:\n        raise Exception('Encountered error reading array') from error\n")
    try:
        _orbax_code(source, filename)[name]()
    except Exception as error:  # noqa: BLE001 (the error is the point)
        return error
    raise AssertionError("not raised")


def test_only_errors_raised_through_orbaxs_reads_count_as_a_failed_restores_leftovers():
    """``_failed_read``: an error whose own traceback passes through a function of orbax's that reads or
    deserializes. Not one from its writes or threads, not jaxmeta's error raised from a failed read (causes are
    not followed), not a reading function outside orbax's folder whose path merely mentions orbax."""
    from jaxmeta.checkpoint import CheckpointCorrupt, _failed_read

    assert _failed_read(_raised_in("_read_array_index_and_device_put")) and _failed_read(_raised_in("async_deserialize"))
    for name in ("_write_shard", "_thread_func", "launch_finalize_thread"):
        assert not _failed_read(_raised_in(name)), name
    assert not _failed_read(_raised_in("read_batch", "/home/me/orbax-demo/data.py"))
    try:
        raise CheckpointCorrupt("one line", step=4, detail="truncated") from _raised_in("_read_shard")
    except CheckpointCorrupt as error:
        assert not _failed_read(error)
    assert not _failed_read(None)


def test_a_gathered_read_nobody_awaits_logs_nothing_and_other_leftovers_still_do(caplog, monkeypatch):
    """The channel that printed 76 lines once in the slow suite: orbax gathers its shard reads; when a restore
    has failed and its loop closed, a gathered read that fails later leaves an ``asyncio.gather`` future whose
    exception nobody retrieves, and collecting it logs "_GatheringFuture exception was never retrieved" with the
    read's traceback. After ``_quiet_failed_reads`` that record is dropped, while the same future of a coroutine
    outside orbax still logs; so do the unraisable hook's and a warning's for code that is not orbax's reads."""
    import asyncio
    import gc
    import types
    import warnings

    from jaxmeta import checkpoint

    async def mine():
        raise OSError("my own read")

    reads = _orbax_code("async def _read_shard():\n    raise ValueError('OUT_OF_RANGE')\n")

    def leave_unretrieved(make) -> None:
        loop = asyncio.new_event_loop()

        async def start():
            return asyncio.gather(make())

        gathered = loop.run_until_complete(start())
        loop.run_until_complete(asyncio.sleep(0.01))  # the read runs, fails; the gathered future holds its error
        loop.close()
        assert type(gathered).__name__ == "_GatheringFuture" and gathered.done()
        del gathered
        gc.collect()

    checkpoint._quiet_failed_reads()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        leave_unretrieved(reads["_read_shard"])
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
        leave_unretrieved(mine)
        assert [r.getMessage().split("\n")[0] for r in caplog.records] == [
            "_GatheringFuture exception was never retrieved"]
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    checkpoint._quiet_failed_reads()  # wraps the recorder
    read, write = _raised_in("_read_array_index_and_device_put"), _raised_in("_write_shard")
    for error in (read, write):
        sys.unraisablehook(types.SimpleNamespace(object=None, exc_type=type(error), exc_value=error))
    assert seen == [write]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checkpoint._quiet_failed_reads()
        warnings.warn("coroutine '_read_shard' was never awaited", RuntimeWarning, stacklevel=1)
        warnings.warn("coroutine 'Store._get_array_metadatas' was never awaited", RuntimeWarning, stacklevel=1)
        warnings.warn("coroutine 'mine' was never awaited", RuntimeWarning, stacklevel=1)
        warnings.warn("coroutine 'Mine._get_array_metadatas' was never awaited", RuntimeWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["coroutine 'mine' was never awaited",
                                                "coroutine 'Mine._get_array_metadatas' was never awaited"]
