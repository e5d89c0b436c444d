"""jaxmeta.data.describe against hand-computed values on a small table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from jaxmeta.data import splits
from jaxmeta.data.describe import describe, format_description

# user 1: 4 ratings; user 2: 2; user 3: 7; user 4: 3, rating item 10 twice (a repeated pair)
RATINGS = pd.DataFrame({
    "user": [1] * 4 + [2] * 2 + [3] * 7 + [4] * 3,
    "item": [10, 11, 12, 13] + [10, 11] + [10, 11, 12, 13, 14, 15, 16] + [10, 10, 12],
    "rating": [5, 4, 4, 3] + [1, 2] + [3] * 7 + [5, 5, 1],
})
SPLIT = {"query_size": 2, "min_ratings": 3, "max_ratings": 5}


def test_counts_and_distributions():
    d = describe(RATINGS, **SPLIT, bins=(2, 4, 7))
    assert (d["users"], d["items"], d["ratings"]) == (4, 7, 16)
    assert d["rating_values"] == {1: 2, 2: 1, 3: 8, 4: 2, 5: 3}
    assert list(d["rating_values"]) == [1, 2, 3, 4, 5]
    assert d["density"] == pytest.approx(15 / 28)  # 15 distinct pairs of 4 x 7
    assert d["repeated_pairs"] == 1
    assert d["ratings_per_user"] == {"min": 2, "median": 3.5, "mean": 4, "max": 7}
    # items 10..16 have 5, 3, 3, 2, 1, 1, 1 ratings
    assert d["ratings_per_item"] == {"min": 1, "median": 2, "max": 5}
    # a first edge above 1 adds the bin below it; a one-count bin is labelled by its count
    assert d["user_histogram"] == {"1": 0, "2-3": 2, "4-6": 1, "7+": 1}
    json.dumps(d)  # JSON-safe: Python numbers only


def test_default_bins():
    d = describe(RATINGS, **SPLIT)
    assert d["user_histogram"] == {
        "1-4": 3, "5-12": 1, "13-19": 0, "20-49": 0, "50-99": 0, "100-199": 0, "200-499": 0, "500+": 0,
    }


def test_split_hand_computed():
    split = describe(RATINGS, **SPLIT)["split"]
    # kept: users 1 (4 ratings) and 4 (3); too few: user 2 (2); too many: user 3 (7)
    assert split == {
        "query_size": 2, "min_ratings": 3, "max_ratings": 5,
        "users_kept": 2, "users_too_few": 1, "users_too_many": 1,
        "support_per_user": {"min": 1, "median": 1.5, "max": 2},
        "support_rows": 3, "query_rows": 4,
    }


def test_split_agrees_with_select_queries():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 140, size=60)
    ratings = pd.DataFrame({"user": np.repeat(np.arange(60), sizes), "item": rng.integers(0, 500, sizes.sum()),
                            "rating": rng.integers(1, 6, sizes.sum()).astype(float)})
    split = describe(ratings)["split"]
    table = splits.select_queries(ratings, rng=0)
    assert split["users_kept"] == table["user"].nunique()
    assert split["query_rows"] == int(table["query"].sum())
    assert split["support_rows"] == int((~table["query"]).sum())
    support = table[~table["query"]].groupby("user").size()
    assert split["support_per_user"] == {"min": support.min(), "median": support.median(), "max": support.max()}
    assert split["users_too_few"] == int((sizes < 13).sum()) and split["users_too_many"] == int((sizes > 100).sum())


def test_no_user_kept():
    split = describe(RATINGS, query_size=10, min_ratings=13, max_ratings=100)["split"]
    assert split["users_kept"] == 0 and split["users_too_few"] == 4
    assert split["support_per_user"] is None and split["query_rows"] == 0
    assert "support per user  -" in format_description(describe(RATINGS))


def test_format_description():
    text = format_description(describe(RATINGS, **SPLIT, bins=(2, 4, 7)))
    lines = text.splitlines()
    assert lines[:9] == [
        "users                        4",
        "items                        7",
        "ratings                     16",
        "density                 53.57%",
        "repeated pairs               1",
        "rating values       1: 2  2: 1  3: 8  4: 2  5: 3",
        "rating scale        1–5",
        "ratings per user    min 2  median 3.5  mean 4  max 7",
        "ratings per item    min 1  median 2  max 5",
    ]
    start = lines.index("users by number of ratings")
    # the fullest bin (2 users) is 40 wide; 1 user is 20; an empty bin has no bar
    assert lines[start + 1 : start + 5] == [
        "  1          0",
        "  2-3        2  " + "#" * 40,
        "  4-6        1  " + "#" * 20,
        "  7+         1  " + "#" * 20,
    ]
    assert lines[start + 6 :] == [
        "split: 2 query ratings per user, users with 3-5 ratings",
        "  users kept                 2",
        "  too few (< 3)              1",
        "  too many (> 5)             1",
        "  support per user  min 1  median 1.5  max 2",
        "  support rows               3",
        "  query rows                 4",
    ]


def test_a_small_bin_still_shows():
    ratings = pd.DataFrame({"user": np.repeat(np.arange(101), [1] * 100 + [5]), "item": np.arange(105),
                            "rating": 3.0})
    lines = format_description(describe(ratings, bins=(1, 5))).splitlines()
    start = lines.index("users by number of ratings")
    assert lines[start + 1 : start + 3] == ["  1-4      100  " + "#" * 40, "  5+         1  #"]


def test_thousands_are_grouped():
    ratings = pd.DataFrame({"user": np.arange(1234), "item": 0, "rating": 4.0})
    assert "users                    1,234" in format_description(describe(ratings))


# ----------------------------------------------------------------------------- errors


def test_rejects_missing_columns():
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['rating'\]; available columns: \['user', 'item'\]"):
        describe(RATINGS[["user", "item"]])


def test_rejects_an_empty_table():
    with pytest.raises(ValueError, match="ratings has no rows: pass a table with at least one rating"):
        describe(RATINGS.iloc[:0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, "five"])
def test_rejects_non_finite_ratings(bad):
    ratings = RATINGS.astype({"rating": object})
    ratings.loc[3, "rating"] = bad
    with pytest.raises(ValueError, match=r"1 rating\(s\) that are not finite numbers"):
        describe(ratings)


def test_rejects_missing_ids():
    ratings = RATINGS.astype({"item": float})
    ratings.loc[0, "item"] = np.nan
    with pytest.raises(ValueError, match=r"1 row\(s\) without an item id"):
        describe(ratings)


@pytest.mark.parametrize("bins, message", [
    ((), "non-empty"),
    ((1, 5, 5), "strictly increasing"),
    ((5, 1), "strictly increasing"),
    ((0, 5), "0 is not a whole number >= 1"),
    ((1, 2.5), "2.5 is not a whole number >= 1"),
])
def test_rejects_bad_bins(bins, message):
    with pytest.raises(ValueError, match=message):
        describe(RATINGS, bins=bins)


def test_rejects_a_split_without_support():
    with pytest.raises(ValueError, match="min_ratings=10 with query_size=10"):
        describe(RATINGS, min_ratings=10)


def test_format_rejects_other_dicts():
    with pytest.raises(ValueError, match="pass the dict that describe"):
        format_description({"users": 3})


def test_read_ratings_source_finds_movielens_files_and_says_what_is_missing(tmp_path):
    from jaxmeta.data.describe import read_ratings_source

    (tmp_path / "ratings_no_timestamp.dat").write_text("1::10::5\n1::11::3\n2::10::4\n")  # MeLU's copy of ML-1M
    table = read_ratings_source(tmp_path)
    assert table[["user", "item", "rating"]].values.tolist() == [[1, 10, 5], [1, 11, 3], [2, 10, 4]]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="neither u.data"):
        read_ratings_source(empty)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        read_ratings_source(tmp_path / "nope.csv")


def test_a_files_repeated_pairs_are_counted_not_dropped_with_a_warning(tmp_path):
    import warnings

    from jaxmeta.data.describe import read_ratings_source

    path = tmp_path / "repeats.csv"
    path.write_text("user,item,rating\n1,10,5\n1,10,3\n2,10,4\n2,11,1\n2,11,2\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw warning printed by `jaxmeta data describe`
        table = read_ratings_source(path)
    assert len(table) == 5 and describe(table)["repeated_pairs"] == 2
