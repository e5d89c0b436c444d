"""W1 (``melu``) with learn2learn, written as its users write MAML.

The MLP is wrapped in ``l2l.algorithms.MAML(mlp, lr=INNER_LR, first_order=...)``;
the embedding tables (the slow weights) are ``nn.Embedding`` modules outside
the wrapper. An outer step loops over the users of the batch in Python: look up
the user's support and query features, ``learner = maml.clone()``, ``INNER_STEPS``
times ``learner.adapt(support_loss)``, then ``(query_loss / B).backward()``,
which accumulates the meta-gradient of the MLP initialisation and the tables;
one Adam step on both follows. Second order unless ``first_order``, in which
case learn2learn takes each inner gradient without ``create_graph``.

``melu-adapt`` (the serving path) adapts clones with ``first_order=True`` on
features looked up without gradient tracking and predicts under
``torch.no_grad``: the same predictions as second-order adaptation, without
building graphs that no outer gradient would use.

Needs learn2learn, installed by ``python -m bench.peers.install_learn2learn``.
Run as ``python -m bench.peers.learn2learn_peer --variant melu --batch 32``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import learn2learn as l2l
import torch
from torch import nn

from . import w1_torch
from .w1_torch import INNER_LR, INNER_STEPS, OUTER_LR, Batch, Fast


def build(
    fast: Fast, tables: Sequence[torch.Tensor], *, first_order: bool
) -> tuple[l2l.algorithms.MAML, nn.ModuleList]:
    """``(maml, embeddings)`` holding copies of ``fast`` and ``tables``."""
    mlp = w1_torch.make_mlp()
    mlp.load_state_dict(fast)
    maml = l2l.algorithms.MAML(mlp, lr=INNER_LR, first_order=first_order)
    embeddings = nn.ModuleList(nn.Embedding.from_pretrained(t.clone(), freeze=False) for t in tables)
    return maml, embeddings


def embed(embeddings: nn.ModuleList, ids: torch.Tensor) -> torch.Tensor:
    """Features ``[rows, 256]`` of one user's ids ``[rows, fields]``."""
    return torch.cat([e(ids[:, f]) for f, e in enumerate(embeddings)], dim=-1)


def adapt(learner: l2l.algorithms.MAML, x: torch.Tensor, y: torch.Tensor) -> None:
    """``INNER_STEPS`` learn2learn adaptation steps of a clone on one user's support set."""
    for _ in range(INNER_STEPS):
        learner.adapt(w1_torch.mse(learner(x).squeeze(-1), y))


def accumulate_meta_gradient(maml: l2l.algorithms.MAML, embeddings: nn.ModuleList, batch: Batch) -> None:
    """Adds the batch's mean query loss gradient to ``.grad`` of the MLP and the tables, user by user."""
    users = batch.support_ids.shape[0]
    for u in range(users):
        learner = maml.clone()
        adapt(learner, embed(embeddings, batch.support_ids[u]), batch.support_y[u])
        query_loss = w1_torch.mse(learner(embed(embeddings, batch.query_ids[u])).squeeze(-1), batch.query_y[u])
        (query_loss / users).backward()


def predict(maml: l2l.algorithms.MAML, embeddings: nn.ModuleList, batch: Batch) -> torch.Tensor:
    """Query predictions ``[users, query]`` after adaptation, user by user."""
    predictions = []
    for u in range(batch.support_ids.shape[0]):
        with torch.no_grad():
            support_x = embed(embeddings, batch.support_ids[u])
            query_x = embed(embeddings, batch.query_ids[u])
        learner = maml.clone(first_order=True)
        adapt(learner, support_x, batch.support_y[u])
        with torch.no_grad():
            predictions.append(learner(query_x).squeeze(-1))
    return torch.stack(predictions)


def make_step(variant: str, fast: Fast, tables: Sequence[torch.Tensor], batch: Batch) -> Callable[[], object]:
    """One timed step of ``variant``: an Adam outer step, or adaptation and prediction."""
    maml, embeddings = build(fast, tables, first_order=variant == "melu-fo")
    if variant == "melu-adapt":
        return lambda: predict(maml, embeddings, batch)
    optimizer = torch.optim.Adam([*maml.parameters(), *embeddings.parameters()], lr=OUTER_LR)

    def step():
        optimizer.zero_grad(set_to_none=True)
        accumulate_meta_gradient(maml, embeddings, batch)
        optimizer.step()

    return step


def run(variant: str, batch: int, *, steps: int = 10, warmup: int = 2, seed: int = 0) -> dict:
    """Times ``variant`` of W1 at meta-batch ``batch``; returns the peer record
    (see :func:`bench.peers.w1_torch.record`)."""
    return w1_torch.run_peer("learn2learn", make_step, variant, batch, steps=steps, warmup=warmup, seed=seed)


if __name__ == "__main__":
    w1_torch.main(run)
