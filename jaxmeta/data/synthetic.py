"""Synthetic few-shot recommendation data with a planted structure (the built-in default).

Users have latent tastes, items latent attributes; a rating is
``base + item_bias + <taste, attributes> / sqrt(dim) + noise``. What a model can see
per rating is three categorical fields: the user's group (a coarse side feature
that explains part of the taste), the item id and the item's genre (which
explains part of its attributes). The rest of a user's taste is only visible
through their ratings, so a new user is predicted well only by adapting to their
support set. Warm (training) and new users are drawn from the same distribution
and differ only through their tastes: new users are fresh draws.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxmeta._checks import positive_int

from jaxmeta.tasks import RaggedTasks

FIELDS = ("user_group", "item", "item_genre")


class SyntheticData(NamedTuple):
    """Meta-training users and held-out new users, as ragged per-user tasks."""

    train: RaggedTasks  # warm users, for meta-training
    new: RaggedTasks  # new users, for cold-start evaluation
    vocab_sizes: tuple[int, int, int]  # number of ids of each field of FIELDS
    mean_rating: float  # mean training rating (a good initial output bias)


def generate(
    *,
    num_train_users: int = 2000,
    num_new_users: int = 500,
    num_items: int = 300,
    num_genres: int = 10,
    num_groups: int = 5,
    latent_dim: int = 4,
    support_range: tuple[int, int] = (5, 20),
    query_size: int = 10,
    noise: float = 0.3,
    seed: int = 0,
) -> SyntheticData:
    """Draws the data; the same ``seed`` always gives the same data.

    Args:
      num_train_users, num_new_users: users of each kind.
      num_items, num_genres, num_groups: sizes of the item catalogue and of the
        two coarse categorical features.
      latent_dim: dimension of tastes and attributes.
      support_range: inclusive range of each user's support size (uniform).
      query_size: query ratings per user.
      noise: standard deviation of the rating noise.
      seed: random seed.

    Returns:
      SyntheticData; inputs are int32 ``[rows, 3]`` ids of (user group, item,
      item genre), targets float32 ratings.

    Example:
      >>> data = generate(num_train_users=10, num_new_users=5, seed=1)
      >>> len(data.train), len(data.new), data.vocab_sizes
      (10, 5, (5, 300, 10))
    """
    lo, hi = support_range
    if not 1 <= lo <= hi or hi + query_size > num_items:
        raise ValueError(
            f"support_range={support_range} with query_size={query_size} and num_items={num_items}: "
            "pass 1 <= low <= high and high + query_size <= num_items."
        )
    counts = dict(
        num_train_users=num_train_users,
        num_new_users=num_new_users,
        num_genres=num_genres,
        num_groups=num_groups,
        latent_dim=latent_dim,
        query_size=query_size,
    )
    for name, value in counts.items():
        positive_int(name, value)
    rng = np.random.default_rng(seed)
    genre = rng.integers(num_genres, size=num_items)
    attributes = rng.normal(size=(num_genres, latent_dim))[genre] + 0.7 * rng.normal(size=(num_items, latent_dim))
    item_bias = 0.3 * rng.normal(size=num_items)
    mean_taste = 0.5 * rng.normal(size=latent_dim)
    group_taste = 0.6 * rng.normal(size=(num_groups, latent_dim))

    num_users = num_train_users + num_new_users
    group = rng.integers(num_groups, size=num_users)
    taste = mean_taste + group_taste[group] + rng.normal(size=(num_users, latent_dim))

    users = []
    for u in range(num_users):
        n_support = int(rng.integers(lo, hi + 1))
        items = rng.choice(num_items, size=n_support + query_size, replace=False)
        x = np.stack([np.full_like(items, group[u]), items, genre[items]], axis=1).astype(np.int32)
        y = 3.5 + item_bias[items] + attributes[items] @ taste[u] / np.sqrt(latent_dim)
        y = (y + noise * rng.normal(size=len(items))).astype(np.float32)
        users.append((x[:n_support], y[:n_support], x[n_support:], y[n_support:]))

    def tasks(part):
        return RaggedTasks(*(list(field) for field in zip(*part)))

    train = tasks(users[:num_train_users])
    mean_rating = float(np.mean(np.concatenate(train.support_y + train.query_y)))
    return SyntheticData(train, tasks(users[num_train_users:]), (num_groups, num_items, num_genres), mean_rating)
