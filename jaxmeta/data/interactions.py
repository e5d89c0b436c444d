"""Interaction tables from any source: CSV, Parquet or a DataFrame, checked and tidied.

:func:`read_interactions` reads one row per (user, item) interaction, renames the
caller's columns to the canonical ``user``, ``item``, ``rating`` (or ``click``) and
``timestamp``, and checks the table: every problem raises a ``ValueError`` that
names the file and the line (CSV) or row (Parquet, DataFrame) where it is, and says
what to do. :func:`read_features` reads an optional user or item feature table and
:func:`check_ids_in_features` checks that it covers every id that was rated.

Where a row is: CSV files report file lines counted from 1, the header being line
1 (blank lines are skipped but still counted; a quoted field that spans lines
shifts the count). Parquet files and DataFrames report the 0-based row position.

Duplicate user–item pairs are dropped keeping the last occurrence, and the number
dropped is reported with a :class:`DuplicateInteractionsWarning` (filter it with
the ``warnings`` module like any warning); ``duplicates="error"`` raises instead and
``duplicates="keep"`` keeps every row.
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, NoReturn

import numpy as np
import pandas as pd

from jaxmeta._checks import shown
from jaxmeta.data import scale

Source = str | os.PathLike | pd.DataFrame

DUPLICATE_POLICIES = ("last", "keep", "error")
PARQUET_SUFFIXES = (".parquet", ".pq")

__all__ = (
    "DUPLICATE_POLICIES",
    "DuplicateInteractionsWarning",
    "check_ids_in_features",
    "read_features",
    "read_interactions",
    "table_columns",
)


class DuplicateInteractionsWarning(UserWarning):
    """Duplicate user–item rows were dropped; the message says how many and where."""


class _Origin(NamedTuple):
    """Where a table came from, to name it and its rows in error messages.

    A table's index holds each row's 0-based position in the source, so that rows
    can be named after rows before them were dropped.
    """

    name: str  # the file, or "the DataFrame"
    first_line: int | None  # file line of position 0; None: name row positions instead

    def at(self, position: int) -> str:
        if self.first_line is None:
            return f"row {position}"
        return f"line {position + self.first_line}"


_shown = shown


def _raise_at(
    origin: _Origin, bad: pd.Series, problem: str, values: pd.Series | None = None, hint: str = ""
) -> NoReturn:
    """Raises a ValueError naming the first row where ``bad`` holds, its value and the count."""
    positions = bad.index[bad.to_numpy(dtype=bool)]
    first = positions[0]
    value = "" if values is None else f" ({_shown(values.loc[first])})"
    count = f"; {len(positions)} rows in all" if len(positions) > 1 else ""
    raise ValueError(f"{origin.name}, {origin.at(int(first))}: {problem}{value}{count}. {hint}".rstrip())


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: expected {what}. Pass the path of the file itself.")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected {what} there. Pass the path of an existing file.")
    return path


def _read_text(path: Path, encoding: str) -> str:
    """The file decoded with ``encoding``; a decoding error names the line."""
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}, line {line}: not valid {encoding} text ({err.reason} at byte {err.start}). "
            "Check that this is the right file, or that it was not re-encoded."
        ) from None


def _split_fields(text: str, *, path: Path, sep: str, names: Sequence[str]) -> pd.DataFrame:
    """Splits a header-less, unquoted text table into string columns.

    Every line must have exactly ``len(names)`` fields; the first that does not is
    named in the error. Windows line ends are accepted and trailing blank lines
    ignored. The result's index is the 0-based line position (line = index + 1).
    """
    shown_sep = sep
    if len(sep) > 1:  # pandas' fast parser takes one character; "a::b".split("::") splits the same way
        if "\x1f" in text:
            raise ValueError(f"{path}: holds the control character \\x1f, which cannot be parsed here.")
        text, sep = text.replace(sep, "\x1f"), "\x1f"
    body = text.replace("\r\n", "\n").rstrip("\n")
    if not body:
        raise ValueError(
            f"{path} is empty: expected lines of {len(names)} {shown_sep!r}-separated fields ({', '.join(names)})."
        )
    data = np.frombuffer(body.encode("utf-8"), dtype=np.uint8)  # sep and newline are ASCII: byte counts are exact
    newlines = np.flatnonzero(data == ord("\n"))
    seps_before = np.concatenate([[0], np.cumsum(data == ord(sep))])
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [data.size]])
    fields = seps_before[ends] - seps_before[starts] + 1
    bad = np.flatnonzero(fields != len(names))
    if bad.size:
        line = int(bad[0])
        content = body.split("\n", line + 1)[line].replace(sep, shown_sep)
        more = f" ({bad.size} such lines in all)" if bad.size > 1 else ""
        raise ValueError(
            f"{path}, line {line + 1}: expected {len(names)} fields separated by {shown_sep!r} "
            f"({', '.join(names)}), found {fields[line]}: {content[:200]!r}{more}."
        )
    frame = pd.read_csv(
        io.StringIO(body),
        sep=sep,
        header=None,
        names=list(names),
        dtype=str,
        na_filter=False,
        quoting=csv.QUOTE_NONE,
        lineterminator="\n",
        engine="c",
    )
    if len(frame) != len(starts):  # cannot happen given the checks above; guards the line numbering
        raise ValueError(f"{path}: read {len(frame)} rows from {len(starts)} lines; the line numbers would be wrong.")
    return frame


def _table_file(source: str | os.PathLike) -> Path:
    """The path of an existing table file; a Parquet file only when pyarrow can read it."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a file path or a pandas DataFrame, got {type(source).__name__}.")
    path = _existing_file(source, "a CSV or Parquet table")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        try:
            import pyarrow  # noqa: F401  (pandas reads Parquet through it)
        except ImportError:
            raise ImportError(
                f"reading the Parquet file {path} needs pyarrow: pip install pyarrow "
                "(or read the table yourself and pass the DataFrame)."
            ) from None
    return path


