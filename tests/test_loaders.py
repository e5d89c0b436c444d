"""Data loaders: small synthetic files in every format, every bad-file case, and the
real MovieLens files where they are present.

Synthetic files are written to pytest's tmp_path (no MovieLens data lives in the
repository: its licence forbids redistribution). The real-data tests read the
folder named by the environment variable JAXMETA_DATA (default ``../shared/data``
from the repository root) and are skipped, saying why, only where it is absent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings

from jaxmeta.data import movielens as ml
from jaxmeta.data.interactions import (
    DuplicateInteractionsWarning,
    check_ids_in_features,
    read_features,
    read_interactions,
)

from conftest import real

# ----------------------------------------------------------------------------- synthetic files

GENRES_100K = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]


def flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES_100K)


ML100K_FILES = {
    "u.data": "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t5\t881250950\n",
    "u.user": "196|49|M|writer|55105\n186|39|F|executive|T8H1N\n",
    "u.item": (
        f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|{flags('Comedy')}\n"
        f"302|Café Flore (1997)|01-Jan-1997|||{flags('Crime', 'Film-Noir', 'Mystery')}\n"
        f"267|unknown||||{flags('unknown')}\n"
    ),
    "u.genre": "".join(f"{g}|{i}\n" for i, g in enumerate(GENRES_100K)) + "\n",  # a blank last line, as in the real file
}

ML1M_FILES = {
    "ratings.dat": "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n",
    "ratings_no_timestamp.dat": "1::661::3\n1::1193::5\n2::1193::4\n",
    "users.dat": "1::F::1::10::48067\n2::M::56::16::98107-2117\n",
    "movies.dat": "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
    "73::Misérables, Les (1995)::Drama|Musical\n1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n",
}

EXTRAINFOS = (
    "1::Toy Story::1995::G::22 Nov 1995::Animation, Adventure, Comedy::John Lasseter::John Lasseter "
    "(original story by), Pete Docter (original story by), John Lasseter (screenplay by)::Tom Hanks, Tim Allen::"
    'A boy\'s toys come to life; "Woody" is jealous.::https://example.com/1.jpg\r\n'
    "50::The Mummy::1932::UNRATED::N/A::N/A::Karl Freund, Cathy Caplan(co-director)::N/A::Pedro Armendáriz Jr., "
    "Boris Karloff::N/A::N/A\r\n"
)

# A tiny MeLU split. Users 1 and 2 are warm, 3 is cold; items 10 and 11 are warm,
# 20 is cold. Like ratings_no_timestamp.dat, the ratings repeat two warm pairs, one
# with the same rating twice (as (195, 1741)) and one with two ratings (as (2860, 811)).
MELU_RATINGS = "1::10::5\n1::10::5\n1::11::3\n1::20::4\n2::10::3\n2::10::4\n2::20::2\n3::10::1\n3::20::5\n"
MELU_STATES = {
    "user_cold_state": ({"3": ["10"]}, {"3": [1]}),
    "item_cold_state": ({"1": ["20"], "2": ["20"]}, {"1": [4], "2": [2]}),
    "user_and_item_cold_state": ({"3": ["20"]}, {"3": [5]}),
}
MELU_WARM_Y = {"2": [4, 3], "1": [3, 5, 5]}  # a multiset per user: order is not part of it


def write_files(folder: Path, files: dict[str, str | bytes], encoding: str = "utf-8") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.encode(encoding)
        (folder / name).write_bytes(data)
    return folder


def write_states(folder: Path, states=MELU_STATES, warm_y=MELU_WARM_Y) -> Path:
    files = {}
    for state, (items, ratings) in states.items():
        files[f"{state}.json"] = json.dumps(items)
        files[f"{state}_y.json"] = json.dumps(ratings)
    files["warm_state_y.json"] = json.dumps(warm_y)
    return write_files(folder, files)


@pytest.fixture
def ml100k(tmp_path):
    return write_files(tmp_path / "ml-100k", ML100K_FILES, encoding="latin-1")


@pytest.fixture
def ml1m(tmp_path):
    return write_files(tmp_path / "ml-1m", ML1M_FILES, encoding="latin-1")


@pytest.fixture
def melu(tmp_path):
    """(states folder, ratings of the split read with duplicates='keep')."""
    folder = write_states(tmp_path / "melu_states")
    write_files(tmp_path / "ml-1m", {"ratings_no_timestamp.dat": MELU_RATINGS})
    ratings = ml.load_ml1m_ratings(tmp_path / "ml-1m", filename="ratings_no_timestamp.dat", duplicates="keep")
    return folder, ratings


def records(frame: pd.DataFrame) -> list[tuple]:
    return list(frame.itertuples(index=False, name=None))


# ----------------------------------------------------------------------------- MovieLens formats


def test_ml100k_formats(ml100k):
    ratings = ml.load_ml100k_ratings(ml100k)
    assert records(ratings) == [(196, 242, 3.0, 881250949), (186, 302, 3.0, 891717742), (196, 302, 5.0, 881250950)]
    assert [str(t) for t in ratings.dtypes] == ["int64", "int64", "float32", "int64"]

    users = ml.load_ml100k_users(ml100k)
    assert records(users) == [(196, 49, "M", "writer", "55105"), (186, 39, "F", "executive", "T8H1N")]
    assert [str(t) for t in users.dtypes] == ["int64", "int64", "str", "str", "str"]

    items = ml.load_ml100k_items(ml100k)
    assert list(items.columns) == ["item", "title", "release_date", "video_release_date", "imdb_url", "genres"]
    assert items["title"].tolist() == ["Kolya (1996)", "Café Flore (1997)", "unknown"]  # latin-1 decoded
    assert items["genres"].tolist() == [("Comedy",), ("Crime", "Film-Noir", "Mystery"), ("unknown",)]
    assert items["release_date"].tolist()[:2] == [pd.Timestamp("1997-01-24"), pd.Timestamp("1997-01-01")]
    assert items["release_date"].isna().tolist() == [False, False, True]
    assert items["video_release_date"].isna().all()
    assert items["imdb_url"].isna().tolist() == [False, True, True]
    assert str(items["release_date"].dtype) == "datetime64[s]"


def test_ml100k_split_files_read_like_u_data(ml100k):
    write_files(ml100k, {"u1.test": "1\t6\t5\t887431973\n"})
    assert records(ml.load_ml100k_ratings(ml100k, filename="u1.test")) == [(1, 6, 5.0, 887431973)]


def test_ml1m_formats(ml1m):
    ratings = ml.load_ml1m_ratings(ml1m)
    assert list(ratings.columns) == ["user", "item", "rating", "timestamp"]
    assert records(ratings)[0] == (1, 1193, 5.0, 978300760)
    bare = ml.load_ml1m_ratings(ml1m, filename="ratings_no_timestamp.dat")
    assert list(bare.columns) == ["user", "item", "rating"]
    assert [str(t) for t in bare.dtypes] == ["int64", "int64", "float32"]
    assert sorted(records(bare)) == sorted(records(ratings.drop(columns="timestamp")))

    users = ml.load_ml1m_users(ml1m)
    assert records(users) == [(1, "F", 1, 10, "48067"), (2, "M", 56, 16, "98107-2117")]
    assert [str(t) for t in users.dtypes] == ["int64", "str", "int64", "int64", "str"]

    items = ml.load_ml1m_items(ml1m)
    assert items["title"].tolist()[1] == "Misérables, Les (1995)"  # latin-1 decoded
    assert items["year"].tolist() == [1996, 1995, 1975]
    assert str(items["year"].dtype) == "Int64"
    assert items["genres"].tolist() == [("Animation", "Children's", "Musical"), ("Drama", "Musical"), ("Drama",)]


def test_windows_line_ends_are_read(ml1m):
    write_files(ml1m, {"users.dat": "1::F::1::10::48067\r\n2::M::56::16::70072\r\n"})
    assert ml.load_ml1m_users(ml1m)["zip"].tolist() == ["48067", "70072"]


def test_melu_items(tmp_path):
    folder = write_files(tmp_path, {"movies_extrainfos.dat": EXTRAINFOS})
    items = ml.load_melu_items(folder)
    toy, mummy = items.to_dict("records")
    assert (toy["item"], toy["title"], toy["year"], toy["rate"]) == (1, "Toy Story", 1995, "G")
    assert toy["released"] == pd.Timestamp("1995-11-22")
    assert toy["genres"] == ("Animation", "Adventure", "Comedy")
    assert toy["writers"] == ("John Lasseter", "Pete Docter")  # role notes cut, repeats merged
    assert toy["actors"] == ("Tom Hanks", "Tim Allen")
    assert toy["plot"] == 'A boy\'s toys come to life; "Woody" is jealous.'  # quotes are text, not quoting
    assert toy["poster"] == "https://example.com/1.jpg"  # no "\r" left from the Windows line end
    assert mummy["directors"] == ("Karl Freund", "Cathy Caplan")
    assert mummy["actors"] == ("Pedro Armendáriz Jr.", "Boris Karloff")  # UTF-8 decoded
    assert mummy["genres"] == mummy["writers"] == ()
    assert pd.isna(mummy["released"]) and pd.isna(mummy["plot"]) and pd.isna(mummy["poster"])
    raw = ml.load_melu_items(folder, strip_roles=False)
    assert raw["directors"][1] == ("Karl Freund", "Cathy Caplan(co-director)")


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(1, 10**6), st.integers(1, 10**6), st.integers(1, 5), st.integers(0, 2**31)),
        min_size=1,
        max_size=30,
        unique_by=lambda r: r[:2],
    )
)
def test_ml1m_ratings_round_trip(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("ml-1m")
    write_files(folder, {"ratings.dat": "".join("::".join(map(str, r)) + "\n" for r in rows)})
    assert records(ml.load_ml1m_ratings(folder)) == [(u, i, float(r), t) for u, i, r, t in rows]


# ----------------------------------------------------------------------------- MovieLens bad files

BAD_FILES = [
    # (loader, files of the folder, bad file name, its content, what the error must say)
    ("ml100k_ratings", "u.data", "1\t10\t4\t881250949\n2\t10\t5\n", r"u\.data, line 2: expected 4 fields .* found 3"),
    ("ml100k_ratings", "u.data", "1\t10\t4\t1\n\n2\t11\t5\t2\n", r"u\.data, line 2: expected 4 fields .* found 1"),
    ("ml100k_ratings", "u.data", "1\t10\t4\t1\n1\tx10\t4\t2\n", r"u\.data, line 2: could not parse column 'item' as a whole number \('x10'\)"),
    ("ml100k_ratings", "u.data", "1\t10\t4\t1\n1\t11\t6\t2\n1\t12\t0\t3\n", r"u\.data, line 2: value of column 'rating' outside \[1, 5\] \(6\.0\); 2 rows in all"),
    ("ml100k_ratings", "u.data", "1\t10\t4.5.1\t1\n", r"u\.data, line 1: could not parse column 'rating' as a number \('4\.5\.1'\)"),
    ("ml100k_ratings", "u.data", "", r"u\.data is empty"),
    ("ml100k_users", "u.user", "1|24|M|technician|85711\n2|x|F|other|94043\n", r"u\.user, line 2: could not parse column 'age'"),
    ("ml100k_items", "u.item", f"1|Toy Story (1995)|01-Jan-1995||url|{flags('Comedy').replace('1', '2')}\n", r"u\.item, line 1: column 'genre Comedy' must be 0 or 1 \('2'\)"),
    ("ml100k_items", "u.item", f"1|A|01-Jan-1995||url|{flags()}\n2|B|31-Foo-1995||url|{flags()}\n", r"u\.item, line 2: could not parse column 'release_date' as a date"),
    ("ml100k_items", "u.item", "1|Toy Story (1995)|01-Jan-1995||url|0|1\n", r"u\.item, line 1: expected 24 fields"),
    ("ml100k_items", "u.genre", "unknown|0\nAction|2\n", r"u\.genre, line 2: genre indices must run 0, 1, 2"),
    ("ml1m_ratings", "ratings.dat", "1::10::5::978300760\n1::11::3\n", r"ratings\.dat, line 2: expected 4 fields separated by '::'"),
    ("ml1m_ratings", "ratings.dat", "1::10\n", r"ratings\.dat, line 1: expected UserID::MovieID::Rating::Timestamp"),
    ("ml1m_ratings", "ratings.dat", "1::10::5::978300760\n1::11::3::x\n", r"ratings\.dat, line 2: could not parse column 'timestamp'"),
    ("ml1m_ratings", "ratings.dat", "1::10::5::1\n1::11::9::2\n", r"ratings\.dat, line 2: value of column 'rating' outside \[1, 5\] \(9\.0\)"),
    ("ml1m_users", "users.dat", "1::F::1::10::48067\n2::M::56::doctor::70072\n", r"users\.dat, line 2: could not parse column 'occupation'"),
    ("ml1m_items", "movies.dat", "1::Toy Story (1995)::Comedy\n2::Foo:: Bar (1995)::Drama\n", r"movies\.dat, line 2: expected 3 fields .* found 4"),
    ("melu_items", "movies_extrainfos.dat", EXTRAINFOS.encode() + b"3::Caf\xe9::1995::R::N/A::N/A::N/A::N/A::N/A::N/A::N/A\n", r"movies_extrainfos\.dat, line 3: not valid utf-8"),
    ("melu_items", "movies_extrainfos.dat", EXTRAINFOS.replace("22 Nov 1995", "1995-11-22"), r"movies_extrainfos\.dat, line 1: could not parse column 'released' as a date"),
    ("melu_items", "movies_extrainfos.dat", EXTRAINFOS.replace("1932", "193x"), r"movies_extrainfos\.dat, line 2: could not parse column 'year'"),
]

LOADERS = {  # loader: (folder, its valid files, their encoding, the loader)
    "ml100k_ratings": ("ml-100k", ML100K_FILES, "latin-1", ml.load_ml100k_ratings),
    "ml100k_users": ("ml-100k", ML100K_FILES, "latin-1", ml.load_ml100k_users),
    "ml100k_items": ("ml-100k", ML100K_FILES, "latin-1", ml.load_ml100k_items),
    "ml1m_ratings": ("ml-1m", ML1M_FILES, "latin-1", ml.load_ml1m_ratings),
    "ml1m_users": ("ml-1m", ML1M_FILES, "latin-1", ml.load_ml1m_users),
    "ml1m_items": ("ml-1m", ML1M_FILES, "latin-1", ml.load_ml1m_items),
    "melu_items": ("melu_extra", {"movies_extrainfos.dat": EXTRAINFOS}, "utf-8", ml.load_melu_items),
}


@pytest.mark.parametrize("loader, name, content, message", BAD_FILES, ids=[f"{c[1]}-{i}" for i, c in enumerate(BAD_FILES)])
def test_bad_movielens_file_is_named_with_its_line(tmp_path, loader, name, content, message):
    sub, files, encoding, load = LOADERS[loader]
    folder = write_files(tmp_path / sub, files, encoding=encoding)
    write_files(folder, {name: content}, encoding=encoding)
    with pytest.raises(ValueError, match=message) as caught:
        load(folder)
    assert str(folder / name) in str(caught.value)


@pytest.mark.parametrize("loader", list(LOADERS))
def test_missing_directory_is_named(tmp_path, loader):
    with pytest.raises(FileNotFoundError, match=r"nowhere is not a directory: expected the folder holding"):
        LOADERS[loader][3](tmp_path / "nowhere")


def test_missing_file_is_named_with_what_was_expected(ml100k, ml1m):
    (ml100k / "u.user").unlink()
    with pytest.raises(FileNotFoundError, match=r"u\.user not found: expected MovieLens-100K users .* u\.data"):
        ml.load_ml100k_users(ml100k)
    (ml1m / "ratings.dat").unlink()
    with pytest.raises(FileNotFoundError, match=r"ratings\.dat not found.*pass filename='ratings_no_timestamp\.dat'"):
        ml.load_ml1m_ratings(ml1m)


def test_ml_duplicates_follow_the_policy(ml1m):
    write_files(ml1m, {"ratings_no_timestamp.dat": "1::10::5\n1::10::3\n2::10::4\n"})
    with pytest.warns(DuplicateInteractionsWarning, match=r"dropped 1 duplicate .* user 1, item 10 at line 1 and line 2"):
        last = ml.load_ml1m_ratings(ml1m, filename="ratings_no_timestamp.dat")
    assert records(last) == [(1, 10, 3.0), (2, 10, 4.0)]
    kept = ml.load_ml1m_ratings(ml1m, filename="ratings_no_timestamp.dat", duplicates="keep")
    assert len(kept) == 3
    with pytest.raises(ValueError, match=r"ratings_no_timestamp\.dat: 1 duplicate user-item row"):
        ml.load_ml1m_ratings(ml1m, filename="ratings_no_timestamp.dat", duplicates="error")


# ----------------------------------------------------------------------------- MeLU states


def test_melu_state_files(melu):
    folder, _ = melu
    cold = ml.load_melu_state(folder, "item_cold_state")
    assert records(cold) == [(1, 20, 4.0), (2, 20, 2.0)]
    assert [str(t) for t in cold.dtypes] == ["int64", "int64", "float32"]


def test_warm_state_is_the_complement_of_the_cold_states(melu):
    folder, ratings = melu
    warm = ml.reconstruct_melu_warm_state(folder, ratings)
    # both rows of each repeated pair stay, in the order of the ratings
    assert records(warm) == [(1, 10, 5.0), (1, 10, 5.0), (1, 11, 3.0), (2, 10, 3.0), (2, 10, 4.0)]
    assert records(ml.load_melu_state(folder, "warm_state", ratings=ratings)) == records(warm)


def test_warm_state_file_is_read_when_present(melu):
    folder, ratings = melu
    write_files(folder, {"warm_state.json": json.dumps({"2": ["10", "10"], "1": ["11", "10", "10"]})})
    warm = ml.load_melu_state(folder, "warm_state", ratings=ratings)
    assert records(warm) == [(2, 10, 4.0), (2, 10, 3.0), (1, 11, 3.0), (1, 10, 5.0), (1, 10, 5.0)]


def test_warm_state_missing_says_how_to_rebuild(melu):
    folder, _ = melu
    with pytest.raises(FileNotFoundError, match=r"warm_state\.json not found.*Rebuild it from the ratings"):
        ml.load_melu_state(folder, "warm_state")


def test_warm_rebuild_from_deduplicated_ratings_fails(melu):
    folder, ratings = melu
    deduplicated = ratings.drop_duplicates(["user", "item"], keep="last")
    with pytest.raises(ValueError, match=r"does not match .*warm_state_y\.json: user 1 has the ratings \{3: 1, 5: 1\}.*\{3: 1, 5: 2\}.*duplicates='keep'"):
        ml.reconstruct_melu_warm_state(folder, deduplicated)


def test_warm_rebuild_checks_users_and_cold_rows(melu, tmp_path):
    folder, ratings = melu
    other = write_states(tmp_path / "other", warm_y={"1": [3, 5, 5]})
    with pytest.raises(ValueError, match=r"does not match .*: 2 users against 1; 1 not in the file \(e\.g\. \[2\]\)"):
        ml.reconstruct_melu_warm_state(other, ratings)
    with pytest.raises(ValueError, match=r"1 cold-state rows .* not in ratings, e\.g\. user 3, item 20, rating 5"):
        ml.reconstruct_melu_warm_state(folder, ratings[~((ratings.user == 3) & (ratings.item == 20))])
    with pytest.raises(ValueError, match=r"ratings lacks the column\(s\) \['rating'\]"):
        ml.reconstruct_melu_warm_state(folder, ratings.rename(columns={"rating": "stars"}))


BAD_STATES = [
    # (file, content, what the error must say)
    ("user_cold_state.json", '{"3": ["10"]', r"user_cold_state\.json, line 1, column 13: not valid JSON"),
    ("user_cold_state.json", '[["10"]]', r"user_cold_state\.json: expected a JSON object"),
    ("user_cold_state.json", '{"3": "10"}', r"user_cold_state\.json: user '3' maps to a str"),
    ("user_cold_state.json", '{"4": ["10"]}', r"user_cold_state\.json and .*user_cold_state_y\.json list different users: 1 only in the first \(e\.g\. \['4'\]\)"),
    ("user_cold_state.json", '{"3": ["10", "11"]}', r"disagree on user '3': 2 items but 1 ratings"),
    ("user_cold_state.json", '{"3": ["ten"]}', r"user_cold_state\.json, user '3', position 0: item id 'ten' is not a whole number"),
    ("user_cold_state.json", '{"x3": ["10"]}', r"list different users"),
    ("user_cold_state_y.json", '{"3": [7]}', r"user_cold_state_y\.json, user '3', position 0: rating 7 is outside \[1, 5\]"),
]


@pytest.mark.parametrize("name, content, message", BAD_STATES)
def test_bad_state_file_is_named(tmp_path, name, content, message):
    folder = write_states(tmp_path)
    write_files(folder, {name: content})
    with pytest.raises(ValueError, match=message):
        ml.load_melu_state(folder, "user_cold_state")


def test_bad_user_id_in_a_state_is_named(tmp_path):
    folder = write_states(tmp_path, states={"user_cold_state": ({"x3": ["10"]}, {"x3": [1]})})
    with pytest.raises(ValueError, match=r"user_cold_state\.json: user id 'x3' is not a whole number"):
        ml.load_melu_state(folder, "user_cold_state")


def test_unknown_state_is_refused(melu):
    with pytest.raises(ValueError, match=r"state='cold_state': pass one of"):
        ml.load_melu_state(melu[0], "cold_state")


# ----------------------------------------------------------------------------- any interaction table


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_csv_columns_are_renamed_and_typed(tmp_path):
    path = write(tmp_path / "log.csv", "uid,movie,stars,when,extra\n7,10,4.5,100,a\n8,10,3,101,b\n")
    df = read_interactions(path, user="uid", item="movie", rating="stars", timestamp="when", rating_range=(0.5, 5))
    assert records(df) == [(7, 10, 4.5, 100), (8, 10, 3.0, 101)]
    assert [str(t) for t in df.dtypes] == ["int64", "int64", "float32", "int64"]


def test_tsv_and_explicit_separator(tmp_path):
    tsv = write(tmp_path / "log.tsv", "u\ti\tr\n1\t2\t3\n")
    semi = write(tmp_path / "log.txt", "u;i;r\n1;2;3\n")
    for path, sep in ((tsv, None), (semi, ";")):
        assert records(read_interactions(path, user="u", item="i", rating="r", sep=sep)) == [(1, 2, 3.0)]


def test_ids_stay_strings_unless_all_whole_numbers():
    df = read_interactions(
        pd.DataFrame({"u": ["007", "7"], "i": [1.0, 2.0], "r": [1, 2]}), user="u", item="i", rating="r"
    )
    assert df["user"].tolist() == ["007", "7"]  # "007" and "7" stay two users
    assert str(df["item"].dtype) == "int64"


def test_whole_number_ids_written_as_floats_or_beyond_int64(tmp_path):
    """A float column written out ("12.0") reads as the integer ids; ids int64 cannot hold stay text rather
    than wrapping around or failing."""
    path = tmp_path / "floats.csv"
    path.write_text("user,item,rating\n1,12.0,4\n2,7.0,3\n")
    df = read_interactions(path, user="user", item="item", rating="rating")
    assert str(df["item"].dtype) == "int64" and df["item"].tolist() == [12, 7]
    path.write_text("user,item,rating\n1,12.0,4\n2,12,3\n")  # two ids that would read as one: text, apart
    assert read_interactions(path, user="user", item="item", rating="rating")["item"].tolist() == ["12.0", "12"]
    big = read_interactions(pd.DataFrame({"u": np.array([2**63 + 5, 1], np.uint64), "i": [1, 2], "r": [1, 2]}),
                            user="u", item="i", rating="r")
    assert big["user"].tolist() == [str(2**63 + 5), "1"]
    path.write_text("user,item,rating\n12345678901234567890123,1,4\n2,1,3\n")
    assert read_interactions(path, user="user", item="item", rating="rating")["user"].tolist() == [
        "12345678901234567890123", "2"]


def test_times_with_time_zones_read_as_naive_utc(tmp_path):
    path = tmp_path / "zones.csv"
    path.write_text("user,item,rating,timestamp\n1,1,4,2020-01-01 02:00:00+02:00\n2,1,3,2020-01-01 00:30:00+00:00\n")
    df = read_interactions(path, user="user", item="item", rating="rating", timestamp="timestamp")
    assert df["timestamp"].tolist() == [pd.Timestamp("2020-01-01 00:00:00"), pd.Timestamp("2020-01-01 00:30:00")]
    tokyo = pd.to_datetime(["2020-01-01 09:00"]).tz_localize("Asia/Tokyo")
    aware = pd.DataFrame({"u": [1], "i": [2], "r": [3], "t": tokyo})
    assert read_interactions(aware, user="u", item="i", rating="r", timestamp="t")["timestamp"].tolist() == [
        pd.Timestamp("2020-01-01 00:00:00")]


def test_dates_and_clicks():
    raw = pd.DataFrame({"u": [1, 2], "i": [3, 3], "c": [True, False], "t": ["2020-01-02", "2020-01-03"]})
    df = read_interactions(raw, user="u", item="i", click="c", timestamp="t")
    assert df["click"].tolist() == [1, 0] and str(df["click"].dtype) == "int8"
    assert df["timestamp"].tolist() == [pd.Timestamp("2020-01-02"), pd.Timestamp("2020-01-03")]


BAD_TABLES = [
    # (CSV text, read_interactions arguments, what the error must say)
    ("user,item,score\n1,2,3\n", dict(rating="stars"), r"log\.csv: missing column\(s\) 'stars' \(rating\); available columns: 'user', 'item', 'score'"),
    ("user,item,rating\n1,2,3\n\n1,3,x\n", {}, r"log\.csv, line 4: could not parse column 'rating' as a number \('x'\)"),
    ("user,item,rating\n1,2,3\n1,3,4,5\n", {}, r"log\.csv, line 3: expected 3 fields separated by ',' as in the header, found 4"),
    ("user,item,rating\n1,2,3\n1,,4\n2,,4\n", {}, r"log\.csv, line 3: missing value in column 'item' \(item\); 2 rows in all"),
    ("user,item,rating\n1,2,NaN\n", {}, r"log\.csv, line 2: missing value in column 'rating'"),
    ("user,item,rating\n1,2,3\n1,3,7\n1,4,0\n", dict(rating_range=(1, 5)), r"log\.csv, line 3: value of column 'rating' outside \[1, 5\] \(7\.0\); 2 rows in all"),
    ("user,item,clicked\n1,2,1\n1,3,2\n", dict(rating=None, click="clicked"), r"log\.csv, line 3: column 'clicked' \(click\) must hold 0 or 1 \('2'\)"),
    ("user,item,rating,t\n1,2,3,2020-01-01\n1,3,3,not a date\n", dict(timestamp="t"), r"log\.csv, line 3: could not parse column 't' as a number or a date"),
    ("user,item,rating\n1,2,3\n1,2,4\n", dict(duplicates="error"), r"log\.csv: 1 duplicate user-item row\(s\), e\.g\. user 1, item 2 at line 2 and line 3"),
    ("", {}, r"log\.csv is empty"),
]


@pytest.mark.parametrize("text, kwargs, message", BAD_TABLES)
def test_bad_table_is_named_with_its_line(tmp_path, text, kwargs, message):
    path = write(tmp_path / "log.csv", text)
    with pytest.raises(ValueError, match=message):
        read_interactions(path, **({"user": "user", "item": "item", "rating": "rating"} | kwargs))


def test_bad_dataframe_names_the_row():
    raw = pd.DataFrame({"u": [1, 2, 3], "i": [1, 2, 3], "r": [1.0, np.nan, 2.0]})
    with pytest.raises(ValueError, match=r"the DataFrame, row 1: missing value in column 'r'"):
        read_interactions(raw, user="u", item="i", rating="r")


def test_duplicates_keep_the_last_and_say_how_many():
    raw = pd.DataFrame({"u": [1, 1, 2, 1, 2], "i": [5, 5, 5, 5, 6], "r": [1, 2, 3, 4, 5]})
    with pytest.warns(DuplicateInteractionsWarning, match=r"the DataFrame: dropped 2 duplicate .* row 0 and row 1 and row 3"):
        df = read_interactions(raw, user="u", item="i", rating="r")
    assert records(df) == [(2, 5, 3.0), (1, 5, 4.0), (2, 6, 5.0)]
    assert len(read_interactions(raw, user="u", item="i", rating="r", duplicates="keep")) == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(), r"pass exactly one target column"),
        (dict(rating="r", click="r"), r"pass exactly one target column"),
        (dict(click="r", rating_range=(0, 1)), r"rating_range applies to ratings only"),
        (dict(rating="r", rating_range=(5, 1)), r"rating_range=\(5, 1\): pass \(low, high\)"),
        (dict(rating="r", duplicates="first"), r"duplicates='first': pass one of"),
        (dict(rating="u"), r"each column may play one part only"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        read_interactions(pd.DataFrame({"u": [1], "i": [2], "r": [3]}), user="u", item="i", **kwargs)


def test_missing_file_and_wrong_encoding(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.csv not found"):
        read_interactions(tmp_path / "nope.csv", user="u", item="i", rating="r")
    path = write(tmp_path / "latin.csv", "u,i,r,title\n1,2,3,Café\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"latin\.csv: not valid utf-8 text"):
        read_interactions(path, user="u", item="i", rating="r")
    assert len(read_interactions(path, user="u", item="i", rating="r", encoding="latin-1")) == 1


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "log.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    with pytest.raises(ImportError, match=r"log\.parquet needs pyarrow: pip install pyarrow"):
        read_interactions(path, user="u", item="i", rating="r")


def test_parquet_round_trip(tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow is not installed: Parquet files cannot be read here")
    path = tmp_path / "log.parquet"
    pd.DataFrame({"u": [1, 2], "i": [3, 4], "r": [5.0, 4.0]}).to_parquet(path)
    assert records(read_interactions(path, user="u", item="i", rating="r")) == [(1, 3, 5.0), (2, 4, 4.0)]
    pd.DataFrame({"u": [1, 2], "i": [3, 4], "r": [5.0, np.nan]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"log\.parquet, row 1: missing value in column 'r'"):
        read_interactions(path, user="u", item="i", rating="r")


def test_features_are_read_and_checked(tmp_path):
    path = write(tmp_path / "items.csv", "movie,genre,year,unused\n10,Drama,1995,x\n11,,1996,y\n")
    items = read_features(path, key="movie", columns=["genre", "year"], key_name="item")
    assert list(items.columns) == ["item", "genre", "year"]
    assert items["item"].tolist() == [10, 11] and pd.isna(items["genre"][1])  # features may be missing
    assert str(items["year"].dtype) == "int64"
    assert list(read_features(path, key="movie").columns) == ["movie", "genre", "year", "unused"]


@pytest.mark.parametrize(
    "text, kwargs, message",
    [
        ("movie,genre\n10,Drama\n", dict(columns=["genre", "year"]), r"items\.csv: missing column\(s\) 'year' \(year\); available columns: 'movie', 'genre'"),
        ("movie,genre\n10,Drama\n11,Comedy\n10,War\n", {}, r"items\.csv: 1 repeated id\(s\) in key column 'movie', e\.g\. 10 at line 2 and line 4"),
        ("movie,genre\n10,Drama\n,Comedy\n", {}, r"items\.csv, line 3: missing value in column 'movie'"),
    ],
)
def test_bad_feature_table_is_named(tmp_path, text, kwargs, message):
    path = write(tmp_path / "items.csv", text)
    with pytest.raises(ValueError, match=message):
        read_features(path, key="movie", **kwargs)


def test_ids_missing_from_features_are_counted():
    ratings = pd.DataFrame({"user": [1, 2, 3, 3, 4], "item": [5, 5, 6, 7, 5]})
    check_ids_in_features(ratings, pd.DataFrame({"item": [5, 6, 7, 8]}), "item", "items.csv")
    with pytest.raises(ValueError, match=r"3 of the 4 user ids in the interactions have no row in users\.csv, e\.g\. \[2, 3, 4\]"):
        check_ids_in_features(ratings, pd.DataFrame({"user": [1]}), "user", "users.csv")
    with pytest.raises(ValueError, match=r"id types differ"):
        check_ids_in_features(ratings, pd.DataFrame({"item": ["5", "6", "7"]}), "item", "items.csv")
    with pytest.raises(ValueError, match=r"items\.csv has no column 'item'; available columns: 'movie'"):
        check_ids_in_features(ratings, pd.DataFrame({"movie": [5]}), "item", "items.csv")


# ----------------------------------------------------------------------------- the real data



@pytest.fixture(scope="module")
def ml1m_ratings():
    """MeLU's ratings_no_timestamp.dat, every row kept (read once: it has a million lines)."""
    return ml.load_ml1m_ratings(real("ml-1m"), filename="ratings_no_timestamp.dat", duplicates="keep")


