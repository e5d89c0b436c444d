"""The cold-start protocol: the 13-100 filter, 10 query rows, support + query = the
user's ratings, disjoint cold users and items, determinism under a seed, encoding;
and MeLU's published split and RecBole-MetaRec's ML-100K split on the real files.

Hand-made tables are the specification; the real-data tests read the folder named
by JAXMETA_DATA (default ``../shared/data`` from the repository root) and are
skipped, saying why, only where the files are absent.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxmeta.data import movielens as ml
from jaxmeta.data import splits
from jaxmeta.data.features import FeatureEncoder, melu_encoder
from jaxmeta.tasks import pad_tasks

from conftest import real

# ----------------------------------------------------------------------------- hand-made data


def ratings_of(counts: dict, *, seed: int = 0, num_items: int = 200) -> pd.DataFrame:
    """``counts[user]`` ratings of distinct random items per user, users interleaved."""
    rng = np.random.default_rng(seed)
    rows = [(u, int(i), float(rng.integers(1, 6)), int(rng.integers(0, 10**6)))
            for u, n in counts.items() for i in rng.choice(num_items, n, replace=False)]
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)


def multiset(frame: pd.DataFrame, columns=("user", "item", "rating")) -> Counter:
    return Counter(zip(*(frame[c].tolist() for c in columns)))


def encoder_for(ratings: pd.DataFrame) -> FeatureEncoder:
    users = pd.DataFrame({"user": sorted(ratings["user"].unique())})
    users["group"] = users["user"] % 3
    items = pd.DataFrame({"item": sorted(ratings["item"].unique())})
    items["tags"] = [tuple(f"t{j}" for j in range(int(i) % 3)) for i in items["item"]]
    return FeatureEncoder.fit(users, items, user_categorical=["user", "group"], item_categorical=["item"],
                              item_multi=["tags"])


COUNTS = {1: 12, 2: 13, 3: 40, 4: 100, 5: 101, 6: 5, 7: 77}


def test_select_queries_keeps_13_to_100_and_picks_10_queries():
    ratings = ratings_of(COUNTS)
    table = splits.select_queries(ratings, rng=0)
    assert table["user"].unique().tolist() == [u for u in pd.unique(ratings["user"]) if 13 <= COUNTS[u] <= 100]
    assert sorted(table["user"].unique()) == [2, 3, 4, 7]
    for user, rows in table.groupby("user", sort=False):
        assert rows["query"].sum() == 10
        assert len(rows) == COUNTS[user]
        assert rows["query"].tolist() == sorted(rows["query"].tolist())  # support first, then query
        assert multiset(rows, ("user", "item", "rating", "timestamp")) == multiset(
            ratings[ratings["user"] == user], ("user", "item", "rating", "timestamp"))  # nothing lost or made up
    assert list(table.columns) == ["user", "item", "rating", "timestamp", "query"]


def test_select_queries_is_deterministic_under_a_seed_and_varies_with_it():
    ratings = ratings_of(COUNTS)
    a, b = splits.select_queries(ratings, rng=3), splits.select_queries(ratings, rng=np.random.default_rng(3))
    pd.testing.assert_frame_equal(a, b)
    c = splits.select_queries(ratings, rng=4)
    assert set(a.loc[a["query"], "item"]) != set(c.loc[c["query"], "item"])


def test_query_rows_are_a_uniform_random_subset():
    """Over many seeds each of a user's 20 ratings is a query row about half the time
    (10 of 20); a biased choice (e.g. always the last 10) fails this."""
    ratings = pd.DataFrame({"user": 1, "item": range(20), "rating": 3.0})
    hits = np.zeros(20)
    for seed in range(300):
        table = splits.select_queries(ratings, rng=seed)
        hits[table.loc[table["query"], "item"].to_numpy()] += 1
    assert np.all(np.abs(hits / 300 - 0.5) < 0.12), hits / 300


def test_select_queries_errors():
    ratings = ratings_of({1: 20})
    with pytest.raises(TypeError, match=r"rng=None; pass an int seed >= 0 or a numpy Generator"):
        splits.select_queries(ratings, rng=None)
    with pytest.raises(ValueError, match=r"min_ratings=10 with query_size=10 .* pass min_ratings >= 11"):
        splits.select_queries(ratings, rng=0, min_ratings=10)
    with pytest.raises(ValueError, match=r"max_ratings=12 < min_ratings=13"):
        splits.select_queries(ratings, rng=0, max_ratings=12)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['rating'\]"):
        splits.select_queries(ratings.drop(columns="rating"), rng=0)


def test_build_tasks_encodes_every_users_rows_consistently():
    ratings = ratings_of(COUNTS)
    enc = encoder_for(ratings)
    table = splits.select_queries(ratings, rng=1)
    tasks = splits.build_tasks(table, enc)
    users = pd.unique(table["user"])
    assert len(tasks) == len(users)
    assert tasks.query_sizes.tolist() == [10] * len(users)
    assert tasks.support_sizes.tolist() == [COUNTS[u] - 10 for u in users]
    for i, user in enumerate(users):
        rows = table[table["user"] == user]
        for part, x, y in (("support", tasks.support_x[i], tasks.support_y[i]),
                           ("query", tasks.query_x[i], tasks.query_y[i])):
            mine = rows[rows["query"] == (part == "query")]
            expected = enc.encode_ids(mine["user"].to_numpy(), mine["item"].to_numpy())  # an independent lookup
            for name in expected:
                np.testing.assert_array_equal(x[name], expected[name])
            assert y.dtype == np.float32
            np.testing.assert_array_equal(y, mine["rating"].to_numpy(np.float32))
            assert set(x["user"].tolist()) == {enc.vocabularies["user"].encode([user])[0]}  # one user per task
    batch = pad_tasks(tasks)
    assert batch.support_x["tags"].shape == (len(users), max(COUNTS[u] for u in users) - 10, 2)


def test_build_tasks_rejects_tables_not_made_by_select_queries():
    ratings = ratings_of({1: 15, 2: 15})
    enc = encoder_for(ratings)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['query'\]"):
        splits.build_tasks(ratings, enc)
    table = splits.select_queries(ratings, rng=0)
    with pytest.raises(ValueError, match=r"not grouped by user with support rows first"):
        splits.build_tasks(table.iloc[::-1], enc)
    with pytest.raises(ValueError, match=r"user \d has no query row; every task needs both"):
        splits.build_tasks(table.assign(query=False), enc)
    nobody = splits.select_queries(ratings, rng=0, min_ratings=16)  # both users have 15 ratings
    assert len(nobody) == 0 and len(splits.build_tasks(nobody, enc)) == 0


# ----------------------------------------------------------------------------- cold-start scenarios


@pytest.fixture
def raw():
    counts = {u: 13 + (u * 7) % 60 for u in range(40)}
    ratings = ratings_of(counts, seed=5, num_items=120)
    items = pd.DataFrame({"item": range(120), "year": 1990 + np.arange(120) % 11})
    return ratings, items


def check_partition(parts: dict, ratings: pd.DataFrame) -> tuple[set, set]:
    """The 2 x 2 scenarios partition the ratings; returns (cold users, cold items)."""
    assert list(parts) == list(splits.SCENARIOS)
    assert sum((multiset(p) for p in parts.values()), Counter()) == multiset(ratings)
    users = {name: set(p["user"]) for name, p in parts.items()}
    items = {name: set(p["item"]) for name, p in parts.items()}
    warm_users, cold_users = users["warm"] | users["item_cold"], users["user_cold"] | users["user_item_cold"]
    warm_items, cold_items = items["warm"] | items["user_cold"], items["item_cold"] | items["user_item_cold"]
    assert not warm_users & cold_users and not warm_items & cold_items
    return cold_users, cold_items


def test_cold_items_by_year_and_random_cold_users(raw):
    ratings, items = raw
    parts = splits.cold_start_scenarios(ratings, items=items, rng=0)
    cold_users, cold_items = check_partition(parts, ratings)
    assert cold_items == set(items.loc[items["year"] >= 1998, "item"]) & set(ratings["item"])
    assert len(cold_users) == 8  # round(0.2 * 40)
    again = splits.cold_start_scenarios(ratings, items=items, rng=0)
    for name in parts:
        pd.testing.assert_frame_equal(parts[name], again[name])
    other = splits.cold_start_scenarios(ratings, items=items, rng=1, year_threshold=1995, cold_user_fraction=0.5)
    other_users, other_items = check_partition(other, ratings)
    assert len(other_users) == 20 and other_users != cold_users
    assert other_items == set(items.loc[items["year"] >= 1995, "item"]) & set(ratings["item"])


def test_cold_users_and_items_by_first_rating_time():
    ratings = pd.DataFrame(
        {
            "user": [1, 1, 2, 2, 3, 3, 4, 4, 5, 5],
            "item": [10, 11, 10, 12, 11, 13, 12, 14, 10, 14],
            "rating": 4.0,
            "timestamp": [1, 9, 2, 3, 4, 8, 5, 6, 7, 10],
        }
    )
    # users' first times 1, 2, 4, 5, 7 -> the 0.8-quantile is 5.4: user 5 is cold;
    # items' first times 1, 4, 3, 8, 6 -> the 0.6-quantile is 4.8: items 13 and 14 are cold
    parts = splits.cold_start_scenarios(ratings, cold_items="first_rating", item_quantile=0.6,
                                        cold_users="first_rating")
    assert check_partition(parts, ratings) == ({5}, {13, 14})
    assert parts["user_item_cold"][["user", "item"]].values.tolist() == [[5, 14]]


def test_cold_start_tasks_keep_users_with_13_to_100_ratings_per_scenario(raw):
    ratings, items = raw
    enc = encoder_for(ratings)
    frames = splits.cold_start_scenarios(ratings, items=items, rng=7)
    tasks = splits.split_tasks(splits.split_tables(frames, rng=8), enc)
    again = splits.split_tasks(splits.split_tables(frames, rng=8), enc)
    for name in splits.SCENARIOS:
        sizes = frames[name].groupby("user").size()
        assert len(tasks[name]) == len(again[name]) == int(sizes.between(13, 100).sum()), name
        for i in range(len(tasks[name])):
            np.testing.assert_array_equal(tasks[name].query_y[i], again[name].query_y[i])
            np.testing.assert_array_equal(tasks[name].support_x[i]["item"], again[name].support_x[i]["item"])
    assert len(tasks["warm"]) > 0 and len(tasks["user_cold"]) > 0


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(cold_items="first_rating", cold_users=[1]), r"cold_items=first_rating needs a 'timestamp' column"),
        (dict(cold_users=[1]), r"cold_items='year' needs the item table: pass items="),
        (dict(items="ITEMS", cold_users="random"), r"cold_users='random' draws the cold users at random: pass rng="),
        (dict(items="ITEMS", rng=0, user_quantile=0.5), r"user_quantile=0\.5 does not apply with cold_users='random'"),
        (dict(items="ITEMS", rng=0, item_quantile=0.5), r"item_quantile=0\.5 does not apply with cold_items='year'"),
        (dict(items="ITEMS", rng=0, cold_user_fraction=1.0), r"cold_user_fraction=1\.0: pass a number strictly"),
        (dict(items="ITEMS", cold_users=[1], rng=0), r"rng=0 does not apply with cold_users given as ids"),
        (dict(items="ITEMS", cold_users="oldest"), r"cold_users='oldest': pass 'random', 'first_rating' or"),
        (dict(items="NO_YEAR", cold_users=[1]), r"1 rated item\(s\) have no 'year', e\.g\. \[3\]"),
    ],
)
def test_cold_start_errors_say_what_to_pass(raw, options, message):
    ratings, items = raw
    ratings = ratings.drop(columns="timestamp")
    if options.get("items") == "ITEMS":
        options["items"] = items
    elif options.get("items") == "NO_YEAR":
        options["items"] = items.assign(year=items["year"].where(items["item"] != 3).astype("Int64"))
    with pytest.raises(ValueError, match=message):
        splits.cold_start_scenarios(ratings, **options)


# ----------------------------------------------------------------------------- RecBole-MetaRec's user split


def test_recbole_user_split_filters_then_divides_users_8_1_1():
    counts = {u: 13 + (u * 11) % 88 for u in range(33)} | {100: 12, 101: 101}
    ratings = ratings_of(counts, seed=2)
    parts = splits.recbole_user_split(ratings, rng=0)
    users = {name: set(p["user"]) for name, p in parts.items()}
    assert list(parts) == ["train", "valid", "test"]
    assert [len(users[n]) for n in parts] == [27, 3, 3]  # int(0.1 * 33) = 3 each, the rest trains
    assert users["train"] | users["valid"] | users["test"] == set(range(33))  # users 100 and 101 filtered out
    assert not (users["train"] & users["valid"] or users["train"] & users["test"] or users["valid"] & users["test"])
    for name, part in parts.items():
        assert multiset(part) == multiset(ratings[ratings["user"].isin(users[name])])
    again = splits.recbole_user_split(ratings, rng=0)
    assert all(set(again[n]["user"]) == users[n] for n in parts)
    assert set(splits.recbole_user_split(ratings, rng=1)["test"]["user"]) != users["test"]
    with pytest.raises(ValueError, match=r"ratios=\(0\.8, 0\.2\): pass 3 positive shares"):
        splits.recbole_user_split(ratings, rng=0, ratios=(0.8, 0.2))


# ----------------------------------------------------------------------------- MeLU's states (hand-made files)


def write_state(folder: Path, state: str, rows: dict) -> None:
    (folder / f"{state}.json").write_text(json.dumps({str(u): [str(i) for i, _ in r] for u, r in rows.items()}))
    (folder / f"{state}_y.json").write_text(json.dumps({str(u): [y for _, y in r] for u, r in rows.items()}))


def test_melu_scenarios_from_state_files(tmp_path):
    rng = np.random.default_rng(0)
    sizes = {"warm_state": {1: 20, 2: 12, 3: 100}, "user_cold_state": {4: 13, 5: 101},
             "item_cold_state": {1: 14, 3: 9}, "user_and_item_cold_state": {4: 30}}
    for state, users in sizes.items():
        write_state(tmp_path, state, {u: [(int(i), int(rng.integers(1, 6))) for i in rng.choice(300, n, replace=False)]
                                      for u, n in users.items()})
    every = pd.concat(splits.melu_scenarios(tmp_path).values())
    enc = encoder_for(every)
    tasks = splits.split_tasks(splits.split_tables(splits.melu_scenarios(tmp_path), rng=0), enc)
    counts = {name: len(t) for name, t in tasks.items()}
    assert counts == {"warm": 2, "user_cold": 1, "item_cold": 1, "user_item_cold": 1}  # 13-100 ratings only
    assert all(set(t.query_sizes.tolist()) == {10} for t in tasks.values())
    tables = splits.split_tables(splits.melu_scenarios(tmp_path), rng=0)
    for name, table in tables.items():
        state = ml.load_melu_state(tmp_path, splits.MELU_STATE_OF[name])
        kept = state[state["user"].isin(table["user"])]
        assert multiset(table) == multiset(kept)
        np.testing.assert_array_equal(np.concatenate(tasks[name].query_y),
                                      table.loc[table["query"], "rating"].to_numpy(np.float32))
    cold_only = splits.split_tasks(splits.split_tables(splits.melu_scenarios(tmp_path, scenarios=["user_cold", "item_cold"]),
                                                       rng=0), enc)
    assert list(cold_only) == ["user_cold", "item_cold"]
    np.testing.assert_array_equal(cold_only["item_cold"].query_y[0], tasks["item_cold"].query_y[0])
    with pytest.raises(ValueError, match=r"scenarios=\['cold'\]: pass a non-empty list drawn from"):
        splits.melu_scenarios(tmp_path, scenarios=["cold"])


# ----------------------------------------------------------------------------- the real data



@pytest.mark.slow  # reads the real ML-1M: pytest -m slow
def test_real_melu_split_and_its_raw_data_reconstruction():
    """MeLU's published states -> tasks, with the user counts after the 13-100 filter; and
    the same four states recomputed from the raw ratings (cold items: released 1998 or
    later, cold users: MeLU's), as multisets of (user, item, rating)."""
    folder = real("ml-1m")
    ratings = ml.load_ml1m_ratings(folder, filename="ratings_no_timestamp.dat", duplicates="keep")
    states = splits.melu_scenarios(folder / "melu_states", ratings=ratings)
    enc = melu_encoder(ml.load_ml1m_users(folder), ml.load_melu_items(folder / "melu_extra"))
    tasks = splits.split_tasks(splits.split_tables(states, rng=0), enc)
    assert {name: len(t) for name, t in tasks.items()} == {
        "warm": 2653, "user_cold": 668, "item_cold": 2863, "user_item_cold": 723,
    }
    for name, t in tasks.items():
        sizes = t.support_sizes + t.query_sizes
        assert set(t.query_sizes.tolist()) == {10} and sizes.min() >= 13 and sizes.max() <= 100, name
    rows = {name: int(t.support_sizes.sum() + t.query_sizes.sum()) for name, t in tasks.items()}
    assert rows == {"warm": 121_811, "user_cold": 30_478, "item_cold": 106_814, "user_item_cold": 26_790}

    cold_users = set(states["user_cold"]["user"]) | set(states["user_item_cold"]["user"])
    recomputed = splits.cold_start_scenarios(ratings, items=ml.load_ml1m_items(folder), cold_users=cold_users)
    for name in splits.SCENARIOS:
        assert multiset(recomputed[name]) == multiset(states[name]), name


def test_real_ml100k_recbole_user_split():
    folder = real("ml-100k")
    ratings = ml.load_ml100k_ratings(folder)
    enc = FeatureEncoder.fit(ml.load_ml100k_users(folder), ml.load_ml100k_items(folder),
                             user_categorical=["gender", "occupation", "zip"], user_numeric=["age"],
                             item_multi=["genres"])
    tasks = splits.split_tasks(splits.split_tables(splits.recbole_user_split(ratings, rng=0), rng=1), enc)
    assert {name: len(t) for name, t in tasks.items()} == {"train": 466, "valid": 58, "test": 58}  # 582 users
    assert all(set(t.query_sizes.tolist()) == {10} for t in tasks.values())
    assert sum(int(t.support_sizes.sum() + t.query_sizes.sum()) for t in tasks.values()) == int(
        ratings.groupby("user").size().loc[lambda c: c <= 100].sum())


def test_time_zone_aware_times_split_as_their_instants():
    """Aware times (UTC or mixed offsets) split as the same instants in naive UTC would."""
    ratings = pd.DataFrame({"user": [1, 1, 2, 2, 3, 3, 4, 4, 5, 5], "item": [10, 11, 10, 12, 11, 13, 12, 14, 10, 14],
                            "rating": 4.0, "timestamp": [1, 9, 2, 3, 4, 8, 5, 6, 7, 10]})
    naive = ratings.assign(timestamp=pd.to_datetime(ratings["timestamp"], unit="D"))
    options = {"cold_items": "first_rating", "item_quantile": 0.6, "cold_users": "first_rating"}
    want = check_partition(splits.cold_start_scenarios(naive, **options), naive)
    assert want == ({5}, {13, 14})
    for zone in ("UTC", "Asia/Tokyo"):
        aware = naive.assign(timestamp=naive["timestamp"].dt.tz_localize("UTC").dt.tz_convert(zone))
        assert check_partition(splits.cold_start_scenarios(aware, **options), aware) == want


def test_cold_ids_that_match_no_rating_are_refused():
    ratings = pd.DataFrame({"user": [1, 2, 3], "item": [10, 20, 30], "rating": 4.0})
    with pytest.raises(ValueError, match=r"cold_items: none of the 1 id\(s\) given \(e.g. '20'\).*dtype int64"):
        splits.cold_start_scenarios(ratings, cold_items=["20"], cold_users=[2])
    with pytest.raises(ValueError, match=r"cold_users: none of the 2 id\(s\)"):
        splits.cold_start_scenarios(ratings, cold_items=[20], cold_users=["2", "3"])
    parts = splits.cold_start_scenarios(ratings, cold_items=[20, 99], cold_users=[])  # some absent: fine
    assert len(parts["item_cold"]) == 1 and len(parts["user_cold"]) == 0


def test_a_missing_rating_is_refused_naming_its_user_and_item():
    ratings = ratings_of({1: 15, 2: 15})
    table = splits.select_queries(ratings, rng=1)
    table.loc[table.index[20], "rating"] = np.nan
    row = table.iloc[20]
    with pytest.raises(ValueError, match=f"user {row['user']}, item '?{row['item']}'? \\(row 20\\) is nan, not a "
                                         "finite number"):
        splits.build_tasks(table, encoder_for(ratings))


def test_hold_out_users_takes_an_int_seed_and_refuses_a_second_hold_out():
    warm = pd.DataFrame({"user": np.arange(40) % 10, "item": np.arange(40), "rating": 3.0})
    seeded = splits.hold_out_users({"warm": warm}, 0.3, rng=4)
    assert set(seeded["valid"]["user"]) == set(splits.hold_out_users({"warm": warm}, 0.3,
                                                                      rng=np.random.default_rng(4))["valid"]["user"])
    with pytest.raises(ValueError, match="already hold 'valid'; hold users out once"):
        splits.hold_out_users(seeded, 0.3, rng=0)
    assert set(splits.hold_out_items({"warm": warm}, 0.3, rng=4)["valid_items"]["item"]) == set(
        splits.hold_out_items({"warm": warm}, 0.3, rng=np.random.default_rng(4))["valid_items"]["item"])


def test_hold_out_items_moves_every_row_of_the_chosen_items_only():
    rng = np.random.default_rng(3)
    warm = pd.DataFrame({"user": rng.integers(0, 40, 600), "item": rng.integers(0, 50, 600),
                         "rating": rng.integers(1, 6, 600).astype(float)})
    cold = warm.head(5).assign(item=99)
    out = splits.hold_out_items({"warm": warm, "item_cold": cold}, 0.2, rng=np.random.default_rng(0))
    assert list(out) == ["warm", "item_cold", "valid_items"]
    assert out["item_cold"] is cold  # other scenarios untouched
    held, kept = set(out["valid_items"]["item"]), set(out["warm"]["item"])
    assert len(held) == round(0.2 * warm["item"].nunique()) and not held & kept  # whole items move
    assert held | kept == set(warm["item"])
    pd.testing.assert_frame_equal(pd.concat([out["warm"], out["valid_items"]]).sort_index(), warm)  # no row lost
    again = splits.hold_out_items({"warm": warm}, 0.2, rng=np.random.default_rng(0))
    assert set(again["valid_items"]["item"]) == held  # seeded


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_hold_out_items_rejects_fractions_outside_zero_one(fraction):
    warm = pd.DataFrame({"user": [1], "item": [2], "rating": [3.0]})
    with pytest.raises(ValueError, match=f"fraction={fraction}"):
        splits.hold_out_items({"warm": warm}, fraction, rng=np.random.default_rng(0))
