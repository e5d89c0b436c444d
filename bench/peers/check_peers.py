"""Checks that the PyTorch peers compute W1's meta-gradient, on a tiny case.

A plain per-user autograd loop (``create_graph=True`` in each inner step) is the
reference; a central finite difference in float64 first confirms that it is the
true gradient of the MAML objective. Then, in float32 as the peers run:

* torch.func's second-order gradient equals the reference's;
* torch.func's first-order gradient equals the reference loop's with
  ``create_graph=False``, and differs from the second-order one;
* learn2learn's gradients equal the reference's, second and first order;
* both peers' adapted query predictions agree.

Gradients cover the initial fast weights and all eight embedding tables. Not a
pytest test because torch and learn2learn are optional (the ``peers`` extra).
Run from the repository root::

    python -m bench.peers.check_peers
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch

from . import learn2learn_peer, torch_func, w1_torch
from .w1_torch import INNER_LR, INNER_STEPS, Batch, Fast

VOCAB_SIZES = (3, 4, 5, 6, 3, 4, 5, 6)  # small tables, so every row gets gradient
USERS = 2
TOLERANCE = 1e-5  # max |difference| over all gradient entries, float32
FO_MIN_DIFFERENCE = 1e-3  # first order must differ from second order by at least this

Gradients = dict[str, torch.Tensor]
Loss = Callable[[Fast, list[torch.Tensor], Batch], torch.Tensor]


def reference_outer_loss(
    fast: Fast, tables: Sequence[torch.Tensor], batch: Batch, *, first_order: bool
) -> torch.Tensor:
    """Mean query loss after adaptation, one user at a time with plain autograd.

    Each inner gradient is taken with ``create_graph=not first_order``, so that
    the second-order loss can be differentiated through the inner loop.
    """
    users = batch.support_ids.shape[0]
    total = 0.0
    for u in range(users):
        support_x = w1_torch.embed(tables, batch.support_ids[u])
        params = dict(fast)
        for _ in range(INNER_STEPS):
            loss = w1_torch.mse(w1_torch.mlp(params, support_x), batch.support_y[u])
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
            params = {k: w - INNER_LR * g for (k, w), g in zip(params.items(), grads, strict=True)}
        query_x = w1_torch.embed(tables, batch.query_ids[u])
        total = total + w1_torch.mse(w1_torch.mlp(params, query_x), batch.query_y[u]) / users
    return total


def leaves(fast: Fast, tables: Sequence[torch.Tensor]) -> tuple[Fast, list[torch.Tensor]]:
    """Fresh copies of the parameters that require grad."""
    return {k: w.clone().requires_grad_() for k, w in fast.items()}, [t.clone().requires_grad_() for t in tables]


def named(fast: Fast, tables: Sequence[torch.Tensor]) -> Gradients:
    """``{"0.weight": ..., "table0": ...}``: the gradients of ``fast`` and ``tables``."""
    return {**{k: w.grad for k, w in fast.items()}, **{f"table{f}": t.grad for f, t in enumerate(tables)}}


def autograd_gradients(loss_fn: Loss, fast: Fast, tables: Sequence[torch.Tensor], batch: Batch) -> Gradients:
    """Gradients of ``loss_fn(fast, tables, batch)`` with respect to every parameter."""
    fast, tables = leaves(fast, tables)
    loss_fn(fast, tables, batch).backward()
    return named(fast, tables)


def learn2learn_gradients(fast: Fast, tables: Sequence[torch.Tensor], batch: Batch, *, first_order: bool) -> Gradients:
    """learn2learn's accumulated meta-gradient, named as :func:`named` names them."""
    maml, embeddings = learn2learn_peer.build(fast, tables, first_order=first_order)
    learn2learn_peer.accumulate_meta_gradient(maml, embeddings, batch)
    return {
        **{k: w.grad for k, w in maml.module.named_parameters()},
        **{f"table{f}": e.weight.grad for f, e in enumerate(embeddings)},
    }