def _parquet_error(path: Path, err: Exception) -> NoReturn:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    raise ValueError(f"{path}: could not be read as a Parquet file ({reason}). "
                     "Check that this is the right file, or pass a CSV table.") from None


def _unreadable(path: Path) -> NoReturn:
    raise PermissionError(f"{path}: cannot be read (permission denied). Make it readable, or pass a copy that is.")


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except PermissionError:
        _unreadable(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowIOError is an OSError, ArrowInvalid a ValueError
        _parquet_error(path, err)


def _read_csv(path: Path, *, sep: str, encoding: str, **options: object) -> pd.DataFrame:
    """``pd.read_csv`` whose failures name the file (and the line, where pandas says which)."""
    try:
        return pd.read_csv(path, sep=sep, encoding=encoding, **options)
    except pd.errors.ParserError as err:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
        if found is None:
            raise ValueError(f"{path}: could not be parsed as a {sep!r}-separated table: {err}") from None
        expected, line, saw = found.groups()
        raise ValueError(
            f"{path}, line {line}: expected {expected} fields separated by {sep!r} as in the header, found {saw}. "
            "Fix that line, or pass the right sep."
        ) from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty: expected a header line naming the columns, then one row a line. "
                         "Pass the file that holds the table.") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not valid {encoding} text ({err.reason}). Pass the file's encoding.") from None
    except PermissionError:
        _unreadable(path)


def _csv_sep(path: Path, sep: str | None) -> str:
    if sep is not None:
        return sep
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def _load_table(source: Source, *, sep: str | None, encoding: str, as_text: bool) -> tuple[pd.DataFrame, _Origin]:
    """A raw table and its origin; CSV values stay strings when ``as_text``."""
    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True), _Origin("the DataFrame", None)
    path = _table_file(source)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _read_parquet(path).reset_index(drop=True), _Origin(str(path), None)
    frame = _read_csv(path, sep=_csv_sep(path, sep), encoding=encoding, dtype=str if as_text else None,
                      skip_blank_lines=False)
    blank = frame.isna().all(axis=1)  # blank lines: skipped, but kept until now so rows know their line
    return frame[~blank], _Origin(str(path), 2)


