"""Times the benchmark workloads W1 melu, W2 ragged and W3 scale (defined in bench/workloads.py;
the timing method and the latest figures are in bench/README.md of the source repository) and
prints one JSON line per measurement.

Every figure is taken after compilation and warm-up: the step is compiled ahead
of time (``jit(...).lower(...).compile()``, whose duration is ``compile_s``), run
``warmup`` times, then timed ``steps`` times, each call synchronised with
``jax.block_until_ready``; ``step_ms`` is the median and ``tasks_per_s`` the
batch size over it. Batches are moved to the device before timing.

Usage (from the repository root; ``jaxmeta bench`` takes the same flags anywhere)::

    python -m bench.run --workload melu --variant melu --batch 32 1024
    python -m bench.run --workload ragged --batch 1024
    python -m bench.run --workload scale            # B = 32, 64, ..., 65536
    python -m bench.run --variant melu-adapt --backend pallas   # the fused Pallas kernel
    python -m bench.run --workload adapt --batch 32 1024   # K-step against amortised adaptation
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxmeta.tasks import TaskBatch, bucket_by_support, epoch_plan, padded_fraction

from . import workloads

SCALE_BATCHES = tuple(32 * 2**i for i in range(12))  # 32 .. 65,536
RAGGED_BUCKETS = 8  # compiled support sizes of W2
RAGGED_POOL = 16  # W2 users per pass, in batches
# Users per chunk inside the compiled step, by platform: past this the per-user
# weights and activations of one chunk stop fitting the CPU's caches (see bench/README.md).
DEFAULT_CHUNK = {"cpu": 32, "gpu": 16384, "tpu": 16384}
ADAPT_ROUNDS = 5  # adapt: interleaved rounds of each adaptation's timed calls
PRECISIONS = ("float32", "default", "tensorfloat32", "bfloat16")  # --precision, as jax_default_matmul_precision


def default_chunk(batch_size: int) -> int | None:
    """The chunk size for ``batch_size`` users on the default device (None: one chunk)."""
    chunk = DEFAULT_CHUNK.get(jax.default_backend(), 16384)
    return None if batch_size <= chunk else chunk


def peak_memory_mb() -> float:
    """Peak memory of the device (accelerators), or of this process (CPU: its peak resident set)."""
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kibibytes


def _record(workload: str, variant: str, batch_size: int, seconds: float, compile_s: float,
            padded: float, **extra: Any) -> dict[str, Any]:
    return {"workload": workload, "variant": variant, "batch": batch_size,
            "tasks_per_s": round(batch_size / seconds, 2), "step_ms": round(1e3 * seconds, 3),
            "compile_s": round(compile_s, 3), "peak_mem_mb": round(peak_memory_mb(), 1),
            "padded_fraction": round(padded, 4), "device": jax.devices()[0].device_kind,
            "jax_version": jax.__version__, "matmul_precision": jax.config.jax_default_matmul_precision or "default",
            **extra}


def _compile(fn: Callable, *args) -> tuple[Callable, float]:
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def _seconds(call: Callable[[], Any], *, steps: int, warmup: int) -> list[float]:
    """The seconds of each of ``steps`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        jax.block_until_ready(call())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return times


def _median_seconds(call: Callable[[], Any], *, steps: int, warmup: int) -> float:
    return statistics.median(_seconds(call, steps=steps, warmup=warmup))


def _stepper(variant: str, chunk_size: int | None, backend: str = "xla"):
    """``(learner, fn)``: the variant's compiled-to-be function of ``(state, batch)``."""
    learner = workloads.learner(variant, chunk_size=chunk_size, backend=backend)
    if variant == "melu-adapt":
        return learner, lambda state, batch: learner.predict(state, batch)
    return learner, lambda state, batch: learner.step(state, batch)


def measure_w1(variant: str, batch_size: int, *, support: int = workloads.SUPPORT, chunk_size: int | None = -1,
               steps: int = 10, warmup: int = 2, seed: int = 0, workload: str = "melu",
               backend: str = "xla") -> dict[str, Any]:
    """One W1 measurement (``chunk_size=-1``: :func:`default_chunk`; ``backend``: see
    :func:`bench.workloads.learner`)."""
    chunk = default_chunk(batch_size) if chunk_size == -1 else chunk_size
    learner, fn = _stepper(variant, chunk, backend)
    state = learner.init(jax.random.key(seed))
    batch = jax.device_put(workloads.batch(np.random.default_rng(seed), batch_size, support))
    compiled, compile_s = _compile(fn, state, batch)
    if variant == "melu-adapt":
        seconds = _median_seconds(lambda: compiled(state, batch), steps=steps, warmup=warmup)
    else:
        box = [state]  # the step feeds its state forward, as training does

        def call():
            box[0], metrics = compiled(box[0], batch)
            return metrics

        seconds = _median_seconds(call, steps=steps, warmup=warmup)
    # the kernel off a GPU runs in Pallas' interpret mode: a correctness path, not a figure to quote
    interpret = {"interpret": jax.default_backend() != "gpu"} if backend == "pallas" else {}
    return _record(workload, variant, batch_size, seconds, compile_s, padded_fraction(batch), chunk_size=chunk,
                   support=support, backend=backend, **interpret)


def ragged_batches(batch_size: int, *, seed: int = 0, pool: int = RAGGED_POOL,
                   num_buckets: int = RAGGED_BUCKETS) -> list[TaskBatch]:
    """One W2 pass: ``pool * batch_size`` users, support sizes uniform in 3..100, in
    batches by :func:`jaxmeta.tasks.bucket_by_support` (``spill=True``)."""
    rng = np.random.default_rng(seed)
    sizes = workloads.ragged_sizes(rng, pool * batch_size)
    buckets = bucket_by_support(sizes, num_buckets)
    plan = epoch_plan(sizes, batch_size, rng=rng, buckets=buckets, spill=True)
    return [workloads.batch(rng, batch_size, sizes[idx], width=width, num_real=len(idx)) for idx, width in plan]


def measure_ragged(batch_size: int, *, chunk_size: int | None = -1, steps: int = 3, warmup: int = 1,
                   seed: int = 0, num_buckets: int = RAGGED_BUCKETS) -> dict[str, Any]:
    """One W2 measurement: median time of whole passes; also W1 at the pass's mean support size."""
    chunk = default_chunk(batch_size) if chunk_size == -1 else chunk_size
    learner, fn = _stepper("melu", chunk)
    state = learner.init(jax.random.key(seed))
    batches = [jax.device_put(b) for b in ragged_batches(batch_size, seed=seed, num_buckets=num_buckets)]
    compiled, compile_s = {}, 0.0
    for b in batches:
        if b.support_size not in compiled:
            compiled[b.support_size], seconds = _compile(fn, state, b)
            compile_s += seconds
    box = [state]

    def one_pass():
        for b in batches:
            box[0], metrics = compiled[b.support_size](box[0], b)
        return metrics

    seconds = _median_seconds(one_pass, steps=steps, warmup=warmup) / len(batches)
    mean_support = float(np.mean([np.asarray(b.support_mask).sum(1).mean() for b in batches]))
    same = measure_w1("melu", batch_size, support=round(mean_support), chunk_size=chunk, seed=seed,
                      steps=max(3, steps), warmup=1)
    return _record("ragged", "melu", batch_size, seconds, compile_s, padded_fraction(batches), chunk_size=chunk,
                   backend="xla", shapes=sorted(compiled), mean_support=round(mean_support, 2),
                   w1_same_support_tasks_per_s=same["tasks_per_s"])


def measure_adapt(batch_size: int, *, chunk_size: int | None = -1, steps: int = 10, warmup: int = 2,
                  rounds: int = ADAPT_ROUNDS, seed: int = 0) -> list[dict[str, Any]]:
    """The ``adapt`` workload at one batch size: a record per adaptation (gradient, the amortised students,
    then none, the floor; the same users), and a line of the ratios to gradient.

    Every adaptation is compiled first, then timed in ``rounds`` interleaved rounds (each adaptation's
    ``steps`` calls in turn, ``warmup`` untimed calls before each round's), so that a change in the
    machine's speed during the run falls on all of them alike; the figure is the median over all calls."""
    chunk = default_chunk(batch_size) if chunk_size == -1 else chunk_size
    batch = jax.device_put(workloads.batch(np.random.default_rng(seed), batch_size))
    runs = {}
    for adaptation in workloads.ADAPTATIONS:
        learner = workloads.adapter(adaptation, chunk_size=chunk)
        state = learner.init(jax.random.key(seed))
        compiled, compile_s = _compile(lambda s, b, learner=learner: learner.predict(s, b), state, batch)
        runs[adaptation] = (functools.partial(compiled, state, batch), compile_s, [])
    for _ in range(rounds):
        for call, _, times in runs.values():
            times.extend(_seconds(call, steps=steps, warmup=warmup))
    records = [_record("adapt", adaptation, batch_size, statistics.median(times), compile_s, padded_fraction(batch),
                       chunk_size=chunk, support=workloads.SUPPORT, backend="xla", rounds=rounds,
                       inner_steps=workloads.INNER_STEPS if adaptation == "gradient" else 0)
               for adaptation, (_, compile_s, times) in runs.items()]
    gradient = records[0]
    records.append({"workload": "adapt", "batch": batch_size,
                    **{f"{r['variant']}_over_gradient": round(r["tasks_per_s"] / gradient["tasks_per_s"], 2)
                       for r in records[1:]}})
    return records


def measure(workload: str, variant: str, batch_sizes: Sequence[int], *, chunk_size: int | None = -1,
            steps: int | None = None, warmup: int | None = None, seed: int = 0, backend: str = "xla"):
    """Yields the records of one workload: W1 and W2 once per batch size; W3 the
    W1 ``melu`` step at each batch size, stopping at the first that does not fit.
    ``backend="pallas"``: W1 ``melu-adapt`` and ``melu-fo`` through the fused kernel."""
    if workload not in workloads.WORKLOADS:
        raise ValueError(f"workload={workload!r}: pass one of {tuple(workloads.WORKLOADS)}.")
    if variant not in workloads.WORKLOADS[workload]:
        raise ValueError(f"variant={variant!r} for workload {workload!r}: pass one of {workloads.WORKLOADS[workload]}.")
    if backend not in workloads.BACKENDS:
        raise ValueError(f"backend={backend!r}: pass one of {workloads.BACKENDS}.")
    if backend != "xla" and (workload != "melu" or variant not in workloads.KERNEL_VARIANTS):
        raise ValueError(f"backend={backend!r} with workload {workload!r}, variant {variant!r}: the kernel runs W1 "
                         f"(--workload melu) variants {workloads.KERNEL_VARIANTS}; pass one of them or --backend xla.")
    timing = {k: v for k, v in (("steps", steps), ("warmup", warmup)) if v is not None}
    for b in batch_sizes:
        if workload == "adapt":
            yield from measure_adapt(b, chunk_size=chunk_size, seed=seed, **timing)
            continue
        if workload == "ragged":
            yield measure_ragged(b, chunk_size=chunk_size, seed=seed, **timing)
            continue
        if workload == "melu":
            yield measure_w1(variant, b, chunk_size=chunk_size, seed=seed, backend=backend, **timing)
            continue
        try:
            yield measure_w1(variant, b, chunk_size=chunk_size, seed=seed, workload="scale",
                             **({"steps": 3, "warmup": 1} | timing))
        except jax.errors.JaxRuntimeError as error:  # out of memory: the curve ends here
            if "RESOURCE_EXHAUSTED" not in str(error) and "Out of memory" not in str(error):
                raise
            print(json.dumps({"workload": "scale", "variant": variant, "batch": b, "fits": False}), flush=True)
            return


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", default="melu", choices=tuple(workloads.WORKLOADS),
                        help="melu (W1), ragged (W2), scale (W3), or adapt (K-step against amortised "
                             "adaptation) (default: melu)")
    parser.add_argument("--variant", default="melu", help="W1: melu, melu-fo or melu-adapt (default: melu)")
    parser.add_argument("--batch", type=int, nargs="+",
                        help="users per step (default: 32 1024; scale: 32, 64, ..., 65536)")
    parser.add_argument("--chunk-size", type=int, default=-1,
                        help="users per chunk inside the step (default: by platform, CPU 32; 0: no chunking)")
    parser.add_argument("--steps", type=int, help="timed repetitions (default: 10; ragged 3 passes; scale 3)")
    parser.add_argument("--warmup", type=int, help="untimed repetitions after compiling (default: 2; ragged, scale 1)")
    parser.add_argument("--seed", type=int, default=0, help="parameters and data (default: 0)")
    parser.add_argument("--backend", default="xla", choices=workloads.BACKENDS,
                        help="adaptation backend: xla, or pallas (the fused kernel; W1 melu-adapt and melu-fo) "
                             "(default: xla)")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="matrix products' precision (jax_default_matmul_precision). BENCH.md's figures are "
                             "float32, which GPUs otherwise run as TF32; 'default' leaves the platform's choice "
                             "(default: float32)")


def main(args: argparse.Namespace) -> int:
    batches = args.batch or (SCALE_BATCHES if args.workload == "scale" else (32, 1024))
    if any(b < 1 for b in batches):
        raise ValueError(f"--batch {batches}: pass positive numbers of users.")
    chunk = None if args.chunk_size == 0 else args.chunk_size
    with jax.default_matmul_precision(None if args.precision == "default" else args.precision):
        for record in measure(args.workload, args.variant, batches, chunk_size=chunk, steps=args.steps,
                              warmup=args.warmup, seed=args.seed, backend=args.backend):
            print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}.run", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
