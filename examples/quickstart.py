"""Meta-learn a recommender on the built-in synthetic data with the library API.

    python examples/quickstart.py --steps 500

Each user is a task; MAML learns an initialisation of the MLP (and shared item
embeddings) from which a few SGD steps on a new user's ratings give a good
personal model.
"""

import argparse

import jax
import numpy as np
import optax

import jaxmeta
from jaxmeta.data import synthetic
from jaxmeta.models import embedding_mlp


def main(steps: int) -> None:
    data = synthetic.generate(seed=0)
    model = embedding_mlp(data.vocab_sizes, output_bias=data.mean_rating)
    learner = jaxmeta.algorithms.maml(
        model, inner_optimizer=optax.sgd(0.03), inner_steps=5, outer_optimizer=optax.adam(3e-3)
    )
    state = learner.init(jax.random.key(0))

    # Fixed-shape batches of 32 users, bucketed by support size so little is padding.
    rng = np.random.default_rng(0)
    buckets = jaxmeta.bucket_by_support(data.train.support_sizes, num_buckets=4)
    step = 0
    while step < steps:
        for batch in jaxmeta.epoch_batches(data.train, 32, rng=rng, buckets=buckets):
            state, metrics = learner.step(state, batch)  # one jit-compiled outer step
            step += 1
            if step % 100 == 0:
                print(f"step {step}: query loss after adaptation {float(metrics['loss']):.4f}")
            if step == steps:
                break

    new_users = jaxmeta.pad_tasks(data.new)
    result = learner.evaluate(state, new_users)
    print(
        f"{int(result['tasks'])} new users: query MSE {float(result['query_loss_before']):.4f} before, "
        f"{float(result['query_loss_after']):.4f} after adapting to their support sets"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    main(parser.parse_args().steps)
