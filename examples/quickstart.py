"""Meta-learn a recommender on the built-in synthetic data with the library API.

    python examples/quickstart.py --steps 500

Each user is a task; MAML learns an initialisation of the MLP (and shared item
embeddings) from which a few SGD steps on a new user's ratings give a good
personal model.
"""

import argparse

import optax

import jaxmeta
from jaxmeta.data import datasets
from jaxmeta.models import embedding_mlp
from jaxmeta.train import BatchStream, LogMetrics, StopOnNaN, fit


def main(steps: int) -> None:
    data = datasets.synthetic(seed=0)  # training users, validation users, the new users of "user_cold"
    model = embedding_mlp(data.vocab_sizes, output_bias=data.mean_rating)
    learner = jaxmeta.algorithms.maml(
        model, inner_optimizer=optax.sgd(0.03), inner_steps=5, outer_optimizer=optax.adam(3e-3)
    )
    # Fixed-shape batches of 32 users, bucketed by support size so little is padding, epoch after epoch;
    # fit runs one jit-compiled outer step per batch, and its hooks log and stop on a NaN loss.
    batches = BatchStream(data.train, batch_size=32, num_buckets=4, seed=0)
    log = LogMetrics(every=100)
    state = fit(learner, batches, steps=steps, seed=0, hooks=[StopOnNaN(), log], desc="maml")
    for record in log.history:
        print(f"step {record['step']}: query loss after adaptation {record['loss']:.4f}")

    new_users = jaxmeta.pad_tasks(data.scenarios["user_cold"])
    result = learner.evaluate(state, new_users)
    print(
        f"{int(result['tasks'])} new users: query MSE {float(result['query_loss_before']):.4f} before, "
        f"{float(result['query_loss_after']):.4f} after adapting to their support sets"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    main(parser.parse_args().steps)
