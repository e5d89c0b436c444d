"""W1 (``melu``) with ``torch.func``: pure per-user functions, ``vmap`` over users.

The per-user code is written for ONE user, as jaxmeta's is: the inner loop takes
``INNER_STEPS`` plain-SGD steps on the support loss with ``torch.func.grad``, and
``torch.func.vmap`` batches it over the users of the meta-batch. The embedding
lookups run once per batch before the inner loop (features ``[users, rows, 256]``),
so the inner steps never repeat them.

The outer gradient is ordinary autograd ``.backward()`` through the vmapped
inner loop: ``torch.func.grad`` keeps the graph of each inner gradient, so the
meta-gradient is the full second-order MAML gradient with respect to the initial
fast weights and the embedding tables (``check_peers`` compares it with a
per-user ``create_graph=True`` loop). ``first_order`` detaches each inner
gradient, so the tables get their gradient from the query features only.

Run as ``python -m bench.peers.torch_func --variant melu --batch 32``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.func import grad, vmap

from . import w1_torch
from .w1_torch import INNER_LR, INNER_STEPS, OUTER_LR, Batch, Fast


def user_loss(fast: Fast, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One user's MSE on features ``x [rows, 256]`` and ratings ``y [rows]``."""
    return w1_torch.mse(w1_torch.mlp(fast, x), y)


def adapt(fast: Fast, x: torch.Tensor, y: torch.Tensor, *, first_order: bool) -> Fast:
    """One user's fast weights after ``INNER_STEPS`` SGD steps on its support set.

    With ``first_order`` each inner gradient is detached (a constant), so that
    ``d adapted / d fast`` is the identity and nothing flows back through the
    support features.
    """
    for _ in range(INNER_STEPS):
        grads = grad(user_loss)(fast, x, y)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        fast = {k: w - INNER_LR * grads[k] for k, w in fast.items()}
    return fast


def features(tables: Sequence[torch.Tensor], batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Support and query features ``[users, rows, 256]``, looked up once per batch."""
    return w1_torch.embed(tables, batch.support_ids), w1_torch.embed(tables, batch.query_ids)


def outer_loss(fast: Fast, tables: Sequence[torch.Tensor], batch: Batch, *, first_order: bool) -> torch.Tensor:
    """Mean over users of the query loss after adaptation (the MAML objective)."""

    def query_loss(xs, ys, xq, yq):
        return user_loss(adapt(fast, xs, ys, first_order=first_order), xq, yq)

    xs, xq = features(tables, batch)
    return vmap(query_loss)(xs, batch.support_y, xq, batch.query_y).mean()


@torch.no_grad()
def predict(fast: Fast, tables: Sequence[torch.Tensor], batch: Batch) -> torch.Tensor:
    """Query predictions ``[users, query]`` after adaptation (the serving path).

    ``torch.func.grad`` ignores the surrounding ``no_grad``, so the inner
    gradients are still computed; nothing is recorded for an outer gradient.
    """

    def user_predict(xs, ys, xq):
        return w1_torch.mlp(adapt(fast, xs, ys, first_order=True), xq)

    xs, xq = features(tables, batch)
    return vmap(user_predict)(xs, batch.support_y, xq)


def make_step(variant: str, fast: Fast, tables: list[torch.Tensor], batch: Batch) -> Callable[[], object]:
    """One timed step of ``variant``: an Adam outer step, or adaptation and prediction.

    ``fast`` and ``tables`` are made leaves that require grad, and the outer
    optimizer updates them in place.
    """
    if variant == "melu-adapt":
        return lambda: predict(fast, tables, batch)
    params = [p.requires_grad_() for p in (*fast.values(), *tables)]
    optimizer = torch.optim.Adam(params, lr=OUTER_LR)
    first_order = variant == "melu-fo"

    def step():
        optimizer.zero_grad(set_to_none=True)
        outer_loss(fast, tables, batch, first_order=first_order).backward()
        optimizer.step()

    return step


def run(variant: str, batch: int, *, steps: int = 10, warmup: int = 2, seed: int = 0) -> dict:
    """Times ``variant`` of W1 at meta-batch ``batch``; returns the peer record
    (see :func:`bench.peers.w1_torch.record`)."""
    return w1_torch.run_peer("torch.func", make_step, variant, batch, steps=steps, warmup=warmup, seed=seed)


if __name__ == "__main__":
    w1_torch.main(run)