def max_difference(a: Gradients, b: Gradients) -> float:
    """Largest absolute difference over all entries of two same-named tensor sets."""
    if a.keys() != b.keys():
        raise AssertionError(f"gradient names differ: {sorted(a)} vs {sorted(b)}")
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def expect_equal(name: str, got: Gradients, want: Gradients) -> None:
    """Prints an OK line if ``got`` matches ``want`` to :data:`TOLERANCE`, else raises ``AssertionError``."""
    diff = max_difference(got, want)
    scale = max(float(w.abs().max()) for w in want.values())
    if not diff <= TOLERANCE:
        raise AssertionError(f"{name}: max |difference| {diff:.3g} > {TOLERANCE:g} (max |value| {scale:.3g})")
    print(f"OK {name}: max |difference| {diff:.2g} (max |value| {scale:.2g})")


def check_finite_difference(fast: Fast, tables: Sequence[torch.Tensor], batch: Batch) -> None:
    """The reference second-order gradient matches a central difference of the loss (float64)."""
    fast = {k: w.double() for k, w in fast.items()}
    tables = [t.double() for t in tables]
    batch = batch._replace(support_y=batch.support_y.double(), query_y=batch.query_y.double())

    loss = partial(reference_outer_loss, first_order=False)
    grads = autograd_gradients(loss, fast, tables, batch)
    gen = torch.Generator().manual_seed(1)
    direction = {k: torch.randn(g.shape, generator=gen, dtype=torch.float64) for k, g in grads.items()}
    eps = 1e-6

    def shifted(sign: float) -> float:
        f = {k: w + sign * eps * direction[k] for k, w in fast.items()}
        t = [w + sign * eps * direction[f"table{i}"] for i, w in enumerate(tables)]
        return loss(*leaves(f, t), batch).item()  # leaves: the inner loop differentiates them

    numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
    analytic = float(sum((grads[k] * direction[k]).sum() for k in grads))
    relative = abs(numeric - analytic) / abs(numeric)
    if not relative <= 1e-6:
        raise AssertionError(f"reference gradient: directional derivative {analytic} vs finite difference {numeric}")
    print(
        f"OK reference gradient = finite difference (float64): {analytic:.10g} vs {numeric:.10g}, rel. {relative:.1g}"
    )


def main() -> None:
    """Runs every check; raises ``AssertionError`` at the first mismatch."""
    fast, tables = w1_torch.init_params(seed=0, vocab_sizes=VOCAB_SIZES)
    batch = w1_torch.make_batch(USERS, seed=1, vocab_sizes=VOCAB_SIZES)
    check_finite_difference(fast, tables, batch)

    want = {
        first_order: autograd_gradients(partial(reference_outer_loss, first_order=first_order), fast, tables, batch)
        for first_order in (False, True)
    }
    for first_order, label in ((False, "second order"), (True, "first order")):
        got = autograd_gradients(partial(torch_func.outer_loss, first_order=first_order), fast, tables, batch)
        expect_equal(f"torch.func {label} = per-user autograd loop", got, want[first_order])
        expect_equal(
            f"learn2learn {label} = per-user autograd loop",
            learn2learn_gradients(fast, tables, batch, first_order=first_order),
            want[first_order],
        )

    gap = max_difference(want[True], want[False])
    if not gap >= FO_MIN_DIFFERENCE:
        raise AssertionError(
            f"first- and second-order gradients differ by only {gap:.3g}; the check cannot tell them apart"
        )
    print(f"OK first order differs from second order: max |difference| {gap:.2g}")

    maml, embeddings = learn2learn_peer.build(fast, tables, first_order=False)
    expect_equal(
        "adapted predictions: torch.func = learn2learn",
        {"predictions": torch_func.predict(fast, tables, batch)},
        {"predictions": learn2learn_peer.predict(maml, embeddings, batch)},
    )


if __name__ == "__main__":
    main()
