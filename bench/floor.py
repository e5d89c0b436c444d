"""The arithmetic floor of W1: FLOPs per user and this machine's matrix-multiply rate.

FLOPs are XLA's own count (``Compiled.cost_analysis()``) of the compiled W1 step
at B = 32, with the inner loop unrolled so that every inner step is counted (XLA
counts a loop body once). Two formulations are counted: the plain SGD loop on
the full weights (``plain``: what every peer computes; MeLU with its stage's
``dense`` layer undeclared, as plain SGD on a declared one runs in closed form)
and jaxmeta's, which adapts the first dense layer in closed form (``closed``, see
``jaxmeta.inner.inner_adapt_dense``). The rate is the median of square float32
matrix products of growing size, the best size kept. The floor in users per
second is the rate over the plain FLOPs per user: what a perfect implementation
of the plain computation could reach.

    python -m bench.floor
"""

from __future__ import annotations

import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmeta import algorithms

from . import run, workloads


def flops_per_user(variant: str, *, closed: bool, batch_size: int = 32) -> float:
    """XLA's FLOP count of one ``variant`` step per user, inner loop unrolled."""
    scan = jax.lax.scan
    jax.lax.scan = functools.partial(scan, unroll=True)
    try:
        model = workloads.model()
        if not closed:  # no dense layer declared: plain SGD on every fast weight (the embeddings still once)
            model = model._replace(stage=model.stage._replace(dense=None, after_dense=None))
        learner = algorithms.maml(model, inner_optimizer=workloads.INNER_LR, inner_steps=workloads.INNER_STEPS,
                                  outer_optimizer=optax.adam(workloads.OUTER_LR), first_order=variant == "melu-fo")
        fn = (lambda s, b: learner.predict(s, b)) if variant == "melu-adapt" else learner.step
        state = learner.init(jax.random.key(0))
        batch = workloads.batch(np.random.default_rng(0), batch_size)
        cost = jax.jit(fn).lower(state, batch).compile().cost_analysis()
    finally:
        jax.lax.scan = scan
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) / batch_size


def matmul_gflops(sizes=(512, 1024, 2048), repeats: int = 10) -> float:
    """The best median rate of float32 square matrix products, GFLOP/s."""
    best = 0.0
    for n in sizes:
        a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
        product = jax.jit(lambda x: x @ x)
        jax.block_until_ready(product(a))
        seconds = run._median_seconds(lambda: product(a), steps=repeats, warmup=1)
        best = max(best, 2 * n**3 / seconds / 1e9)
    return best


def main() -> int:
    rate = matmul_gflops()
    for variant in workloads.WORKLOADS["melu"]:
        plain, closed = flops_per_user(variant, closed=False), flops_per_user(variant, closed=True)
        print(json.dumps({"variant": variant, "plain_mflop_per_user": round(plain / 1e6, 3),
                          "closed_mflop_per_user": round(closed / 1e6, 3), "matmul_gflops": round(rate, 1),
                          "floor_tasks_per_s": round(rate * 1e9 / plain, 1), "device": jax.devices()[0].device_kind,
                          "jax_version": jax.__version__}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
