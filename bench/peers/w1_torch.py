"""Workload W1 (``melu``) in PyTorch: the pieces every peer shares.

A task is one user: ``SUPPORT`` support and ``QUERY`` query interactions, each
row one id per categorical field (:data:`VOCAB_SIZES`). Every field has its own
embedding table (the slow weights); the concatenated embeddings feed an MLP
256 -> 64 -> 64 -> 1 (the fast weights) that predicts a rating, scored by mean
squared error. The fast weights are a dict keyed like the state dict of
:func:`make_mlp`, so the functional and the ``nn.Module`` peers start from the
same numbers.

This module also holds the timing harness and the command line that the peers
share, so that every peer reports the same record.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

VOCAB_SIZES = (2, 7, 21, 3402, 6, 25, 2186, 8030)  # gender, age, occupation, zip; rate, genre, director, actor
EMBED_DIM = 32
HIDDEN = 64
SUPPORT = 20
QUERY = 10
INNER_STEPS = 5
INNER_LR = 0.03
OUTER_LR = 1e-3
VARIANTS = ("melu", "melu-fo", "melu-adapt")

Fast = dict[str, torch.Tensor]


class Batch(NamedTuple):
    """A meta-batch of users, all with the same support and query sizes."""

    support_ids: torch.Tensor  # int64 [users, support, fields]
    support_y: torch.Tensor  # float32 [users, support]
    query_ids: torch.Tensor  # int64 [users, query, fields]
    query_y: torch.Tensor  # float32 [users, query]


def make_batch(
    users: int,
    *,
    seed: int,
    vocab_sizes: Sequence[int] = VOCAB_SIZES,
    support: int = SUPPORT,
    query: int = QUERY,
) -> Batch:
    """Random W1 batch: ids uniform in each field's vocabulary, star ratings 1..5.

    Args:
      users: meta-batch size ``B``.
      seed: seed of the batch's own generator (the global RNG is not touched).
      vocab_sizes: number of ids of each field.
      support: support rows per user.
      query: query rows per user.

    Returns:
      A :class:`Batch`; ratings are integers 1..5 stored as float32.
    """
    if users < 1:
        raise ValueError(f"users={users}: pass a meta-batch of at least one user.")
    gen = torch.Generator().manual_seed(seed)

    def ids(rows: int) -> torch.Tensor:
        return torch.stack([torch.randint(0, v, (users, rows), generator=gen) for v in vocab_sizes], dim=-1)

    def ratings(rows: int) -> torch.Tensor:
        return torch.randint(1, 6, (users, rows), generator=gen).to(torch.float32)

    return Batch(ids(support), ratings(support), ids(query), ratings(query))


def make_mlp(in_features: int = len(VOCAB_SIZES) * EMBED_DIM) -> nn.Sequential:
    """The W1 network as an ``nn.Module``; its state dict keys are those of :func:`init_params`'s fast dict."""
    return nn.Sequential(
        nn.Linear(in_features, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, 1),
    )


def init_params(*, seed: int, vocab_sizes: Sequence[int] = VOCAB_SIZES) -> tuple[Fast, list[torch.Tensor]]:
    """Initial ``(fast, tables)``: He-normal layers with zero biases, embeddings normal(0, 0.1).

    Returns:
      ``fast``: ``{"0.weight": [64, 256], "0.bias": [64], "2.weight", "2.bias",
      "4.weight": [1, 64], "4.bias": [1]}`` (``nn.Linear`` layout, float32);
      ``tables``: one float32 ``[vocab, EMBED_DIM]`` table per field. None of
      them requires grad; each peer decides how it differentiates.
    """
    gen = torch.Generator().manual_seed(seed)
    tables = [0.1 * torch.randn(v, EMBED_DIM, generator=gen) for v in vocab_sizes]
    widths = (len(vocab_sizes) * EMBED_DIM, HIDDEN, HIDDEN, 1)
    fast = {}
    for layer, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        fast[f"{2 * layer}.weight"] = torch.randn(fan_out, fan_in, generator=gen) * (2.0 / fan_in) ** 0.5
        fast[f"{2 * layer}.bias"] = torch.zeros(fan_out)
    return fast, tables


def embed(tables: Sequence[torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Features ``[..., fields * EMBED_DIM]`` of int ids ``[..., fields]``: one lookup per field, concatenated."""
    return torch.cat([F.embedding(ids[..., f], table) for f, table in enumerate(tables)], dim=-1)


def mlp(fast: Fast, x: torch.Tensor) -> torch.Tensor:
    """Predictions ``[rows]`` of the MLP with weights ``fast`` on features ``x [rows, 256]``."""
    h = F.relu(F.linear(x, fast["0.weight"], fast["0.bias"]))
    h = F.relu(F.linear(h, fast["2.weight"], fast["2.bias"]))
    return F.linear(h, fast["4.weight"], fast["4.bias"]).squeeze(-1)


def mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the rows of one user."""
    return ((predictions - targets) ** 2).mean()


def check_run_args(variant: str, batch: int, steps: int, warmup: int) -> None:
    """Raises ``ValueError`` naming the bad ``run`` argument and what to pass instead."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: pass one of {VARIANTS}.")
    if batch < 1:
        raise ValueError(f"batch={batch}: pass a meta-batch of at least one user.")
    if steps < 1:
        raise ValueError(f"steps={steps}: pass at least one timed step.")
    if warmup < 0:
        raise ValueError(f"warmup={warmup}: pass a non-negative number of warm-up steps.")


def median_step_seconds(step: Callable[[], object], *, steps: int, warmup: int) -> float:
    """Runs ``step`` ``warmup`` times untimed, then ``steps`` times each timed with
    ``time.perf_counter``; returns the median seconds of one timed step."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def record(impl: str, variant: str, batch: int, step_s: float) -> dict:
    """The result record of one peer run (the same keys for every implementation)."""
    return {
        "impl": impl,
        "workload": "melu",
        "variant": variant,
        "batch": batch,
        "tasks_per_s": batch / step_s,
        "step_ms": 1e3 * step_s,
        "compile_s": None,
        "peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "padded_fraction": 0.0,
        "device": "cpu",
        "torch_version": torch.__version__,
    }


def run_peer(impl: str, make_step: Callable[..., Callable[[], object]], variant: str, batch: int, *,
             steps: int, warmup: int, seed: int) -> dict:
    """Times ``make_step(variant, fast, tables, batch)`` (a peer's step of W1) at meta-batch
    ``batch``; returns :func:`record`."""
    check_run_args(variant, batch, steps, warmup)
    fast, tables = init_params(seed=seed)
    step = make_step(variant, fast, tables, make_batch(batch, seed=seed + 1))
    return record(impl, variant, batch, median_step_seconds(step, steps=steps, warmup=warmup))


def main(run: Callable[..., dict], argv: Sequence[str] | None = None) -> None:
    """Command line of a peer module: parses ``--variant --batch --steps --warmup --seed``,
    calls ``run`` and prints its record as one JSON line."""
    parser = argparse.ArgumentParser(description="Time one W1 (melu) configuration of a PyTorch peer.")
    parser.add_argument("--variant", choices=VARIANTS, default="melu")
    parser.add_argument("--batch", type=int, default=32, help="users per outer step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.variant, args.batch, steps=args.steps, warmup=args.warmup, seed=args.seed)))