def table_columns(source: Source, *, sep: str | None = None, encoding: str = "utf-8") -> list[str]:
    """The column names of a table, read from a file's header (or schema) without its rows.

    Args:
      source: a CSV file with a header line, a Parquet file or a DataFrame, as
        in :func:`read_interactions`.
      sep, encoding: as in :func:`read_interactions`.

    Raises:
      As :func:`read_interactions` does for a file that is missing, a folder,
      empty, unreadable, or Parquet without pyarrow; the message names the file.

    Example:
      >>> import pandas as pd
      >>> table_columns(pd.DataFrame({"user": [1], "item": [2], "rating": [5.0]}))
      ['user', 'item', 'rating']
    """
    if isinstance(source, pd.DataFrame):
        return [str(c) for c in source.columns]
    path = _table_file(source)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except PermissionError:
            _unreadable(path)
        except (OSError, ValueError) as err:
            _parquet_error(path, err)
    header = _read_csv(path, sep=_csv_sep(path, sep), encoding=encoding, nrows=0)
    return [str(c) for c in header.columns]


def _select(frame: pd.DataFrame, columns: Mapping[str, str], origin: _Origin) -> pd.DataFrame:
    """Columns ``{canonical: source name}`` of ``frame``, renamed to the canonical names."""
    wanted = list(columns.values())
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"each column may play one part only, got {dict(columns)}.")
    missing = [f"{name!r} ({role})" for role, name in columns.items() if name not in frame.columns]
    if missing:
        available = ", ".join(repr(c) for c in frame.columns)
        raise ValueError(
            f"{origin.name}: missing column(s) {', '.join(missing)}; available columns: {available}. "
            "Pass the names your table uses."
        )
    return frame[wanted].set_axis(list(columns), axis=1)


def _check_complete(frame: pd.DataFrame, columns: Mapping[str, str], origin: _Origin) -> None:
    for role, name in columns.items():
        missing = frame[role].isna()
        if missing.any():
            _raise_at(origin, missing, f"missing value in column {name!r} ({role})", hint="Fill or drop those rows.")


