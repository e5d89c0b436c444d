"""jaxmeta.serve.NewUserRanker: the service's array path equals Recommender.recommend and .influence."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

from jaxmeta.serve import INFLUENCE_ROWS, NewUserRanker, Recommender
from test_serve import ENCODER, ITEM_TABLE, ITEMS, LEARNERS, MODEL

POPULARITY = {int(i): float(c) for i, c in zip(ITEMS, np.random.default_rng(3).integers(0, 4, len(ITEMS)))}


@pytest.fixture(scope="module")
def parts():
    """``{"maml": (learner, state), "ridge": ..., "ridge-implicit": ..., "ridge-vectors": ...}``: test_serve's MeLU
    MAML, and ridge on hybrid MeLU (what ``jaxmeta train --model hybrid --algo ridge [--implicit-prior
    [--implicit-vectors]]`` serves: raw item ids in the inputs, every item its own row)."""
    from jaxmeta import algorithms

    learner = LEARNERS["maml"](MODEL)
    hybrid = hybrid_of()
    ridge = algorithms.ridge(hybrid)
    state = ridge.init(jax.random.key(1))
    state = state._replace(params=jax.tree.map(lambda a: a + 0.1 * np.sin(np.arange(a.size).reshape(a.shape) + 2.0),
                                               state.params))
    implicit = algorithms.ridge(hybrid, implicit=True)  # the prior moved by the items rated (A made non-zero)
    hyper = implicit.init(jax.random.key(1)).hyper
    hyper = {**hyper, "implicit": 0.2 * np.cos(np.arange(hyper["implicit"].size)).reshape(hyper["implicit"].shape)}
    free = hybrid_of(implicit_vectors=True)  # the prior read through the items' free vectors (made non-zero)
    params = {**state.params, "implicit": 0.3 * np.sin(np.arange(len(ITEMS) - 1) * 4.0 + 1.0)[:, None]
              * np.cos(np.arange(4.0))[None, :]}
    return {"maml": (learner, learner.init(jax.random.key(0))), "ridge": (ridge, state),
            "ridge-implicit": (implicit, state._replace(hyper=hyper)),
            "ridge-vectors": (algorithms.ridge(free, implicit=True), state._replace(params=params, hyper=hyper))}


def hybrid_of(**options):
    from jaxmeta import models

    return models.hybrid_melu(ENCODER.spec, ITEMS[:-2], item_fields=ENCODER.table_columns("item")[1:],
                              factors=3, embed_dim=4, hidden=(8,), global_bias=3.0, **options)


ITEM_KEYS = {"maml": None, "ridge": "item_id", "ridge-implicit": "item_id", "ridge-vectors": "item_id"}


def new_users(sizes: list[int], seed: int = 0) -> pd.DataFrame:
    """Ratings of new users ``new0, new1, ...`` (absent from the encoder), ``sizes[u]`` distinct items each."""
    rng = np.random.default_rng(seed)
    rows = [(f"new{u}", int(item), float(rng.integers(1, 6)))
            for u, n in enumerate(sizes) for item in rng.choice(ITEMS, size=n, replace=False)]
    return pd.DataFrame(rows, columns=["user", "item", "rating"])


def supports(ratings: pd.DataFrame) -> list[tuple[list, list]]:
    return [(g["item"].tolist(), g["rating"].tolist()) for _, g in ratings.groupby("user", sort=False)]


# k=6: one explaining call; INFLUENCE_ROWS + 3: two, and new1 (9 rated of 20) has fewer items left than k
@pytest.mark.parametrize("k", [6, INFLUENCE_ROWS + 3])
@pytest.mark.parametrize("name", ["maml", "ridge", "ridge-implicit", "ridge-vectors"])
def test_rank_equals_recommend_and_influence_equals_the_recommenders(parts, k, name):
    learner, state = parts[name]
    # two users per batch, the distinct input rows scored 7 at a time (in 3 chunks)
    rec = Recommender(learner, state, ENCODER, ITEMS, popularity=POPULARITY, batch_size=2, candidate_chunk=7,
                      item_key=ITEM_KEYS[name])
    ratings = new_users([2, 9, 4])  # support sizes padded to 8, 16 and 8: two batches
    ranker = NewUserRanker(rec, k=k)
    got = ranker.rank(supports(ratings), explain=True)
    top = rec.recommend(ratings, k=k)
    table = rec.influence(ratings, top[["user", "item"]])
    for n, ranking in enumerate(got):
        expected = top[top["user"] == f"new{n}"]
        assert ranking.items.tolist() == expected["item"].tolist()
        np.testing.assert_allclose(ranking.scores, expected["score"], rtol=1e-5, atol=1e-5)
        mine = table[table["user"] == f"new{n}"]
        assert ranking.influence.shape == (len(expected), (ratings["user"] == f"new{n}").sum())
        np.testing.assert_allclose(ranking.influence.ravel(), mine["influence"], rtol=1e-4, atol=1e-6)
        assert np.abs(ranking.influence).max() > 0  # the adaptation reads the ratings
    if name != "maml":  # the raw ids make every item its own input row (items 103 and 105 share features)
        assert ranker.distinct == len(ITEMS)
    if name.startswith("ridge-"):  # the same parameters with the fixed prior (or the tied rows) score otherwise
        for other in ("ridge", "ridge-implicit")[: 1 + (name == "ridge-vectors")]:
            fixed = Recommender(*parts[other], ENCODER, ITEMS, popularity=POPULARITY, item_key="item_id")
            assert not np.allclose(fixed.recommend(ratings, k=k)["score"], top["score"], atol=1e-3)


def test_items_described_alike_share_one_input_row_and_tie_by_popularity(parts):
    learner, state = parts["maml"]
    for counts, first in (({**POPULARITY, 103: 9.0, 105: 1.0}, 103), ({**POPULARITY, 103: 1.0, 105: 9.0}, 105)):
        rec = Recommender(learner, state, ENCODER, ITEMS, popularity=counts)
        ranker = NewUserRanker(rec)
        assert ranker.distinct == len(ITEM_TABLE.astype(str).drop_duplicates(["genres", "year"]))  # 103, 105, 111
        [ranking] = ranker.rank([([100], [4.0])], seen=[[]])  # nothing excluded: every item ranked
        order = ranking.items.tolist()
        assert len(order) == len(ITEMS) and order.index(first) < order.index(208 - first)
        assert ranking.scores[order.index(103)] == ranking.scores[order.index(105)]
        assert order == rec.recommend(pd.DataFrame({"user": ["x"], "item": [100], "rating": [4.0]}),
                                      k=len(ITEMS), exclude_seen=False)["item"].tolist()


def test_seen_items_are_left_out_and_k_cuts_the_ranking(parts):
    learner, state = parts["maml"]
    ranker = NewUserRanker(Recommender(learner, state, ENCODER, ITEMS), k=len(ITEMS))
    seen = [int(i) for i in ITEMS[:-3]]  # every item but three
    [full, cut, everything] = ranker.rank([([100, 101], [5.0, 1.0])] * 3, seen=[seen, [100, 101], ITEMS], k=3)
    assert sorted(full.items.tolist()) == sorted(ITEMS[-3:].tolist())
    assert len(cut.items) == 3 and not {100, 101} & set(cut.items.tolist()) and cut.influence is None
    assert len(everything.items) == 0 and everything.scores.shape == (0,)
    assert np.all(np.diff(cut.scores) <= 0)


def test_bad_input(parts):
    learner, state = parts["maml"]
    ranker = NewUserRanker(Recommender(learner, state, ENCODER, ITEMS), k=5)
    with pytest.raises(ValueError, match=r"item 999 is not an item of the recommender"):
        ranker.rank([([100, 999], [4.0, 3.0])])
    with pytest.raises(ValueError, match=r"supports\[1\] rates an item more than once: pass each item's latest"):
        ranker.rank([([100], [4.0]), ([101, 100, 101], [4.0, 3.0, 1.0])])
    with pytest.raises(ValueError, match=r"supports\[1\] has no rating"):
        ranker.rank([([100], [4.0]), ([], [])])
    with pytest.raises(ValueError, match=r"k=6: this ranker holds at most 5 items"):
        ranker.rank([([100], [4.0])], k=6)
    with pytest.raises(ValueError, match=r"k="):
        NewUserRanker(Recommender(learner, state, ENCODER, ITEMS), k=0)
    with pytest.raises(ValueError, match=r"min_tasks="):
        NewUserRanker(Recommender(learner, state, ENCODER, ITEMS), min_tasks=0)


def test_a_lone_user_is_one_task_slot_and_ranks_as_in_a_padded_call(parts):
    learner, state = parts["maml"]
    rec = Recommender(learner, state, ENCODER, ITEMS, popularity=POPULARITY)
    lone = supports(new_users([5], seed=4))
    ranker = NewUserRanker(rec)
    [(items, ratings)] = lone
    x, y = [{f: a[ranker.positions(items)] for f, a in ranker.inputs.items()}], [np.asarray(ratings, np.float32)]
    assert {m: [b.num_tasks for _, b in rec._support_batches(x, y, m)] for m in (1, 8)} == {1: [1], 8: [8]}
    alone, padded = (NewUserRanker(rec, k=6, min_tasks=m).rank(lone, explain=True)[0] for m in (1, 8))
    assert alone.items.tolist() == padded.items.tolist()
    np.testing.assert_allclose(alone.scores, padded.scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alone.influence, padded.influence, rtol=1e-4, atol=1e-6)
    assert np.abs(alone.influence).max() > 0
