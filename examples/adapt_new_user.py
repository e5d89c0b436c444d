"""Adapt a meta-learned MeLU to one new MovieLens user and watch their recommendations change.

    python examples/adapt_new_user.py --steps 200
    python examples/adapt_new_user.py --run runs/ml100k   # from: jaxmeta train --data ml-100k --out runs/ml100k

Notebook-style: the ``# %%`` cells run one at a time in VS Code, Spyder or
Jupyter (through jupytext), or all together as a script. It meta-trains a small
MeLU with MAML on ML-100K's training users for a few steps (or loads a run of
``jaxmeta train`` with ``--run``: an ML-100K run with the default data seed, so
that the test users are the ones it never saw), takes one test user's ratings
as a plain ``user, item, rating`` table, and serves them with
:class:`jaxmeta.serve.Recommender`: their top 10 before adaptation (the
meta-learned initialisation, as for a user with no ratings) and after it (5 SGD
steps on their ratings), then the scores of the movies they rated but the model
was not shown.

The files are read in place from ``--data-dir`` (default ``$JAXMETA_DATA``,
else ``../shared/data``), the folder holding ``ml-100k/``.
"""

# %% Settings
import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import optax
import pandas as pd

from jaxmeta import algorithms
from jaxmeta.data import datasets, movielens
from jaxmeta.models import melu
from jaxmeta.serve import Recommender
from jaxmeta.train import BatchStream, LogMetrics, fit

# A literal description, not __doc__: run cell by cell, there is no module docstring.
parser = argparse.ArgumentParser(description="Adapt a meta-learned MeLU to one new MovieLens user.")
parser.add_argument("--data-dir", default=os.environ.get("JAXMETA_DATA", "../shared/data"),
                    help="the folder holding ml-100k/")
parser.add_argument("--steps", type=int, default=200, help="MAML steps (when not loading a run)")
parser.add_argument("--run", help="serve this jaxmeta train --out folder instead of training")
args, _ = parser.parse_known_args()  # known args only: a notebook kernel passes flags of its own

folder = Path(args.data_dir) / "ml-100k"
if not folder.is_dir():
    sys.exit(f"MovieLens data not found: {folder} is not a folder. Pass --data-dir (or set JAXMETA_DATA) "
             "to the folder holding ml-100k/.")

# %% The data: ML-100K's users as tasks; the test users ("user_cold") never train
# item_field: the movie id as one more MeLU feature. ML-100K's only movie feature is
# otherwise its genres, and every movie of one genre mix would score the same.
data = datasets.movielens("ml-100k", args.data_dir, item_field=True)
titles = movielens.load_ml100k_items(folder).set_index("item")["title"]
print(f"{len(data.train)} training users, {len(data.scenarios['user_cold'])} test users, {len(titles)} movies")

# %% A meta-learned recommender: a small MeLU trained with MAML here, or a saved run
if args.run:
    rec = Recommender.load(args.run)
    print(f"loaded {args.run}")
else:
    model = melu(data.encoder.spec, embed_dim=16, hidden=(32, 32), output_bias=data.mean_rating)
    outer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    learner = algorithms.maml(model, inner_optimizer=optax.sgd(0.1), inner_steps=5, outer_optimizer=outer)
    log = LogMetrics(every=args.steps)
    state = fit(learner, BatchStream(data.train, batch_size=32, num_buckets=1, resplit=True, seed=0),
                steps=args.steps, hooks=[log], desc="maml")
    print(f"trained {args.steps} MAML steps: query loss after adaptation {log.history[-1]['loss']:.4f}")
    rec = Recommender(learner, state, data.encoder, data.encoder.ids("item"))


def unadapted(learner: algorithms.MetaLearner) -> algorithms.MetaLearner:
    """``learner`` scoring every user as if they had no ratings.

    A user with no support rows is not adapted: the fast weights stay at the
    meta-learned initialisation.
    """
    def adapt(state, batch):
        return learner.adapt(state, batch._replace(support_mask=np.zeros_like(batch.support_mask)))

    return learner._replace(adapt=adapt)


before = dataclasses.replace(rec, learner=unadapted(rec.learner))

# %% One test user's ratings, as a serving system would hold them
test = data.scenarios["user_cold"]
i = int(np.argmax(test.support_sizes))  # the test user with the most ratings to adapt on
rated, held = test.support_x[i]["item_id"], test.query_x[i]["item_id"]
# The tasks keep item ids, not user ids: find the user with exactly these movies
# (every one of their ratings is in the task; ML-100K has one rating per user and movie).
raw = movielens.load_ml100k_ratings(folder)
movies = set(rated.tolist()) | set(held.tolist())
user = next(u for u, items in raw.groupby("user")["item"] if set(items.tolist()) == movies)
ratings = pd.DataFrame({"user": user, "item": rated, "rating": test.support_y[i]})
held_out = pd.DataFrame({"item": held, "rating": test.query_y[i]})  # hidden from the model

profile = movielens.load_ml100k_users(folder).set_index("user").loc[user]
print(f"user {user} ({profile['age']}, {profile['gender']}, {profile['occupation']}): {len(ratings)} ratings "
      f"to adapt on, {len(held_out)} held out")
favourites = ratings.sort_values("rating", ascending=False, kind="stable").head(5)
print("their highest rated:", "; ".join(f"{titles[m]} ({r:.0f})" for m, r in zip(favourites["item"],
                                                                                favourites["rating"])))

# %% Their top 10, before and after adapting to their ratings
top = {name: r.recommend(ratings, k=10)["item"].to_numpy() for name, r in (("before", before), ("after", rec))}
print(pd.DataFrame({f"top-10 {name} adaptation": titles[items].to_numpy() for name, items in top.items()},
                   index=pd.RangeIndex(1, 11, name="rank")).to_string())
print(f"{len(set(top['before']) & set(top['after']))} of 10 movies in both lists")

# %% Score chosen movies: the ones they rated that the model was not shown
scores = held_out.assign(
    title=titles[held_out["item"]].to_numpy(),
    before=before.score(ratings, held_out["item"])["score"].to_numpy(),
    after=rec.score(ratings, held_out["item"])["score"].to_numpy(),
)
print(scores[["title", "rating", "before", "after"]].round(2).to_string(index=False))
error = {name: float(np.abs(scores[name] - scores["rating"]).mean()) for name in ("before", "after")}
print(f"held-out MAE of this user: {error['before']:.3f} before adaptation, {error['after']:.3f} after")