def test_real_ml100k():
    folder = real("ml-100k")
    ratings = ml.load_ml100k_ratings(folder)
    assert (len(ratings), ratings["user"].nunique(), ratings["item"].nunique()) == (100_000, 943, 1_682)
    assert ratings["rating"].value_counts().sort_index().tolist() == [6110, 11370, 27145, 34174, 21201]
    users, items = ml.load_ml100k_users(folder), ml.load_ml100k_items(folder)
    assert (len(users), len(items)) == (943, 1_682)
    check_ids_in_features(ratings, users, "user", "u.user")
    check_ids_in_features(ratings, items, "item", "u.item")
    assert items.loc[items["item"] == 267, "genres"].item() == ("unknown",)
    assert items["genres"].map(len).min() == 1


def test_real_ml1m_users_and_movies():
    folder = real("ml-1m")
    users, items = ml.load_ml1m_users(folder), ml.load_ml1m_items(folder)
    assert (len(users), users["user"].is_unique) == (6_040, True)
    assert (len(items), items["item"].is_unique, items["year"].notna().all()) == (3_883, True, True)
    assert sorted(users["age"].unique()) == [1, 18, 25, 35, 45, 50, 56]
    assert len({g for genres in items["genres"] for g in genres}) == 18


def test_real_ml1m_ratings_without_timestamps(ml1m_ratings):
    ratings = ml1m_ratings
    assert list(ratings.columns) == ["user", "item", "rating"]
    assert (len(ratings), ratings["user"].nunique(), ratings["item"].nunique()) == (1_000_209, 6_040, 3_704)
    assert ratings["rating"].value_counts().sort_index().tolist() == [56174, 107557, 261197, 348971, 226310]
    repeated = ratings[ratings.duplicated(["user", "item"], keep=False)]
    assert sorted(set(records(repeated[["user", "item"]]))) == [(195, 1741), (1267, 811), (2860, 811), (4169, 811)]


