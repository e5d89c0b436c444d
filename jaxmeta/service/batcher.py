"""Micro-batching: requests that arrive within a few milliseconds are served by one call.

:class:`MicroBatcher` sits between the event loop of an asyncio server and a
function that serves many requests at once (for the service: adapt many users in
one vmapped call). A request is :meth:`~MicroBatcher.submit`-ted from the loop;
a collector task takes the first waiting request, then keeps taking requests
until ``window_ms`` milliseconds have passed since the first or ``max_batch``
are taken, and runs the function on the batch in a worker thread, so the event
loop keeps accepting requests meanwhile. While a batch runs, new requests
queue; when it ends, the queued ones form the next batch at once (up to
``max_batch``), so under load batches grow by themselves and when idle a lone
request waits at most ``window_ms``.

The function runs in ONE worker thread, one batch at a time: XLA uses the
machine's cores within a call, and calls never compete.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from jaxmeta._checks import positive_int

__all__ = ("MicroBatcher",)

Job = TypeVar("Job")
Result = TypeVar("Result")


class MicroBatcher(Generic[Job, Result]):
    """Serves jobs in batches: ``serve(jobs) -> results`` (one result per job, in order) in a worker thread.

    Start it with :meth:`start` inside a running event loop, stop it with
    :meth:`stop`. When ``serve`` raises on a batch of several jobs, each job is
    served again alone, so that one bad job fails only its own request; the
    exception of a lone job is raised to its :meth:`submit`.

    Args:
      serve: the batch function; runs in the worker thread.
      max_batch: the most jobs per call (1: every job alone).
      window_ms: how long the first job of a batch waits for others, in
        milliseconds (0: take only the jobs already waiting).

    Example:
      >>> async def demo():
      ...     batcher = MicroBatcher(lambda jobs: [(x * 2, len(jobs)) for x in jobs], max_batch=8, window_ms=50)
      ...     batcher.start()
      ...     out = await asyncio.gather(*(batcher.submit(x) for x in range(3)))
      ...     await batcher.stop()
      ...     return out
      >>> asyncio.run(demo())  # doubled, and all three served by one call
      [(0, 3), (2, 3), (4, 3)]
    """

    def __init__(self, serve: Callable[[Sequence[Job]], Sequence[Result]], *, max_batch: int = 32,
                 window_ms: float = 5.0):
        self._serve = serve
        self.max_batch = positive_int("max_batch", max_batch, "jobs per call")
        if isinstance(window_ms, bool) or not isinstance(window_ms, (int, float)) or not 0 <= window_ms < 60_000:
            raise ValueError(f"window_ms={window_ms!r}: pass how long a batch waits for jobs, in milliseconds "
                             "(a number >= 0, e.g. 5).")
        self.window = float(window_ms) / 1000.0
        self.batches = 0  # calls of serve that succeeded so far
        self.jobs = 0  # jobs they served
        self.largest = 0  # the most jobs one of them served
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Starts the collector task on the running event loop and the worker thread."""
        if self._task is not None:
            raise RuntimeError("this MicroBatcher is started already; stop it before starting it again.")
        self._queue = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxmeta-batcher")
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="jaxmeta-batcher")

    async def stop(self) -> None:
        """Stops collecting; jobs still waiting fail with :class:`asyncio.CancelledError`."""
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            future.cancel()
        self._executor.shutdown(wait=True)
        self._task = self._queue = self._executor = None

    async def submit(self, job: Job) -> Result:
        """Queues ``job`` and waits for its result."""
        if self._task is None:
            raise RuntimeError("the MicroBatcher is not started: call start() inside the running event loop first.")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((job, future))
        return await future

    async def run(self, jobs: Sequence[Job]) -> list[Result]:
        """``serve(jobs)`` in the worker thread, outside the queue (e.g. a warm-up)."""
        loop = asyncio.get_running_loop()
        return list(await loop.run_in_executor(self._executor, self._serve, list(jobs)))

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.window
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
            batch = [(job, future) for job, future in batch if not future.done()]  # a cancelled request
            try:
                if batch:
                    await self._serve_batch(loop, batch)
            except asyncio.CancelledError:  # stopped while the batch ran: its requests end too
                for _, future in batch:
                    future.cancel()
                raise

    async def _serve_batch(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Job, asyncio.Future]]) -> None:
        jobs = [job for job, _ in batch]
        try:
            results = await loop.run_in_executor(self._executor, self._serve, jobs)
            if len(results) != len(jobs):
                raise RuntimeError(f"the batch function returned {len(results)} results for {len(jobs)} jobs: "
                                   "it must return one per job, in order.")
        except Exception as error:  # noqa: BLE001 - handed to the waiting requests, never swallowed
            if len(batch) > 1:  # find the bad job: each alone
                for one in batch:
                    await self._serve_batch(loop, [one])
                return
            _settle(batch[0][1], error=error)
            return
        self.batches += 1
        self.jobs += len(jobs)
        self.largest = max(self.largest, len(jobs))
        for (_, future), result in zip(batch, results):
            _settle(future, result=result)


def _settle(future: asyncio.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the request went away meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
