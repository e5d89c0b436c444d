"""jaxmeta.serve: serving scores equal the evaluation path's; ranking, exclusion, errors, compilation."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pandas as pd
import pytest

from jaxmeta import algorithms, models
from jaxmeta.data import splits
from jaxmeta.data.features import FeatureEncoder
from jaxmeta.serve import Recommender
from jaxmeta.tasks import pad_tasks

ITEMS = np.arange(100, 120)  # the catalogue; items 103 and 105 have the same features (a tie)
GENRES = [("a",), ("b",), ("a", "b"), ("c",), (), ("c",)] + [(("a", "b", "c")[i % 3],) for i in range(14)]
YEARS = [1990.0, 1995.0, 2000.0, 1985.0, 1999.0, 1985.0] + [1980.0 + i for i in range(14)]
USERS = pd.DataFrame({"user": np.arange(1, 12), "gender": ["F", "M"] * 5 + ["F"], "age": np.arange(20.0, 31.0)})
USERS.loc[1, ["gender", "age"]] = ["F", 20.0]  # users 1 and 2 alike: only their ratings tell them apart
ITEM_TABLE = pd.DataFrame({"item": ITEMS, "genres": GENRES, "year": YEARS})

LEARNERS = {
    "maml": lambda m: algorithms.maml(m, inner_optimizer=optax.sgd(0.1), inner_steps=2),
    "metasgd": lambda m: algorithms.metasgd(m, inner_optimizer=0.1, inner_steps=2),
    "no_adaptation": lambda m: algorithms.no_adaptation(m),
}


def make_encoder() -> FeatureEncoder:
    return FeatureEncoder.fit(USERS, ITEM_TABLE, user_categorical=["gender"], user_numeric=["age"],
                              item_multi=["genres"], item_numeric=["year"])


ENCODER = make_encoder()
MODEL = models.melu(ENCODER.spec, embed_dim=4, hidden=(8,), output_bias=3.0)


@pytest.fixture(scope="module")
def parts():
    """``{name: (learner, state)}``, built once: each learner compiles its shapes once for the module."""
    out = {}
    for name, make in LEARNERS.items():
        learner = make(MODEL)
        out[name] = (learner, learner.init(jax.random.key(0)))
    return out


def recommender(parts, name="maml", **kwargs) -> Recommender:
    learner, state = parts[name]
    return Recommender(learner, state, ENCODER, ITEMS, **kwargs)


def ratings_of(sizes: dict[int, int], seed: int = 0) -> pd.DataFrame:
    """``{user: number of ratings}`` -> a ratings table of distinct random items per user."""
    rng = np.random.default_rng(seed)
    rows = []
    for user, n in sizes.items():
        for item in rng.choice(ITEMS, size=n, replace=False):
            rows.append((user, int(item), float(rng.integers(1, 6))))
    return pd.DataFrame(rows, columns=["user", "item", "rating"])


def evaluation_scores(learner, state, ratings: pd.DataFrame, candidates) -> np.ndarray:
    """The evaluation path: a task table (support = the user's ratings, query = the
    candidates) through build_tasks, pad_tasks (default sizes) and learner.predict."""
    parts = []
    for user in pd.unique(ratings["user"]):
        support = ratings[ratings["user"] == user].assign(query=False)
        query = pd.DataFrame({"user": user, "item": candidates, "rating": 0.0, "query": True})
        parts += [support, query]
    tasks = splits.build_tasks(pd.concat(parts, ignore_index=True), ENCODER)
    return np.asarray(learner.predict(state, pad_tasks(tasks)))


@pytest.mark.parametrize("name", sorted(LEARNERS))
@pytest.mark.parametrize("batch_size, candidate_chunk", [(64, 1024), (2, 8)])
def test_scores_equal_the_evaluation_path(parts, name, batch_size, candidate_chunk):
    ratings = ratings_of({3: 2, 7: 5, 4: 9, 5: 17, 6: 1})  # several support sizes, in one call
    candidates = ITEMS[::-1]  # 20 candidates: (2, 8) scores them in chunks of 8, 8 and 4
    out = recommender(parts, name, batch_size=batch_size, candidate_chunk=candidate_chunk).score(ratings, candidates)
    assert list(out.columns) == ["user", "item", "score"]
    assert out["user"].tolist() == np.repeat([3, 7, 4, 5, 6], len(candidates)).tolist()
    assert out["item"].tolist() == np.tile(candidates, 5).tolist()
    expected = evaluation_scores(*parts[name], ratings, candidates)
    np.testing.assert_allclose(out["score"].to_numpy().reshape(5, -1), expected, rtol=0, atol=1e-5)


def test_a_users_scores_do_not_depend_on_the_other_users(parts):
    ratings = ratings_of({3: 4, 7: 12, 4: 19})
    together = recommender(parts).score(ratings)
    alone = recommender(parts).score(ratings[ratings["user"] == 7])
    np.testing.assert_allclose(together.loc[together["user"] == 7, "score"], alone["score"], rtol=0, atol=1e-5)


def test_adaptation_changes_scores(parts):
    rated = ITEMS[:6]
    ratings = pd.DataFrame({"user": np.repeat([1, 2], 6), "item": np.tile(rated, 2),
                            "rating": [5.0] * 6 + [1.0] * 6})
    scores = recommender(parts).score(ratings, ITEMS[10:])
    lover = scores.loc[scores["user"] == 1, "score"].to_numpy()
    hater = scores.loc[scores["user"] == 2, "score"].to_numpy()
    assert (lover > hater + 1e-3).all()  # same features: only adaptation tells them apart
    # without adaptation the two are one user
    flat = recommender(parts, "no_adaptation").score(ratings, ITEMS[10:])
    np.testing.assert_array_equal(flat.loc[flat["user"] == 1, "score"], flat.loc[flat["user"] == 2, "score"])


def test_recommend_excludes_seen_items(parts):
    ratings = ratings_of({3: 4, 7: 12})
    rec = recommender(parts)
    top = rec.recommend(ratings, k=len(ITEMS))
    for user, n in ((3, 4), (7, 12)):
        mine = top[top["user"] == user]
        seen = set(ratings.loc[ratings["user"] == user, "item"])
        assert len(mine) == len(ITEMS) - n and not seen & set(mine["item"])
        assert mine["rank"].tolist() == list(range(1, len(ITEMS) - n + 1))
    every = rec.recommend(ratings, k=len(ITEMS), exclude_seen=False)
    assert (every.groupby("user").size() == len(ITEMS)).all()


def test_recommend_is_top_k_by_descending_score_ties_by_item_id(parts):
    ratings = ratings_of({3: 4, 7: 12, 4: 1})
    rec = recommender(parts)
    scores = rec.score(ratings)
    top = rec.recommend(ratings, k=5, exclude_seen=False)
    assert list(top.columns) == ["user", "rank", "item", "score"]
    assert top["user"].tolist() == np.repeat([3, 7, 4], 5).tolist()
    for user in (3, 7, 4):
        mine = top[top["user"] == user]
        expected = scores[scores["user"] == user].sort_values(["score", "item"], ascending=[False, True]).head(5)
        assert mine["item"].tolist() == expected["item"].tolist()
        assert (np.diff(mine["score"].to_numpy()) <= 0).all()
        assert mine["rank"].tolist() == [1, 2, 3, 4, 5]
    # items 103 and 105 have the same features, hence the same score: the smaller id comes first
    tie = rec.recommend(ratings, k=2, exclude_seen=False, candidates=[105, 103])
    mine = tie[tie["user"] == 3]
    assert mine["score"].iloc[0] == mine["score"].iloc[1]
    assert mine["item"].tolist() == [103, 105]


def test_k_larger_than_the_candidates_gives_them_all(parts):
    top = recommender(parts).recommend(ratings_of({3: 2}), k=50, candidates=ITEMS[:5])
    assert len(top) <= 5 and set(top["item"]) <= set(ITEMS[:5])


def test_items_only_in_the_table_encode_as_oov(parts):
    # vocabularies fitted without the last item's genre, table with it: an OOV value, still servable
    table = pd.concat([ITEM_TABLE, pd.DataFrame({"item": [500], "genres": [("zzz",)], "year": [2001.0]})])
    learner, state = parts["maml"]
    rec = Recommender(learner, state, ENCODER.with_tables(items=table), table["item"])
    out = rec.score(ratings_of({3: 3}), items=[500, 101])
    assert np.isfinite(out["score"]).all()


def test_no_recompilation_for_other_users_of_similar_support_sizes(parts):
    learner = parts["maml"][0]
    if not hasattr(learner.adapt, "_cache_size"):
        pytest.skip("this jax's jitted functions have no _cache_size()")
    rec = recommender(parts, batch_size=8)
    rec.score(ratings_of({u: 9 + u for u in range(1, 6)}, seed=1))  # 5 users of 10..14 ratings: 8 slots, 16 rows
    compiled = learner.adapt._cache_size(), learner.apply_adapted._cache_size()
    rec.score(ratings_of({u: 16 - u for u in range(1, 8)}, seed=2))  # 7 other users of 9..15 ratings
    rec.recommend(ratings_of({u: 12 for u in range(2, 10)}, seed=3), k=3)  # 8 users of 12
    assert (learner.adapt._cache_size(), learner.apply_adapted._cache_size()) == compiled


def test_each_user_is_adapted_once_whatever_the_number_of_candidate_chunks(parts):
    learner, state = parts["maml"]
    calls = {"adapt": 0, "apply": 0}

    def adapt(s, batch):
        calls["adapt"] += 1
        return learner.adapt(s, batch)

    def apply_adapted(s, fast, x):
        calls["apply"] += 1
        return learner.apply_adapted(s, fast, x)

    counted = learner._replace(adapt=adapt, apply_adapted=apply_adapted)
    ratings = ratings_of({u: 12 for u in range(1, 4)}, seed=4)
    chunked = Recommender(counted, state, ENCODER, ITEMS, candidate_chunk=8).score(ratings)
    assert calls == {"adapt": 1, "apply": -(-len(ITEMS) // 8)}  # one adaptation, one call per chunk of 8 items
    whole = Recommender(learner, state, ENCODER, ITEMS).score(ratings)
    np.testing.assert_allclose(chunked["score"], whole["score"], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- errors


def test_rejects_missing_columns(parts):
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['rating'\].*columns user, item, rating"):
        recommender(parts).score(pd.DataFrame({"user": [1], "item": [100], "stars": [4.0]}))


def test_rejects_no_ratings(parts):
    empty = pd.DataFrame({"user": [], "item": [], "rating": []})
    with pytest.raises(ValueError, match="no rows: every user to score needs at least one rating"):
        recommender(parts).recommend(empty)


def test_rejects_missing_ids(parts):
    ratings = pd.DataFrame({"user": [1.0, np.nan], "item": [100, 101], "rating": [4.0, 3.0]})
    with pytest.raises(ValueError, match="1 row.* without a user id"):
        recommender(parts).score(ratings)


@pytest.mark.parametrize("bad", [np.nan, np.inf, "four"])
def test_rejects_non_finite_ratings(parts, bad):
    ratings = pd.DataFrame({"user": [1, 1], "item": [100, 101], "rating": [4.0, bad]}, dtype=object)
    with pytest.raises(ValueError, match=r"1 rating\(s\) that are not finite numbers.*user 1, item 101"):
        recommender(parts).score(ratings)


def test_rejects_unknown_items(parts):
    ratings = ratings_of({3: 2})
    with pytest.raises(ValueError, match=r"^items: 1 item id\(s\) have no row in the encoder's item table, e\.g\. 999: "
                                         r"pass their features with encoder\.with_tables\(items=\.\.\.\)"):
        recommender(parts).score(ratings, items=[100, 999])
    with pytest.raises(ValueError, match=r"^candidates: 2 item id\(s\) have no row.* 998, 999"):
        recommender(parts).recommend(ratings, candidates=[998, 100, 999])
    with pytest.raises(ValueError, match=r"^items: 1 item id\(s\) have no row.* 777"):  # the catalogue itself
        Recommender(*parts["maml"], ENCODER, [100, 777]).score(ratings)
    with pytest.raises(ValueError, match=r"^ratings: 1 item id\(s\) have no row.* 666"):  # a rated item
        recommender(parts).score(pd.DataFrame({"user": [3], "item": [666], "rating": [4.0]}))


def test_rejects_repeated_or_empty_candidates(parts):
    with pytest.raises(ValueError, match=r"candidates repeats the item id\(s\) 100: pass each once"):
        recommender(parts).recommend(ratings_of({3: 2}), candidates=[100, 101, 100])
    with pytest.raises(ValueError, match="items is empty"):
        Recommender(*parts["maml"], ENCODER, [])


def test_new_user_needs_their_features(parts):
    ratings = pd.DataFrame({"user": [3, 42], "item": [100, 101], "rating": [4.0, 5.0]})
    with pytest.raises(ValueError, match=r"1 user id\(s\) have no row in the encoder's user table, e\.g\. 42: "
                                         r"pass their features with encoder\.with_tables\(users=\.\.\.\)"):
        recommender(parts).score(ratings)
    newcomer = pd.DataFrame({"user": [42], "gender": ["M"], "age": [33.0]})
    learner, state = parts["maml"]
    rec = Recommender(learner, state, ENCODER.with_tables(users=pd.concat([USERS, newcomer])), ITEMS)
    assert set(rec.recommend(ratings, k=2)["user"]) == {3, 42}


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_rejects_bad_k(parts, k):
    with pytest.raises(ValueError, match=rf"k={k!r}: pass the number of items to recommend per user"):
        recommender(parts).recommend(ratings_of({3: 2}), k=k)


@pytest.mark.parametrize("option", ["batch_size", "candidate_chunk"])
def test_rejects_bad_sizes(parts, option):
    with pytest.raises(ValueError, match=rf"{option}=0: pass a whole number >= 1"):
        recommender(parts, **{option: 0})


def test_item_key_adds_the_raw_ids(parts):
    # a model that reads only the raw item id: the score is the id itself (no fast weights to adapt)
    ids = models.Model(init=lambda key: {}, apply=lambda params, x: x["item_id"].astype(np.float32),
                       is_fast=lambda path: False, is_head=lambda path: False)
    learner = algorithms.no_adaptation(ids)
    rec = Recommender(learner, learner.init(jax.random.key(0)), ENCODER, ITEMS, item_key="item_id")
    top = rec.recommend(ratings_of({3: 2}), k=3, exclude_seen=False)
    assert top["item"].tolist() == [119, 118, 117] and top["score"].tolist() == [119.0, 118.0, 117.0]
    with pytest.raises(ValueError, match="item_key='genres' is already an encoder field"):
        Recommender(learner, learner.init(jax.random.key(0)), ENCODER, ITEMS, item_key="genres")