def test_real_ml1m_default_policy_drops_the_four_repeats():
    with pytest.warns(DuplicateInteractionsWarning, match=r"dropped 4 duplicate"):
        ratings = ml.load_ml1m_ratings(real("ml-1m"), filename="ratings_no_timestamp.dat")
    assert len(ratings) == 1_000_205


def test_real_melu_items_match_melus_vocabularies():
    folder = real("ml-1m/melu_extra")
    items = ml.load_melu_items(folder)
    assert (len(items), items["item"].is_unique) == (3_881, True)

    def vocabulary(name):  # MeLU's lists hold "nan" for the file's N/A, which we read as absent
        lines = (folder / name).read_text(encoding="utf-8").splitlines()
        return {line for line in lines if line} - {"nan"}

    def used(column):
        return {name for names in items[column] for name in names}

    assert set(items["rate"].dropna()) == vocabulary("m_rate.txt")
    assert used("genres") == vocabulary("m_genre.txt") and len(used("genres")) == 24
    assert used("directors") == vocabulary("m_director.txt") and len(used("directors")) == 2_185
    assert used("actors") == vocabulary("m_actor.txt") and len(used("actors")) == 7_977


@pytest.mark.parametrize(
    "state, users, rows",
    [("user_cold_state", 1_208, 163_702), ("item_cold_state", 4_769, 157_456), ("user_and_item_cold_state", 1_197, 38_603)],
)
def test_real_melu_cold_states(state, users, rows):
    frame = ml.load_melu_state(real("ml-1m/melu_states"), state)
    assert (frame["user"].nunique(), len(frame)) == (users, rows)


def test_real_melu_warm_state_rebuild(ml1m_ratings):
    warm = ml.load_melu_state(real("ml-1m/melu_states"), "warm_state", ratings=ml1m_ratings)
    assert (warm["user"].nunique(), len(warm)) == (4_832, 640_448)
    assert warm.duplicated(["user", "item"]).sum() == 4  # the repeats MeLU's id merge made are all warm
    total = len(warm) + sum(len(ml.load_melu_state(real("ml-1m/melu_states"), s)) for s in ml.MELU_STATES[1:])
    assert total == len(ml1m_ratings) == 1_000_209