def _numbers(values: pd.Series, name: str, origin: _Origin, *, integer: bool) -> pd.Series:
    """``values`` (strings or numbers, none missing) as numbers; bad ones are named."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(np.int64)
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna()
    if integer:
        bad |= numbers.notna() & (numbers != np.round(numbers))
    if bad.any():
        kind = "a whole number" if integer else "a number"
        _raise_at(origin, bad, f"could not parse column {name!r} as {kind}", values)
    return numbers


_CANONICAL_INT = r"-?(?:0|[1-9][0-9]*)"


def _ids(values: pd.Series, name: str, origin: _Origin) -> pd.Series:
    """Ids as int64 when every one is a whole number that int64 holds, else as strings.

    Strings convert only when written canonically, so that ids "007" and "7" stay apart;
    a trailing ".0" (a float column written out: "12.0") is canonical too.
    """
    if pd.api.types.is_unsigned_integer_dtype(values) and len(values) and values.max() > np.iinfo(np.int64).max:
        return values.astype(str)  # beyond int64: text, not wrapped around to negative ids
    if pd.api.types.is_integer_dtype(values):
        return values.astype(np.int64)
    if pd.api.types.is_float_dtype(values):
        return _numbers(values, name, origin, integer=True).astype(np.int64)
    if pd.api.types.is_bool_dtype(values):
        raise ValueError(f"{origin.name}: column {name!r} holds booleans; ids must be integers or strings.")
    text = values.astype(str)
    if text.str.fullmatch(_CANONICAL_INT + r"(?:\.0+)?").all():
        whole = text.str.replace(r"\.0+$", "", regex=True)
        if whole.nunique() == text.nunique():  # "12" and "12.0" both there: two ids, kept apart as text
            try:
                return whole.astype(np.int64)
            except OverflowError:  # digits beyond int64: the ids stay text
                return text
    return text


def ids_as_read(values: pd.Series, name: str, source: str) -> pd.Series:
    """Text ids as :func:`read_interactions` reads them (int64 when every one is a canonical whole number,
    else text): for a table whose ids must match a run's, such as a new user's ratings."""
    return _ids(values.astype(str), name, _Origin(source, None))


def _check_range(values: pd.Series, bounds: tuple[float, float], name: str, origin: _Origin, hint: str) -> None:
    low, high = bounds
    outside = (values < low) | (values > high)
    if outside.any():
        _raise_at(origin, outside, f"value of column {name!r} outside [{low}, {high}]", values, hint)


def _raise_rating(origin: _Origin, bad: pd.Series, values: pd.Series, label: str, problem: str,
                  hint: str = "") -> NoReturn:
    """Raises a ValueError naming the first row where ``bad`` holds, its rating and the count."""
    positions = bad.index[bad.to_numpy(dtype=bool)]
    first = int(positions[0])
    count = f" ({len(positions)} rows in all)" if len(positions) > 1 else ""
    rows = "those rows" if len(positions) > 1 else "that row"
    raise ValueError(f"{origin.name}, {origin.at(first)}: {label} {_shown(values.loc[first])} {problem}{count}; "
                     f"fix {rows}{hint}.")


def _check_ratings(values: pd.Series, rating_range: str | tuple[float, float] | None, name: str,
                   origin: _Origin) -> None:
    """Checks float64 ratings: finite in float32 always, then inside ``rating_range``."""
    label = "rating" if name == "rating" else f"rating (column {name!r})"
    bad = pd.Series(~scale.finite32(values), index=values.index)
    if bad.any():
        first = values.loc[bad.index[bad.to_numpy()][0]]
        beyond = f" in float32 (whose largest is {scale.FLOAT32_MAX:.2g})" if np.isfinite(first) else ""
        _raise_rating(origin, bad, values, label, f"is not a finite number{beyond}")
    if isinstance(rating_range, str):  # "infer", checked by read_interactions
        if len(values) == 0:
            return
        low, high = scale.fences(values)
        outside = (values < low) | (values > high)
        if outside.any():
            _raise_rating(origin, outside, values, label,
                          f"is outside the scale of the other ratings ({scale.infer_scale(values)})",
                          ", or pass --rating-scale LOW HIGH if the scale is wider")
    elif rating_range is not None:
        _check_range(values, rating_range, name, origin,
                     "Fix those rows, or pass the scale your ratings use (--rating-scale LOW HIGH).")


def _apply_duplicates(frame: pd.DataFrame, policy: str, origin: _Origin, *, stacklevel: int) -> pd.DataFrame:
    """Applies a duplicate policy to the (user, item) pairs of ``frame``."""
    if policy not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates={policy!r}: pass one of {DUPLICATE_POLICIES}.")
    if policy == "keep":
        return frame
    dropped = frame.duplicated(["user", "item"], keep="last")
    if not dropped.any():
        return frame
    first = frame.index[dropped.to_numpy()][0]
    user, item = frame.at[first, "user"], frame.at[first, "item"]
    same = frame.index[((frame["user"] == user) & (frame["item"] == item)).to_numpy()]
    where = " and ".join(origin.at(int(p)) for p in same)
    example = f"e.g. user {_shown(user)}, item {_shown(item)} at {where}"
    if policy == "error":
        raise ValueError(
            f"{origin.name}: {int(dropped.sum())} duplicate user-item row(s), {example}. Remove them, "
            "or pass duplicates='last' to keep the last occurrence of each pair."
        )
    warnings.warn(
        f"{origin.name}: dropped {int(dropped.sum())} duplicate user-item row(s), keeping the last occurrence "
        f"of each pair ({example}). Pass duplicates='error' to stop instead, or 'keep' to keep every row.",
        DuplicateInteractionsWarning,
        stacklevel=stacklevel,
    )
    return frame[~dropped]


def naive_utc(dates: pd.Series) -> pd.Series:
    """Time-zone-aware datetimes as naive ones in UTC (the same instants, comparable and convertible to
    numbers like any naive datetime); anything else as it is."""
    if isinstance(dates.dtype, pd.DatetimeTZDtype):
        return dates.dt.tz_convert("UTC").dt.tz_localize(None)
    return dates


def _timestamps(values: pd.Series, name: str, origin: _Origin) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        return naive_utc(values)
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().all():
        integral = (numbers == np.round(numbers)).all()
        return numbers.astype(np.int64) if integral else numbers.astype(np.float64)
    try:
        dates = pd.to_datetime(values, errors="coerce")
    except ValueError:  # offsets of several time zones
        dates = None
    if dates is None or not pd.api.types.is_datetime64_any_dtype(dates):  # each one its instant in UTC
        dates = pd.to_datetime(values, errors="coerce", utc=True)
    dates = naive_utc(dates)
    if dates.isna().any():
        _raise_at(
            origin, dates.isna(), f"could not parse column {name!r} as a number or a date", values,
            "Use Unix times or one date format throughout.",
        )
    return dates


def read_interactions(
    source: Source,
    *,
    user: str,
    item: str,
    rating: str | None = None,
    click: str | None = None,
    timestamp: str | None = None,
    rating_range: tuple[float, float] | str | None = None,
    sep: str | None = None,
    duplicates: str = "last",
    encoding: str = "utf-8",
) -> pd.DataFrame:
    """Reads an interaction table and checks it.

    Args:
      source: a CSV file with a header line, a Parquet file (``.parquet`` or
        ``.pq``; needs pyarrow) or a DataFrame.
      user, item: the names of the user and item id columns in ``source``.
      rating: the name of the explicit rating column; pass it or ``click``.
      click: the name of the implicit-feedback column, 0 or 1 (or booleans).
      timestamp: the name of an optional time column: Unix times or dates.
      rating_range: inclusive ``(low, high)``; ratings outside it are an error.
        ``"infer"``: ratings outside the :func:`jaxmeta.data.scale.fences` of
        the file's ratings are an error (a 1e9 among 1–5 stars, a -1 in a
        non-negative table). None: no range. Whatever it is, a rating that
        is not a finite number in float32 (inf, 1e300) is an error.
      sep: the CSV field separator; default ``"\\t"`` for ``.tsv``/``.tab``
        files and ``","`` otherwise.
      duplicates: what to do with repeated (user, item) pairs: ``"last"`` keeps
        the last occurrence and warns with a :class:`DuplicateInteractionsWarning`
        saying how many rows were dropped; ``"error"`` raises; ``"keep"`` keeps all.
      encoding: the text encoding of a CSV file.

    Returns:
      A DataFrame with a fresh RangeIndex in source order and the columns
      ``user`` and ``item`` (int64 when every id is a whole number written
      without leading zeros, else str), then ``rating`` (float32) or ``click``
      (int8, 0 or 1), then ``timestamp`` if asked for (int64 for whole numbers,
      float64 for other numbers, datetime64 for dates).

    Raises:
      ValueError: a missing column, a missing value, an unparsable value, a
        rating that is not finite in float32 or is outside ``rating_range``
        (or the inferred fences), a click other than 0/1, or a duplicate
        pair under ``duplicates="error"``; the message names the file and the
        line (CSV) or row (Parquet, DataFrame).
      FileNotFoundError: ``source`` is a path to no file.
      IsADirectoryError: ``source`` is a folder.
      PermissionError: ``source`` cannot be read.
      ImportError: ``source`` is a Parquet file and pyarrow is not installed.

    Example:
      >>> import pandas as pd
      >>> raw = pd.DataFrame({"uid": ["a", "b"], "movie": [10, 11], "stars": [4, 5]})
      >>> df = read_interactions(raw, user="uid", item="movie", rating="stars", rating_range=(1, 5))
      >>> df.to_dict("list")
      {'user': ['a', 'b'], 'item': [10, 11], 'rating': [4.0, 5.0]}
      >>> [str(t) for t in df.dtypes]
      ['str', 'int64', 'float32']
      >>> broken = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": [1, 2, 1, 2, 1], "rating": [4, 5, 1, 1e9, 3]})
      >>> read_interactions(broken, user="user", item="item", rating="rating", rating_range="infer")
      Traceback (most recent call last):
      ...
      ValueError: the DataFrame, row 3: rating 1000000000.0 is outside the scale of the other ratings (1–5); \
