"""Meta-learn a Flax NNX model: any module plugs in through ``from_nnx``.

    python examples/flax_nnx.py --steps 300

The module maps one user's rows of ids to ratings. Its embedding tables are
declared slow (meta-learned only) and its MLP fast (adapted per user) with a
predicate on parameter paths; the engine sees only a dict of arrays.
"""

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxmeta
from jaxmeta.data import datasets
from jaxmeta.models import from_nnx
from jaxmeta.train import BatchStream, StopOnNaN, fit


class Recommender(nnx.Module):
    def __init__(self, vocab_sizes, *, rngs: nnx.Rngs, dim: int = 8, hidden: int = 32):
        self.embeddings = nnx.List([nnx.Embed(v, dim, rngs=rngs) for v in vocab_sizes])
        self.hidden = nnx.Linear(dim * len(vocab_sizes), hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        h = jnp.concatenate([emb(ids[:, f]) for f, emb in enumerate(self.embeddings)], axis=-1)
        return self.out(nnx.relu(self.hidden(h)))[:, 0]


def main(steps: int) -> None:
    data = datasets.synthetic(seed=0)
    model = from_nnx(
        lambda rngs: Recommender(data.vocab_sizes, rngs=rngs),
        is_fast=lambda path: path[0] in ("hidden", "out"),
        is_head=lambda path: path[0] == "out",
    )
    learner = jaxmeta.algorithms.maml(model, inner_optimizer=optax.sgd(0.03), outer_optimizer=optax.adam(3e-3))
    # The driver's loop: bucketed fixed-shape batches, progress bar, divergence check.
    state = fit(learner, BatchStream(data.train, batch_size=32, seed=0), steps=steps, hooks=[StopOnNaN()], desc="nnx")
    result = learner.evaluate(state, jaxmeta.pad_tasks(data.scenarios["user_cold"]))
    print(
        f"NNX model, {int(result['tasks'])} new users: query MSE {float(result['query_loss_before']):.4f} "
        f"before, {float(result['query_loss_after']):.4f} after adaptation"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    main(parser.parse_args().steps)
