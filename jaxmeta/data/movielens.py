"""MovieLens-100K, MovieLens-1M and MeLU's files for them, read into tidy DataFrames.

Every loader takes the directory its files are in (nothing is downloaded or
hard-coded), checks each line, and returns canonical columns: ``user``, ``item``,
``rating`` (float32, whole stars 1-5) and ``timestamp`` (int64 Unix seconds) for
ratings; ``user`` or ``item`` (int64) first in feature tables; multi-valued fields
(genres, actors, ...) as tuples of str, empty where the file says nothing. A bad
file raises a ``ValueError`` naming the file and its line (or, in JSON, the user
and position); a missing directory or file raises ``FileNotFoundError`` naming it
and what was expected there.

Files and layouts (GroupLens' READMEs and MeLU's repository describe them):

* MovieLens-100K (``ml-100k/``): ``u.data`` (tab-separated user, item, rating,
  timestamp), ``u.user`` (``id|age|gender|occupation|zip``), ``u.item``
  (``|``-separated, latin-1: id, title, release date, video release date, IMDb URL
  and one 0/1 flag per genre of ``u.genre``).
* MovieLens-1M (``ml-1m/``): ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``;
  the 3-field copy ``ratings_no_timestamp.dat`` without timestamps reads the same
  way), ``users.dat`` (``UserID::Gender::Age::Occupation::Zip-code``),
  ``movies.dat`` (``MovieID::Title::Genres``, genres ``|``-separated; latin-1).
* MeLU (Lee et al., 2019) item metadata ``movies_extrainfos.dat`` (``::``-separated,
  UTF-8) and its published split, ``{state}.json`` = ``{user: [item, ...]}`` with
  ``{state}_y.json`` = ``{user: [rating, ...]}`` for the four states of
  :data:`MELU_STATES`.

Quirks handled deliberately:

* Duplicate (user, item) pairs follow the policy of
  :func:`jaxmeta.data.interactions.read_interactions`: by default the last
  occurrence is kept and a :class:`~jaxmeta.data.interactions.DuplicateInteractionsWarning`
  says how many rows were dropped. The original ML-100K and ML-1M files have
  none. MeLU merged the duplicate movie ids 860 into 811 and 1795 into 1741, so
  ``ratings_no_timestamp.dat`` (derived from MeLU's split) holds 4 repeated pairs,
  and MeLU's warm state keeps both rows of each: read it with
  ``duplicates="keep"`` to reproduce MeLU (1,000,209 rows; the default leaves
  1,000,205).
* ``warm_state.json`` is sometimes missing (it is large). It is exactly what is
  left of the ratings once the three cold states are taken out, so
  :func:`reconstruct_melu_warm_state` rebuilds it, and checks the result against
  ``warm_state_y.json`` (same users, same ratings per user) before returning it.

References:
  F. M. Harper and J. A. Konstan. The MovieLens Datasets: History and Context.
  ACM TiiS 5(4), 2015. (Research use only; do not redistribute the files.)
  H. Lee, J. Im, S. Jang, H. Cho and S. Chung. MeLU: Meta-Learned User Preference
  Estimator for Cold-Start Recommendation. KDD 2019.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from jaxmeta.data.interactions import (
    _apply_duplicates,
    _check_range,
    _numbers,
    _Origin,
    _raise_at,
    _read_text,
    _split_fields,
)

PathLike = str | os.PathLike

RATING_RANGE = (1, 5)  # MovieLens ratings are whole stars
MELU_STATES = ("warm_state", "user_cold_state", "item_cold_state", "user_and_item_cold_state")

__all__ = (
    "MELU_STATES",
    "RATING_RANGE",
    "load_melu_items",
    "load_melu_state",
    "load_ml100k_items",
    "load_ml100k_ratings",
    "load_ml100k_users",
    "load_ml1m_items",
    "load_ml1m_ratings",
    "load_ml1m_users",
    "reconstruct_melu_warm_state",
)

_ML100K = "the MovieLens-100K files (u.data, u.user, u.item, u.genre; unzip ml-100k.zip from grouplens.org)"
_ML1M = "the MovieLens-1M files (ratings.dat, users.dat, movies.dat; unzip ml-1m.zip from grouplens.org)"
_MELU_EXTRA = "MeLU's movies_extrainfos.dat (from MeLU's repository, movielens/ml-1m/)"
_MELU_STATES = "MeLU's state files ({state}.json and {state}_y.json for " + ", ".join(MELU_STATES) + ")"


def _directory(directory: PathLike, what: str) -> Path:
    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory: expected the folder holding {what}.")
    return path


def _file(directory: Path, name: str, what: str, hint: str = "") -> Path:
    path = directory / name
    if not path.is_file():
        held = sorted(p.name for p in directory.iterdir())
        shown = ", ".join(held[:12]) + (", ..." if len(held) > 12 else "") if held else "nothing"
        raise FileNotFoundError(f"{path} not found: expected {what} there (the folder holds {shown}). {hint}".rstrip())
    return path


def _ints(fields: pd.DataFrame, column: str, origin: _Origin) -> np.ndarray:
    return _numbers(fields[column], column, origin, integer=True).to_numpy(np.int64)


def _missing_if(values: pd.Series, *absent: str) -> pd.Series:
    """Strings, with the markers of an absent value (e.g. "" or "N/A") made missing."""
    return values.where(~values.isin(absent))


def _dates(values: pd.Series, date_format: str, column: str, origin: _Origin, *absent: str) -> pd.Series:
    present = ~values.isin(absent)
    dates = pd.to_datetime(values.where(present), format=date_format, errors="coerce").astype("datetime64[s]")
    bad = present & dates.isna()
    if bad.any():
        _raise_at(origin, bad, f"could not parse column {column!r} as a date like {date_format!r}", values)
    return dates


def _ratings(fields: pd.DataFrame, origin: _Origin, duplicates: str) -> pd.DataFrame:
    """user/item/rating(/timestamp) string columns parsed, range-checked, de-duplicated."""
    out = pd.DataFrame(index=fields.index)
    out["user"] = _ints(fields, "user", origin)
    out["item"] = _ints(fields, "item", origin)
    out["rating"] = _numbers(fields["rating"], "rating", origin, integer=False).astype(np.float32)
    _check_range(out["rating"], RATING_RANGE, "rating", origin, "MovieLens ratings are 1 to 5 stars.")
    if "timestamp" in fields:
        out["timestamp"] = _ints(fields, "timestamp", origin)
    out = _apply_duplicates(out, duplicates, origin, stacklevel=4)
    return out.reset_index(drop=True)


def _read(path: Path, *, sep: str, names: Sequence[str], encoding: str) -> tuple[pd.DataFrame, _Origin]:
    return _split_fields(_read_text(path, encoding), path=path, sep=sep, names=names), _Origin(str(path), 1)


def load_ml100k_ratings(directory: PathLike, *, filename: str = "u.data", duplicates: str = "last") -> pd.DataFrame:
    """Reads MovieLens-100K ratings.

    Args:
      directory: the ``ml-100k`` folder.
      filename: ``u.data`` (all ratings), or one of the ready-made splits such as
        ``u1.base`` or ``ua.test``, which have the same format.
      duplicates: the duplicate-pair policy of
        :func:`jaxmeta.data.interactions.read_interactions` (the files have none).

    Returns:
      ``user``, ``item`` (int64), ``rating`` (float32), ``timestamp`` (int64 Unix
      seconds), in file order.

    Example:
      >>> import pathlib, tempfile
      >>> with tempfile.TemporaryDirectory() as folder:
      ...     _ = (pathlib.Path(folder) / "u.data").write_text("196\\t242\\t3\\t881250949\\n")
      ...     ratings = load_ml100k_ratings(folder)
      >>> ratings.to_dict("list")
      {'user': [196], 'item': [242], 'rating': [3.0], 'timestamp': [881250949]}
    """
    what = "MovieLens-100K ratings (user, item, rating, timestamp; tab-separated)"
    path = _file(_directory(directory, _ML100K), filename, what)
    fields, origin = _read(path, sep="\t", names=("user", "item", "rating", "timestamp"), encoding="latin-1")
    return _ratings(fields, origin, duplicates)


def load_ml100k_users(directory: PathLike) -> pd.DataFrame:
    """Reads MovieLens-100K users (``u.user``).

    Args:
      directory: the ``ml-100k`` folder.

    Returns:
      ``user`` (int64), ``age`` (int64, years), ``gender`` (str, "M"/"F"),
      ``occupation`` (str, e.g. "technician"), ``zip`` (str; some are Canadian
      postcodes such as "T8H1N").
    """
    path = _file(_directory(directory, _ML100K), "u.user", "MovieLens-100K users (id|age|gender|occupation|zip)")
    fields, origin = _read(path, sep="|", names=("user", "age", "gender", "occupation", "zip"), encoding="latin-1")
    return pd.DataFrame(
        {
            "user": _ints(fields, "user", origin),
            "age": _ints(fields, "age", origin),
            "gender": fields["gender"],
            "occupation": fields["occupation"],
            "zip": fields["zip"],
        }
    )


def _ml100k_genres(directory: Path) -> list[str]:
    """The genre names of ``u.genre`` (``name|index`` lines), in index order."""
    path = _file(directory, "u.genre", "MovieLens-100K genres (name|index, one per line)")
    fields, origin = _read(path, sep="|", names=("genre", "index"), encoding="latin-1")
    index = _numbers(fields["index"], "index", origin, integer=True)
    out_of_order = pd.Series(index.to_numpy() != np.arange(len(fields)), index=fields.index)
    if out_of_order.any():
        _raise_at(origin, out_of_order, "genre indices must run 0, 1, 2, ... in order", fields["index"])
    return fields["genre"].tolist()


def load_ml100k_items(directory: PathLike) -> pd.DataFrame:
    """Reads MovieLens-100K movies (``u.item``, latin-1) with their genres from ``u.genre``.

    Args:
      directory: the ``ml-100k`` folder.

    Returns:
      ``item`` (int64), ``title`` (str, with the year, e.g. "Toy Story (1995)"),
      ``release_date`` and ``video_release_date`` (datetime64[s], NaT where empty;
      the second is empty throughout), ``imdb_url`` (str, missing where empty),
      ``genres`` (tuple of str: the ``u.genre`` names whose flag is 1, in
      ``u.genre`` order; one movie's only genre is "unknown").
    """
    directory = _directory(directory, _ML100K)
    genres = _ml100k_genres(directory)
    what = f"MovieLens-100K movies (id|title|release date|video release date|IMDb URL|{len(genres)} genre flags)"
    path = _file(directory, "u.item", what)
    flags = [f"genre {name}" for name in genres]
    names = ("item", "title", "release_date", "video_release_date", "imdb_url", *flags)
    fields, origin = _read(path, sep="|", names=names, encoding="latin-1")
    for flag in flags:
        not_flag = ~fields[flag].isin(["0", "1"])
        if not_flag.any():
            _raise_at(origin, not_flag, f"column {flag!r} must be 0 or 1", fields[flag])
    has = fields[flags].to_numpy() == "1"
    return pd.DataFrame(
        {
            "item": _ints(fields, "item", origin),
            "title": fields["title"],
            "release_date": _dates(fields["release_date"], "%d-%b-%Y", "release_date", origin, ""),
            "video_release_date": _dates(fields["video_release_date"], "%d-%b-%Y", "video_release_date", origin, ""),
            "imdb_url": _missing_if(fields["imdb_url"], ""),
            "genres": [tuple(g for g, on in zip(genres, row) if on) for row in has],
        }
    )


def load_ml1m_ratings(directory: PathLike, *, filename: str = "ratings.dat", duplicates: str = "last") -> pd.DataFrame:
    """Reads MovieLens-1M ratings, with or without the timestamp field.

    The number of ``::``-separated fields on the first line says which: 4
    (``UserID::MovieID::Rating::Timestamp``) or 3 (no timestamp, as in
    ``ratings_no_timestamp.dat``); every line must then have as many.

    Args:
      directory: the ``ml-1m`` folder.
      filename: ``ratings.dat``, or e.g. ``ratings_no_timestamp.dat``.
      duplicates: the duplicate-pair policy of
        :func:`jaxmeta.data.interactions.read_interactions`. The original file
        has no duplicate pairs; ``ratings_no_timestamp.dat`` has 4, made by
        MeLU's merge of movie ids 860 into 811 and 1795 into 1741 (it is sorted,
        so "last" is not a time order there). Pass ``"keep"`` to reproduce MeLU,
        whose warm state keeps both rows of each.

    Returns:
      ``user``, ``item`` (int64), ``rating`` (float32), and ``timestamp`` (int64
      Unix seconds) when the file has it, in file order.

    Example:
      >>> import pathlib, tempfile
      >>> with tempfile.TemporaryDirectory() as folder:
      ...     _ = (pathlib.Path(folder) / "ratings_no_timestamp.dat").write_text("1::1193::5\\n1::661::3\\n")
      ...     ratings = load_ml1m_ratings(folder, filename="ratings_no_timestamp.dat")
      >>> ratings.to_dict("list")
      {'user': [1, 1], 'item': [1193, 661], 'rating': [5.0, 3.0]}
    """
    directory = _directory(directory, _ML1M)
    hint = ""
    if filename == "ratings.dat" and (directory / "ratings_no_timestamp.dat").is_file():
        hint = "To read the copy without timestamps, pass filename='ratings_no_timestamp.dat'."
    path = _file(directory, filename, "MovieLens-1M ratings (UserID::MovieID::Rating[::Timestamp])", hint)
    text = _read_text(path, "latin-1")
    first = text.split("\n", 1)[0].rstrip("\r")
    names = {3: ("user", "item", "rating"), 4: ("user", "item", "rating", "timestamp")}.get(first.count("::") + 1)
    if names is None:
        raise ValueError(
            f"{path}, line 1: expected UserID::MovieID::Rating::Timestamp or UserID::MovieID::Rating, "
            f"found {first[:200]!r}."
        )
    fields = _split_fields(text, path=path, sep="::", names=names)
    return _ratings(fields, _Origin(str(path), 1), duplicates)


def load_ml1m_users(directory: PathLike) -> pd.DataFrame:
    """Reads MovieLens-1M users (``users.dat``).

    Args:
      directory: the ``ml-1m`` folder.

    Returns:
      ``user`` (int64), ``gender`` (str, "M"/"F"), ``age`` (int64: the age-group
      code 1, 18, 25, 35, 45, 50 or 56 of the GroupLens README), ``occupation``
      (int64 code 0-20), ``zip`` (str, as written, e.g. "48067" or "98107-2117").
    """
    what = "MovieLens-1M users (UserID::Gender::Age::Occupation::Zip-code)"
    path = _file(_directory(directory, _ML1M), "users.dat", what)
    fields, origin = _read(path, sep="::", names=("user", "gender", "age", "occupation", "zip"), encoding="latin-1")
    return pd.DataFrame(
        {
            "user": _ints(fields, "user", origin),
            "gender": fields["gender"],
            "age": _ints(fields, "age", origin),
            "occupation": _ints(fields, "occupation", origin),
            "zip": fields["zip"],
        }
    )


def _title_years(titles: pd.Series) -> pd.Series:
    return pd.to_numeric(titles.str.extract(r"\((\d{4})\)\s*$", expand=False)).astype("Int64")


def load_ml1m_items(directory: PathLike) -> pd.DataFrame:
    """Reads MovieLens-1M movies (``movies.dat``, latin-1).

    Args:
      directory: the ``ml-1m`` folder.

    Returns:
      ``item`` (int64), ``title`` (str, with the year, e.g. "Toy Story (1995)"),
      ``year`` (Int64, read off the title's final "(YYYY)"; <NA> without one),
      ``genres`` (tuple of str, e.g. ("Animation", "Children's", "Comedy")).
    """
    path = _file(_directory(directory, _ML1M), "movies.dat", "MovieLens-1M movies (MovieID::Title::Genres)")
    fields, origin = _read(path, sep="::", names=("item", "title", "genres"), encoding="latin-1")
    return pd.DataFrame(
        {
            "item": _ints(fields, "item", origin),
            "title": fields["title"],
            "year": _title_years(fields["title"]),
            "genres": [tuple(g.split("|")) if g else () for g in fields["genres"]],
        }
    )


_ROLE_NOTE = re.compile(r"\s*\([^()]*\)")


def _name_lists(values: pd.Series, *, strip_roles: bool) -> list[tuple[str, ...]]:
    """", "-separated names as tuples; "N/A" gives (). Role notes such as
    "(co-director)" are cut when ``strip_roles`` (then repeats are merged)."""
    out = []
    for value in values:
        names = [] if value in ("N/A", "") else value.split(", ")
        if strip_roles:
            names = dict.fromkeys(_ROLE_NOTE.sub("", name).strip() for name in names)
        out.append(tuple(names))
    return out


def load_melu_items(directory: PathLike, *, strip_roles: bool = True) -> pd.DataFrame:
    """Reads MeLU's IMDb metadata of the ML-1M movies (``movies_extrainfos.dat``, UTF-8).

    "N/A" in the file means absent: it becomes NaN, NaT or an empty tuple.

    Args:
      directory: the folder holding ``movies_extrainfos.dat``.
      strip_roles: cut the role notes from director and writer names ("Cathy
        Caplan(co-director)", "Pete Docter (original story by)") and merge the
        names repeated once their notes are gone, as MeLU does for directors.

    Returns:
      ``item`` (int64), ``title`` (str, without the year), ``year`` (Int64),
      ``rate`` (str, the MPAA rating, e.g. "PG-13" or "UNRATED"), ``released``
      (datetime64[s], NaT where absent), ``genres``, ``directors``, ``writers``,
      ``actors`` (tuples of str, in file order), ``plot`` and ``poster`` (str, the
      poster's URL; missing where absent).
    """
    path = _file(_directory(directory, _MELU_EXTRA), "movies_extrainfos.dat", _MELU_EXTRA)
    names = ("item", "title", "year", "rate", "released", "genres", "directors", "writers", "actors", "plot", "poster")
    fields, origin = _read(path, sep="::", names=names, encoding="utf-8")
    return pd.DataFrame(
        {
            "item": _ints(fields, "item", origin),
            "title": fields["title"],
            "year": _numbers(fields["year"], "year", origin, integer=True).astype("Int64"),
            "rate": _missing_if(fields["rate"], "N/A", ""),
            "released": _dates(fields["released"], "%d %b %Y", "released", origin, "N/A", ""),
            "genres": _name_lists(fields["genres"], strip_roles=False),
            "directors": _name_lists(fields["directors"], strip_roles=strip_roles),
            "writers": _name_lists(fields["writers"], strip_roles=strip_roles),
            "actors": _name_lists(fields["actors"], strip_roles=False),
            "plot": _missing_if(fields["plot"], "N/A", ""),
            "poster": _missing_if(fields["poster"], "N/A", ""),
        }
    )


def _read_state_json(path: Path) -> dict[str, list]:
    """A ``{user: [value, ...]}`` JSON object; a malformed file is named with its line."""
    try:
        data = json.loads(_read_text(path, "utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{user_id: [value, ...]}}, found a {type(data).__name__}.")
    for user, values in data.items():
        if not isinstance(values, list):
            raise ValueError(f"{path}: user {user!r} maps to a {type(values).__name__}; expected a list of values.")
    return data


def _where_in_state(data: dict[str, list], index: int) -> str:
    """Names the value at ``index`` of a state's flattened lists by its user and position."""
    ends = np.cumsum([len(values) for values in data.values()])
    which = int(np.searchsorted(ends, index, side="right"))
    position = index - (int(ends[which - 1]) if which else 0)
    return f"user {list(data)[which]!r}, position {position}"


def _state_numbers(path: Path, data: dict[str, list], what: str, *, integer: bool) -> np.ndarray:
    """All values of a state file, flattened in order; a bad one is named by user and position."""
    flat = pd.Series([v for values in data.values() for v in values], dtype=object)
    numbers = pd.to_numeric(flat, errors="coerce")
    bad = numbers.isna() | flat.map(lambda v: isinstance(v, bool))
    if integer:
        bad |= numbers != np.round(numbers)
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        kind = "a whole number" if integer else "a number"
        raise ValueError(f"{path}, {_where_in_state(data, first)}: {what} {flat[first]!r} is not {kind}.")
    return numbers.to_numpy()


def _state_users(path: Path, data: dict[str, list]) -> np.ndarray:
    """The user id of every value of a state file (the keys, repeated)."""
    users = pd.to_numeric(pd.Series(list(data), dtype=object), errors="coerce")
    bad = users.isna() | (users != np.round(users))
    if bad.any():
        user = list(data)[int(np.flatnonzero(bad.to_numpy())[0])]
        raise ValueError(f"{path}: user id {user!r} is not a whole number.")
    return np.repeat(users.to_numpy(np.int64), [len(values) for values in data.values()])


def _state_ratings(path: Path, data: dict[str, list]) -> np.ndarray:
    ratings = _state_numbers(path, data, "rating", integer=False).astype(np.float32)
    outside = np.flatnonzero((ratings < RATING_RANGE[0]) | (ratings > RATING_RANGE[1]))
    if outside.size:
        raise ValueError(
            f"{path}, {_where_in_state(data, int(outside[0]))}: rating {ratings[outside[0]]:g} is outside "
            f"[{RATING_RANGE[0]}, {RATING_RANGE[1]}] ({outside.size} ratings in all). MeLU's ratings are 1 to 5 stars."
        )
    return ratings


def load_melu_state(directory: PathLike, state: str, *, ratings: pd.DataFrame | None = None) -> pd.DataFrame:
    """Reads one state of MeLU's published ML-1M split.

    Args:
      directory: the folder holding ``{state}.json`` and ``{state}_y.json``.
      state: one of :data:`MELU_STATES`.
      ratings: used only for ``"warm_state"`` when ``warm_state.json`` is absent:
        the ratings to rebuild it from, see :func:`reconstruct_melu_warm_state`.

    Returns:
      ``user``, ``item`` (int64), ``rating`` (float32): users in the file's order,
      each user's items in the list's order, aligned with ``{state}_y.json``.
      Rows are kept as published, repeats included.

    Raises:
      ValueError: malformed JSON (line and column named), the two files listing
        different users or a user with more items than ratings (user named), an id
        that is not a whole number or a rating outside 1-5 (user and position named).
      FileNotFoundError: a file is missing; for ``warm_state.json`` without
        ``ratings`` the message says how to rebuild it.
    """
    if state not in MELU_STATES:
        raise ValueError(f"state={state!r}: pass one of {MELU_STATES}.")
    directory = _directory(directory, _MELU_STATES)
    if state == "warm_state" and not (directory / "warm_state.json").is_file() and ratings is not None:
        return reconstruct_melu_warm_state(directory, ratings)
    hint = ""
    if state == "warm_state":
        hint = (
            "Rebuild it from the ratings: load_melu_state(directory, 'warm_state', ratings=load_ml1m_ratings("
            "ml1m_directory, filename='ratings_no_timestamp.dat', duplicates='keep'))."
        )
    x_path = _file(directory, f"{state}.json", f"MeLU's {state} items ({{user_id: [movie_id, ...]}})", hint)
    y_path = _file(directory, f"{state}_y.json", f"MeLU's {state} ratings ({{user_id: [rating, ...]}})")
    items, ratings_y = _read_state_json(x_path), _read_state_json(y_path)
    if items.keys() != ratings_y.keys():
        only_x = [u for u in items if u not in ratings_y]
        only_y = [u for u in ratings_y if u not in items]
        raise ValueError(
            f"{x_path} and {y_path} list different users: {len(only_x)} only in the first (e.g. {only_x[:3]}), "
            f"{len(only_y)} only in the second (e.g. {only_y[:3]}). The two files of a state must pair up."
        )
    for user, values in items.items():
        if len(values) != len(ratings_y[user]):
            raise ValueError(
                f"{x_path} and {y_path} disagree on user {user!r}: {len(values)} items but "
                f"{len(ratings_y[user])} ratings. The lists of a user must align one to one."
            )
    return pd.DataFrame(
        {
            "user": _state_users(x_path, items),
            "item": _state_numbers(x_path, items, "item id", integer=True).astype(np.int64),
            "rating": _state_ratings(y_path, ratings_y),
        }
    )


def _counts_text(counts: pd.Series) -> str:
    return "{" + ", ".join(f"{r:g}: {n}" for r, n in counts.items()) + "}"


def reconstruct_melu_warm_state(directory: PathLike, ratings: pd.DataFrame) -> pd.DataFrame:
    """Rebuilds MeLU's warm state as the ratings not in its three cold states.

    The complement is taken as a multiset of (user, item, rating) rows, so a
    pair rated twice in ``ratings`` and in no cold state stays twice, as in MeLU's
    file. The result is then checked against ``warm_state_y.json``: the same users,
    and for each user the same ratings (as a multiset; the item order of
    ``warm_state.json`` cannot be rebuilt, nor does MeLU's split depend on it).

    Args:
      directory: the folder holding the cold states' ``.json`` and ``_y.json``
        files and ``warm_state_y.json``.
      ratings: every rating of MeLU's split with the columns ``user``, ``item``,
        ``rating``: MeLU's ``ratings_no_timestamp.dat`` read by
        :func:`load_ml1m_ratings` with ``duplicates="keep"``. (The original
        ``ratings.dat`` would first need MeLU's id merges 860 -> 811 and
        1795 -> 1741.)

    Returns:
      ``user``, ``item`` (int64), ``rating`` (float32), in the order of ``ratings``.

    Raises:
      ValueError: a cold-state row is not in ``ratings``, or the result does not
        match ``warm_state_y.json``; the message gives an example user.
    """
    directory = _directory(directory, _MELU_STATES)
    key = ["user", "item", "rating"]
    missing = [c for c in key if c not in ratings.columns]
    if missing:
        raise ValueError(
            f"ratings lacks the column(s) {missing}; available columns: {list(ratings.columns)}. "
            "Pass the output of load_ml1m_ratings."
        )
    table = ratings[key].astype({"user": np.int64, "item": np.int64, "rating": np.float32}).reset_index(drop=True)
    cold = pd.concat([load_melu_state(directory, state) for state in MELU_STATES[1:]], ignore_index=True)
    table["copy"] = table.groupby(key).cumcount()  # numbers repeats, so the difference is a multiset one
    cold["copy"] = cold.groupby(key).cumcount()
    unmatched = cold.merge(table, on=[*key, "copy"], how="left", indicator=True)["_merge"] == "left_only"
    if unmatched.any():
        first = int(np.flatnonzero(unmatched.to_numpy())[0])
        user, item, rating = (cold.at[first, column] for column in key)
        raise ValueError(
            f"{int(unmatched.sum())} cold-state rows of {directory} are not in ratings, e.g. user {user}, item "
            f"{item}, rating {rating:g}. Pass MeLU's ratings_no_timestamp.dat read with duplicates='keep'."
        )
    in_cold = table.merge(cold, on=[*key, "copy"], how="left", indicator=True)["_merge"].to_numpy() == "both"
    warm = table.loc[~in_cold, key].reset_index(drop=True)

    what = "MeLU's warm_state ratings ({user_id: [rating, ...]}), to check the rebuild against"
    y_path = _file(directory, "warm_state_y.json", what)
    published = _read_state_json(y_path)
    expected = pd.DataFrame({"user": _state_users(y_path, published), "rating": _state_ratings(y_path, published)})
    got_counts = warm.groupby(["user", "rating"]).size()
    expected_counts = expected.groupby(["user", "rating"]).size()
    if not got_counts.equals(expected_counts):
        got_users, expected_users = set(warm["user"]), set(expected["user"])
        hint = (
            "Pass MeLU's ratings_no_timestamp.dat read with duplicates='keep' "
            "(de-duplicated ratings lose 4 warm rows)."
        )
        if got_users != expected_users:
            extra, lacking = sorted(got_users - expected_users), sorted(expected_users - got_users)
            raise ValueError(
                f"the rebuilt warm state does not match {y_path}: {len(got_users)} users against "
                f"{len(expected_users)}; {len(extra)} not in the file (e.g. {extra[:3]}), {len(lacking)} "
                f"missing (e.g. {lacking[:3]}). {hint}"
            )
        diff = got_counts.sub(expected_counts, fill_value=0)
        user = int(diff[diff != 0].index[0][0])
        raise ValueError(
            f"the rebuilt warm state does not match {y_path}: user {user} has the ratings "
            f"{_counts_text(got_counts.get(user, pd.Series(dtype=int)))} (rating: count) in the rebuild but "
            f"{_counts_text(expected_counts.get(user, pd.Series(dtype=int)))} in the file. {hint}"
        )
    return warm