fix that row, or pass --rating-scale LOW HIGH if the scale is wider.
    """
    if (rating is None) == (click is None):
        raise ValueError(
            "pass exactly one target column: rating=COLUMN for explicit ratings or click=COLUMN for 0/1 clicks."
        )
    if rating_range is not None:
        if rating is None:
            raise ValueError("rating_range applies to ratings only; drop it when passing click=.")
        if isinstance(rating_range, str):
            if rating_range != "infer":
                raise ValueError(f"rating_range={rating_range!r}: pass (low, high), 'infer' or None.")
        elif len(rating_range) != 2 or not rating_range[0] <= rating_range[1]:
            raise ValueError(f"rating_range={rating_range!r}: pass (low, high) with low <= high, or 'infer'.")
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates={duplicates!r}: pass one of {DUPLICATE_POLICIES}.")
    columns = {"user": user, "item": item}
    columns |= {"rating": rating} if rating is not None else {"click": click}
    if timestamp is not None:
        columns["timestamp"] = timestamp
    raw, origin = _load_table(source, sep=sep, encoding=encoding, as_text=True)
    frame = _select(raw, columns, origin)
    _check_complete(frame, columns, origin)
    out = pd.DataFrame(index=frame.index)
    out["user"] = _ids(frame["user"], user, origin)
    out["item"] = _ids(frame["item"], item, origin)
    if rating is not None:
        # checked in float64: a rating beyond float32's range would be inf once cast
        ratings = _numbers(frame["rating"], rating, origin, integer=False).astype(np.float64)
        _check_ratings(ratings, rating_range, rating, origin)
        out["rating"] = ratings.astype(np.float32)
    else:
        clicks = _numbers(frame["click"], click, origin, integer=False)
        not_binary = ~clicks.isin([0, 1])
        if not_binary.any():
            _raise_at(origin, not_binary, f"column {click!r} (click) must hold 0 or 1", frame["click"],
                      "Pass explicit ratings with rating= instead.")
        out["click"] = clicks.astype(np.int8)
    if timestamp is not None:
        out["timestamp"] = _timestamps(frame["timestamp"], timestamp, origin)
    out = _apply_duplicates(out, duplicates, origin, stacklevel=3)
    return out.reset_index(drop=True)


def read_features(
    source: Source,
    *,
    key: str,
    columns: Sequence[str] | None = None,
    key_name: str | None = None,
    sep: str | None = None,
    encoding: str = "utf-8",
) -> pd.DataFrame:
    """Reads a user or item feature table: one row per id.

    Feature values keep the dtypes pandas infers and may be missing (encoding
    them, with an out-of-vocabulary bucket, is the feature step's job); the key
    must be present and unique.

    Args:
      source: a CSV file with a header line, a Parquet file or a DataFrame.
      key: the name of the id column in ``source``.
      columns: the feature columns to keep, in this order; default all.
      key_name: the name of the id column in the result, e.g. ``"user"`` or
        ``"item"`` to line it up with :func:`read_interactions`; default ``key``.
      sep: the CSV field separator, as in :func:`read_interactions`.
      encoding: the text encoding of a CSV file.

    Returns:
      A DataFrame with a fresh RangeIndex: the key column first (int64 when every
      id is a whole number, else str), then the feature columns.

    Raises:
      ValueError: a missing column, or a missing or repeated id (the message
        names the file and line or row).

    Example:
      >>> import pandas as pd
      >>> raw = pd.DataFrame({"movie": [10, 11], "genre": ["Drama", "Comedy"], "n": [1, 2]})
      >>> read_features(raw, key="movie", columns=["genre"], key_name="item").to_dict("list")
      {'item': [10, 11], 'genre': ['Drama', 'Comedy']}
    """
    raw, origin = _load_table(source, sep=sep, encoding=encoding, as_text=False)
    key_name = key if key_name is None else key_name
    columns = [c for c in raw.columns if c != key] if columns is None else list(columns)
    if key in columns or key_name in columns:
        raise ValueError(f"columns={columns} repeats the key {key!r}: list the feature columns only.")
    frame = _select(raw, {key_name: key} | {c: c for c in columns}, origin)
    _check_complete(frame, {key_name: key}, origin)
    frame[key_name] = _ids(frame[key_name], key, origin)
    repeated = frame.duplicated(key_name, keep=False)
    if repeated.any():
        first = frame.index[repeated.to_numpy()][0]
        same = frame.index[(frame[key_name] == frame.at[first, key_name]).to_numpy()]
        raise ValueError(
            f"{origin.name}: {int(frame.duplicated(key_name).sum())} repeated id(s) in key column {key!r}, "
            f"e.g. {_shown(frame.at[first, key_name])} at {' and '.join(origin.at(int(p)) for p in same)}. "
            "A feature table needs one row per id: merge or drop the repeats."
        )
    return frame.reset_index(drop=True)


def check_ids_in_features(
    interactions: pd.DataFrame, features: pd.DataFrame, key_column: str, table_name: str
) -> None:
    """Checks that every id of ``interactions[key_column]`` has a row in ``features``.

    Args:
      interactions: e.g. from :func:`read_interactions`.
      features: e.g. from :func:`read_features` with ``key_name=key_column``.
      key_column: the id column both tables share, e.g. ``"user"`` or ``"item"``.
      table_name: how to name the feature table in the error, e.g. its file.

    Raises:
      ValueError: some ids have no features; says how many and gives examples.

    Example:
      >>> import pandas as pd
      >>> ratings = pd.DataFrame({"user": [1, 2, 3], "item": [5, 5, 6]})
      >>> check_ids_in_features(ratings, pd.DataFrame({"item": [5, 6]}), "item", "items.csv")
      >>> check_ids_in_features(ratings, pd.DataFrame({"user": [1]}), "user", "users.csv")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: 2 of the 3 user ids in the interactions have no row in users.csv, e.g. [2, 3]. Add rows ...
    """
    for frame, name in ((interactions, "the interactions"), (features, table_name)):
        if key_column not in frame.columns:
            available = ", ".join(repr(c) for c in frame.columns)
            raise ValueError(f"{name} has no column {key_column!r}; available columns: {available}.")
    ids = pd.unique(interactions[key_column])
    missing = ids[~pd.Series(ids).isin(features[key_column]).to_numpy()]
    if len(missing) == 0:
        return
    hint = "Add rows for them, or drop their interactions."
    left, right = interactions[key_column].dtype, features[key_column].dtype
    if pd.api.types.is_numeric_dtype(left) != pd.api.types.is_numeric_dtype(right):
        hint = f"The id types differ ({left} in the interactions, {right} in {table_name}): read both the same way."
    examples = sorted(missing[:5].tolist())
    raise ValueError(
        f"{len(missing)} of the {len(ids)} {key_column} ids in the interactions have no row in {table_name}, "
        f"e.g. {examples}. {hint}"
    )
