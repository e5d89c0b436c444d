"""Rating values are checked against the data's scale, inferred or given, in every entry point.

A rating that is no rating (1e9 among 1–5 stars, inf, 1e300, -1 in a non-negative
table, text) is one error line naming the file and line, from
:func:`read_interactions`, :func:`datasets.load` ("table") and
:func:`read_ratings_source` alike; so is a file that holds no table.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import real

from jaxmeta.data import datasets
from jaxmeta.data.describe import describe, format_description, read_ratings_source
from jaxmeta.data.interactions import read_interactions
from jaxmeta.data.scale import RatingScale, as_scale, check_ratings, fences, infer_scale

RNG = np.random.default_rng(0)
STARS = RNG.integers(1, 6, size=1000).astype(float)


def write_table(path: Path, ratings, users: int = 60, per_user: int = 25, items: int = 80) -> Path:
    """A table that datasets.table can split: ``users`` users rating ``per_user`` of ``items`` items each;
    ``ratings`` fills the rating column in file order (line = row + 2)."""
    rng = np.random.default_rng(1)
    pairs = [(u, int(i)) for u in range(users) for i in rng.choice(items, size=per_user, replace=False)]
    ratings = list(ratings)[: len(pairs)]
    lines = [f"{u},{i},{r}" for (u, i), r in zip(pairs, ratings)]
    path.write_text("user,item,rating\n" + "\n".join(lines) + "\n")
    return path


def stars_with(bad: str, at: int, n: int = 1500) -> list[str]:
    """``n`` star ratings as text, ``bad`` at row ``at`` (file line ``at + 2``)."""
    values = [str(int(v)) for v in np.resize(STARS, n)]
    values[at] = bad
    return values


# ----------------------------------------------------------------------------- inference


def test_fences_hand_computed():
    # n = 6: q_lo = 2 (second smallest), q_hi = 5 (second largest), span 3; non-negative bulk: floor 0
    assert fences([1, 2, 3, 4, 5, 1e9]) == (0.0, 8.0)
    # a negative bulk keeps its lower fence: q_lo = -3, q_hi = 7.25, span 10.25
    assert fences([-9.5, -3.0, 0.5, 7.25, 10.0]) == (-13.25, 17.5)
    # zero span: max(|q_hi|, 1)
    assert fences([4.0] * 50) == (0.0, 8.0) and fences([0.0] * 50) == (0.0, 1.0)
    # two values: both are the bulk
    assert fences([1.0, 5.0]) == (0.0, 9.0)
    # n = 1001: the 10th and the 990th sorted values are the percentiles, so 10 outliers a side are fenced off
    values = np.concatenate([np.full(10, -1e9), np.linspace(1, 5, 981), np.full(10, 1e9)])
    assert fences(values) == (0.0, 9.0)


def test_infer_scale_on_star_ratings():
    assert infer_scale(STARS) == (1, 5)
    assert infer_scale(np.append(STARS, [1e9, -1, np.inf])) == (1, 5)  # broken rows are not the scale
    assert str(infer_scale(STARS)) == "1–5"


def test_infer_scale_on_jester_like_floats():
    jokes = RNG.uniform(-10, 10, size=2000)
    found = infer_scale(jokes)
    assert found == (jokes.min(), jokes.max())  # every value inside the fences
    assert -10 <= found.low < -9.9 and 9.9 < found.high <= 10
    assert str(RatingScale(-10.0, 10.0)) == "-10 to 10"


def test_infer_scale_on_clicks_with_few_zeros():
    clicks = np.ones(1000)
    clicks[[3, 500, 900]] = 0  # 0.3% zeros: both percentiles are 1, the span falls back to 1
    assert infer_scale(clicks) == (0, 1)


def test_infer_scale_on_ratings_times_1000_needs_no_flag():
    assert infer_scale(STARS * 1000) == (1000, 5000)
    check_ratings(STARS * 1000)


def test_infer_scale_needs_a_finite_value():
    with pytest.raises(ValueError, match="no finite rating"):
        infer_scale([np.inf, np.nan])


@pytest.mark.parametrize("value", [(5, 1), (1, 1), (1, np.inf), (np.nan, 5), (1,), (1, 2, 3), "1-5", (True, 5),
                                   ("1", "5"), (0, 1e300)])
def test_a_given_scale_must_be_two_finite_increasing_numbers(value):
    with pytest.raises(ValueError, match=r"^rating_scale=.*: pass \(low, high\), two finite numbers with low < high"):
        as_scale(value)


def test_check_ratings_without_lines():
    assert check_ratings([1, 3, 5], (0, 10)) == (0, 10)
    with pytest.raises(ValueError, match=r"ratings has 1 rating\(s\) outside rating_scale 1–5, e.g. 7.0"):
        check_ratings([1, 3, 7], (1, 5))
    with pytest.raises(ValueError, match=r"2 rating\(s\) that are not finite numbers in float32, e.g. 1e\+300"):
        check_ratings([1, 1e300, 3, -1e39])


# ----------------------------------------------------------------------------- bad ratings in a file

# (text in the file, the error after "ratings.csv, line 9: ")
BAD = [
    ("1e9", (r"rating 1000000000\.0 is outside the scale of the other ratings \(1–5\); fix that row, "
             r"or pass --rating-scale LOW HIGH if the scale is wider\.")),
    ("-1", r"rating -1\.0 is outside the scale of the other ratings \(1–5\)"),
    ("inf", r"rating inf is not a finite number; fix that row\."),
    ("-inf", r"rating -inf is not a finite number"),
    ("1e300", r"rating 1e\+300 is not a finite number in float32 \(whose largest is 3\.4e\+38\); fix that row\."),
    ("abc", r"could not parse column 'rating' as a number \('abc'\)"),
]


def _read(path):
    return read_interactions(path, user="user", item="item", rating="rating", rating_range="infer")


def _table(path):
    return datasets.load("table", path=path)


ENTRIES = {"read_interactions": _read, "table": _table, "read_ratings_source": read_ratings_source}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("bad, message", BAD, ids=[b for b, _ in BAD])
def test_a_bad_rating_is_one_line_naming_the_file_and_line(tmp_path, entry, bad, message):
    path = write_table(tmp_path / "ratings.csv", stars_with(bad, 7))
    with pytest.raises(ValueError) as err:
        ENTRIES[entry](path)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{path}, line 9: ")
    assert re.search(message, text), text


def test_non_finite_ratings_are_errors_whatever_the_range(tmp_path):
    path = write_table(tmp_path / "ratings.csv", stars_with("inf", 0, 20), users=2, per_user=10, items=20)
    for rating_range in (None, (1, 5), "infer"):
        with pytest.raises(ValueError, match=r"ratings\.csv, line 2: rating inf is not a finite number"):
            read_interactions(path, user="user", item="item", rating="rating", rating_range=rating_range)


def test_every_bad_row_is_counted(tmp_path):
    values = stars_with("1e9", 3)
    values[10] = values[20] = "-5"
    path = write_table(tmp_path / "ratings.csv", values)
    with pytest.raises(ValueError, match=r"line 5: rating 1000000000\.0 is outside .* \(3 rows in all\); "
                                         r"fix those rows"):
        _read(path)


def test_another_column_name_is_named(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("u,i,stars\n1,1,4\n1,2,5\n2,1,3\n2,2,9e9\n3,1,1\n")
    with pytest.raises(ValueError, match=r"log\.csv, line 5: rating \(column 'stars'\) 9000000000\.0 is outside"):
        read_interactions(path, user="u", item="i", rating="stars", rating_range="infer")


def test_describe_rejects_an_outlier_it_is_handed():
    ratings = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": [1, 2, 1, 2, 1], "rating": [4, 5, 1, 1e9, 3]})
    with pytest.raises(ValueError, match=r"ratings has 1 rating\(s\) outside the scale of the other ratings \(1–5\)"):
        describe(ratings)


# ----------------------------------------------------------------------------- a given scale


def test_a_given_scale_accepts_wider_values(tmp_path):
    values = stars_with("50", 7)
    path = write_table(tmp_path / "ratings.csv", values)
    with pytest.raises(ValueError, match=r"line 9: rating 50\.0 is outside the scale of the other ratings"):
        datasets.load("table", path=path)
    data = datasets.load("table", path=path, rating_scale=(0, 100))
    assert data.rating_scale == (0, 100) and isinstance(data.rating_scale, RatingScale)
    assert read_ratings_source(path, rating_scale=(0, 100))["rating"].max() == 50
    assert describe(read_ratings_source(path, (0, 100)), rating_scale=(0, 100))["rating_scale"] == [0, 100]


def test_a_given_scale_rejects_values_outside_it(tmp_path):
    path = write_table(tmp_path / "ratings.csv", stars_with("5", 7))
    for entry in (lambda p: datasets.load("table", path=p, rating_scale=(1, 4)),
                  lambda p: read_ratings_source(p, rating_scale=(1, 4))):
        with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}, line \d+: "
                                             r"value of column 'rating' outside \[1\.0, 4\.0\] "
                                             r"\(5\.0\); \d+ rows in all\. Fix those rows, or pass the scale"):
            entry(path)


def test_load_checks_the_given_scale_before_reading(tmp_path):
    for source, path in (("table", tmp_path / "absent.csv"), ("synthetic", None), ("ml-100k", None)):
        with pytest.raises(ValueError, match=r"^rating_scale=\(5, 1\): pass \(low, high\)"):
            datasets.load(source, path=path, data_dir=tmp_path, rating_scale=(5, 1))


def test_a_given_scale_on_a_movielens_folder(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t5\t1\n1\t11\t3\t2\n2\t10\t4\t3\n")
    assert len(read_ratings_source(tmp_path, rating_scale=(1, 5))) == 3
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path))} has 1 rating\(s\) "
                                         r"outside rating_scale 1–4, e.g. 5\.0"):
        read_ratings_source(tmp_path, rating_scale=(1, 4))


# ----------------------------------------------------------------------------- the dataset's scale


def test_a_table_dataset_carries_its_inferred_scale(tmp_path):
    data = datasets.load("table", path=write_table(tmp_path / "r.csv", np.resize(STARS * 1000, 1500)))
    assert data.rating_scale == (1000, 5000)


def test_a_table_with_timestamps_reads_them(tmp_path):
    path = write_table(tmp_path / "r.csv", STARS)
    lines = path.read_text().splitlines()
    stamped = [lines[0] + ",timestamp"] + [f"{line},{1000 + n}" for n, line in enumerate(lines[1:])]
    path.write_text("\n".join(stamped) + "\n")
    assert datasets.load("table", path=path).rating_scale == (1, 5)
    path.write_text("\n".join(stamped[:5] + [stamped[5].rsplit(",", 1)[0] + ",soon"] + stamped[6:]) + "\n")
    with pytest.raises(ValueError, match=r"r\.csv, line 6: could not parse column 'timestamp'"):
        datasets.load("table", path=path)


def test_the_synthetic_dataset_carries_its_ratings_range():
    data = datasets.load("synthetic", num_train_users=40, num_new_users=5)
    every = np.concatenate([*data.train.support_y, *data.train.query_y, *data.valid["users"].support_y,
                            *data.valid["users"].query_y, *data.scenarios["user_cold"].query_y])
    assert data.rating_scale.low <= every.min() and every.max() <= data.rating_scale.high
    with pytest.raises(ValueError, match=r"the synthetic data has \d+ rating\(s\) outside rating_scale 1–5"):
        datasets.load("synthetic", num_train_users=40, num_new_users=5, rating_scale=(1, 5))


def test_real_ml100k_scale_is_one_to_five_stars():
    data = datasets.load("ml-100k", data_dir=real("ml-100k").parent)
    assert data.rating_scale == (1, 5)
    text = format_description(describe(read_ratings_source(real("ml-100k"))))
    assert "rating scale        1–5" in text.splitlines()


# ----------------------------------------------------------------------------- files that hold no table


def _bad_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header = tmp_path / "header.csv"
    header.write_text("user,item,rating\n")
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    return {
        "empty": (empty, ValueError, "is empty: expected a header line"),
        "header only": (header, ValueError, "no ratings, only the column names; pass a table with one row per rating"),
        "missing": (tmp_path / "absent.csv", FileNotFoundError, None),
        "folder": (folder, (IsADirectoryError, FileNotFoundError), None),
    }


@pytest.mark.parametrize("entry", ["table", "read_ratings_source"])
@pytest.mark.parametrize("case", ["empty", "header only", "missing", "folder"])
def test_a_file_without_a_table_is_one_line_naming_it(tmp_path, entry, case):
    path, kind, message = _bad_files(tmp_path)[case]
    with pytest.raises(kind) as err:
        ENTRIES[entry](path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(path)) and "pass" in text.lower(), text
    if message:
        assert message in text


def test_a_folder_given_as_a_table_says_so(tmp_path):
    with pytest.raises(IsADirectoryError,
                       match=rf"^{re.escape(str(tmp_path))} is a folder: expected a CSV or Parquet table"):
        datasets.load("table", path=tmp_path)


def test_parquet_without_pyarrow_names_the_file_and_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow then raises ImportError
    path = tmp_path / "r.parquet"
    path.write_bytes(b"PAR1")
    for entry in (_table, read_ratings_source):
        with pytest.raises(ImportError, match=rf"^reading the Parquet file {re.escape(str(path))} needs pyarrow: "
                                              r"pip install pyarrow \(or read the table yourself"):
            entry(path)


def test_a_parquet_table_is_checked_like_a_csv(tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow is not installed: Parquet files cannot be read here")
    path = tmp_path / "r.parquet"
    ratings = np.resize(STARS, 1500)
    ratings[4] = 1e9
    frame = pd.read_csv(write_table(tmp_path / "r.csv", ratings))
    frame.to_parquet(path)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}, row 4: rating 1000000000\.0 is outside"):
        datasets.load("table", path=path)
    frame.iloc[:0].to_parquet(path)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: no ratings, only the column names"):
        datasets.load("table", path=path)
    path.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: could not be read as a Parquet file"):
        datasets.load("table", path=path)


def test_a_permission_error_names_the_file(tmp_path, monkeypatch):
    path = write_table(tmp_path / "r.csv", STARS)

    def denied(source, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(source))

    monkeypatch.setattr(pd, "read_csv", denied)
    for entry in (_table, read_ratings_source):
        with pytest.raises(PermissionError, match=rf"^{re.escape(str(path))}: cannot be read \(permission denied\)\. "
                                                  "Make it readable"):
            entry(path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_named(tmp_path):
    path = write_table(tmp_path / "r.csv", STARS)
    path.chmod(0)
    for entry in (_table, read_ratings_source):
        with pytest.raises(PermissionError, match=rf"^{re.escape(str(path))}: cannot be read \(permission denied\)"):
            entry(path)
