"""What a ratings table holds, and what the cold-start split would make of it.

:func:`describe` counts users, items and ratings, the rating values, how many
ratings users and items have, and what :func:`jaxmeta.data.splits.select_queries`
would keep: the users with ``min_ratings``..``max_ratings`` ratings, each giving
``query_size`` query rows and the rest as support. :func:`format_description`
renders that as a plain-text report.

Repeated (user, item) rows count as separate ratings everywhere, as they do in
the split; only the density counts distinct pairs.
"""

from __future__ import annotations

import itertools
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxmeta._checks import columns
from jaxmeta.data import interactions, movielens, scale, splits

DEFAULT_BINS = (1, 5, 13, 20, 50, 100, 200, 500)
BAR_WIDTH = 40
LABEL_WIDTH = 20
NUMBER_WIDTH = 10
_ARTICLE = {"user": "a", "item": "an"}

__all__ = ("DEFAULT_BINS", "describe", "format_description", "read_ratings_source")


def _bin_labels(bins: Sequence[int]) -> list[str]:
    """``"lo-hi"`` for each bin (``"lo"`` when it holds one count), ``"last+"`` for the open last one;
    a leading ``"1-(first-1)"`` bin when the first edge is above 1."""
    edges = ([1] if bins[0] > 1 else []) + list(bins)
    labels = [str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)]
    return labels + [f"{edges[-1]}+"]


def _check_bins(bins: Sequence[int]) -> tuple[int, ...]:
    if isinstance(bins, (str, bytes)) or not isinstance(bins, Sequence) or not bins:
        raise ValueError(f"bins={bins!r}: pass a non-empty, increasing sequence of whole numbers >= 1.")
    for b in bins:
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 1:
            raise ValueError(f"bins={tuple(bins)!r}: {b!r} is not a whole number >= 1; pass the bins' lower edges.")
    if any(b >= c for b, c in itertools.pairwise(bins)):
        raise ValueError(f"bins={tuple(bins)!r}: pass strictly increasing lower edges, e.g. {DEFAULT_BINS}.")
    return tuple(int(b) for b in bins)


def _plain(value: Any) -> int | float:
    """A number as the Python int (whole) or float, for a JSON-safe result."""
    value = value.item() if isinstance(value, np.generic) else value
    return int(value) if float(value).is_integer() else float(value)


def _summary(counts: np.ndarray, keys: Sequence[str]) -> dict[str, int | float] | None:
    if len(counts) == 0:
        return None
    every = {"min": counts.min(), "median": np.median(counts), "mean": counts.mean(), "max": counts.max()}
    return {k: _plain(every[k]) for k in keys}


def describe(
    ratings: pd.DataFrame,
    *,
    query_size: int = splits.QUERY_SIZE,
    min_ratings: int = splits.MIN_RATINGS,
    max_ratings: int = splits.MAX_RATINGS,
    bins: Sequence[int] = DEFAULT_BINS,
    rating_scale: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Counts and distributions of a ratings table, and what the split would keep.

    Args:
      ratings: ``user``, ``item``, ``rating`` (other columns are ignored).
      query_size, min_ratings, max_ratings: the split of
        :func:`jaxmeta.data.splits.select_queries`.
      bins: lower edges of the ratings-per-user histogram; the last bin is open
        (``"500+"``). A first edge above 1 adds a bin below it.
      rating_scale: the ratings' inclusive ``(low, high)``; None: inferred
        (:func:`jaxmeta.data.scale.check_ratings`).

    Returns:
      A JSON-safe dict:

      * ``users``, ``items``, ``ratings``: distinct users and items, rows;
      * ``rating_values``: ``{value: rows}``, ascending by value;
      * ``rating_scale``: ``[low, high]``, given or inferred;
      * ``density``: distinct (user, item) pairs over ``users * items``;
        ``repeated_pairs``: rows beyond the first of a (user, item) pair;
      * ``ratings_per_user``: ``{"min", "median", "mean", "max"}``;
      * ``user_histogram``: ``{label: users}`` in bin order (e.g. ``"13-19"``);
      * ``ratings_per_item``: ``{"min", "median", "max"}``;
      * ``split``: ``query_size``, ``min_ratings``, ``max_ratings``,
        ``users_kept``, ``users_too_few``, ``users_too_many``,
        ``support_per_user`` (``{"min", "median", "max"}`` over kept users of
        their ratings minus ``query_size``; ``None`` when none is kept),
        ``support_rows`` and ``query_rows`` (totals over kept users).

    Raises:
      ValueError: a column is missing, the table is empty, an id is missing, a
        rating is not a finite number (in float32) or is outside the scale
        (given, or the fences of the others), or a split option or the bins are invalid.

    Example:
      >>> import pandas as pd
      >>> ratings = pd.DataFrame({"user": [1] * 14 + [2] * 3, "item": list(range(14)) + [0, 1, 1],
      ...                         "rating": [4.0] * 16 + [5.0]})
      >>> d = describe(ratings)
      >>> d["users"], d["items"], d["rating_values"], d["split"]["users_kept"], d["split"]["query_rows"]
      (2, 14, {4: 16, 5: 1}, 1, 10)
      >>> d["rating_scale"]
      [4, 5]
      >>> d["user_histogram"]["1-4"], d["user_histogram"]["13-19"]
      (1, 1)
    """
    columns(ratings, ("user", "item", "rating"), "ratings")
    splits.check_sizes(query_size, min_ratings, max_ratings)
    bins = _check_bins(bins)
    given = scale.as_scale(rating_scale)
    if len(ratings) == 0:
        raise ValueError("ratings has no rows: pass a table with at least one rating to describe.")
    for column in ("user", "item"):
        missing = int(ratings[column].isna().sum())
        if missing:
            raise ValueError(
                f"ratings has {missing} row(s) without {_ARTICLE[column]} {column} id; drop or fill those rows first."
            )
    values = pd.to_numeric(ratings["rating"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():  # said here, not by check_ratings, to show a value that is not a number as it is
        raise ValueError(
            f"ratings has {int(bad.sum())} rating(s) that are not finite numbers, e.g. "
            f"{ratings['rating'].iloc[int(np.flatnonzero(bad)[0])]!r}: drop or fix those rows first."
        )
    found = scale.check_ratings(values, given)

    per_user = ratings.groupby("user", sort=False).size().to_numpy()
    per_item = ratings.groupby("item", sort=False).size().to_numpy()
    users, items, rows = len(per_user), len(per_item), len(ratings)
    pairs = len(ratings[["user", "item"]].drop_duplicates())
    rating_values, counts = np.unique(values, return_counts=True)

    edges = np.array(([1] if bins[0] > 1 else []) + list(bins))
    which = np.searchsorted(edges, per_user, side="right") - 1  # every count is >= 1 = edges[0]
    histogram = np.bincount(which, minlength=len(edges))

    kept = per_user[(per_user >= min_ratings) & (per_user <= max_ratings)]
    support = kept - query_size
    return {
        "users": users,
        "items": items,
        "ratings": rows,
        "rating_values": {_plain(v): int(n) for v, n in zip(rating_values, counts)},
        "rating_scale": [_plain(found.low), _plain(found.high)],
        "density": pairs / (users * items),
        "repeated_pairs": rows - pairs,
        "ratings_per_user": _summary(per_user, ("min", "median", "mean", "max")),
        "user_histogram": {label: int(n) for label, n in zip(_bin_labels(bins), histogram)},
        "ratings_per_item": _summary(per_item, ("min", "median", "max")),
        "split": {
            "query_size": int(query_size),
            "min_ratings": int(min_ratings),
            "max_ratings": int(max_ratings),
            "users_kept": len(kept),
            "users_too_few": int((per_user < min_ratings).sum()),
            "users_too_many": int((per_user > max_ratings).sum()),
            "support_per_user": _summary(support, ("min", "median", "max")),
            "support_rows": int(support.sum()),
            "query_rows": len(kept) * int(query_size),
        },
    }


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def _stats(stats: Mapping[str, int | float] | None) -> str:
    return "-" if stats is None else "  ".join(f"{k} {_number(v)}" for k, v in stats.items())


def format_description(d: Mapping[str, Any]) -> str:
    """A plain-text report of :func:`describe`'s result.

    Labels fill a column of 20 characters; single numbers are right-aligned
    after it, lists of values start there. The histogram is one row per bin
    with a bar of ``#`` scaled so that the fullest bin is 40 wide (a non-empty
    bin gets at least one ``#``). The rating scale has its row when ``d`` has one.

    Example:
      >>> import pandas as pd
      >>> ratings = pd.DataFrame({"user": [1] * 14 + [2] * 3, "item": list(range(14)) + [0, 1, 1],
      ...                         "rating": [4.0] * 16 + [5.0]})
      >>> print(format_description(describe(ratings, bins=(1, 13))))
      users                        2
      items                       14
      ratings                     17
      density                 57.14%
      repeated pairs               1
      rating values       4: 16  5: 1
      rating scale        4–5
      ratings per user    min 3  median 8.5  mean 8.5  max 14
      ratings per item    min 1  median 1  max 3
      <BLANKLINE>
      users by number of ratings
        1-12       1  ########################################
        13+        1  ########################################
      <BLANKLINE>
      split: 10 query ratings per user, users with 13-100 ratings
        users kept                 1
        too few (< 13)             1
        too many (> 100)           0
        support per user  min 4  median 4  max 4
        support rows               4
        query rows                10
    """
    missing = [k for k in ("users", "items", "ratings", "rating_values", "density", "repeated_pairs",
                           "ratings_per_user", "user_histogram", "ratings_per_item", "split") if k not in d]
    if missing:
        raise ValueError(f"the description lacks {missing}: pass the dict that describe() returns.")

    def row(label: str, value: str, indent: int = 0, align: bool = True) -> str:
        head = f"{' ' * indent}{label:<{LABEL_WIDTH - indent}}"
        return head + (f"{value:>{NUMBER_WIDTH}}" if align else value)

    split = d["split"]
    shown_scale = d.get("rating_scale")
    scale_row = [] if shown_scale is None else [row("rating scale", str(scale.RatingScale(*shown_scale)), align=False)]
    lines = [
        row("users", _number(d["users"])),
        row("items", _number(d["items"])),
        row("ratings", _number(d["ratings"])),
        row("density", f"{d['density']:.2%}"),
        row("repeated pairs", _number(d["repeated_pairs"])),
        row("rating values", "  ".join(f"{v}: {n:,}" for v, n in d["rating_values"].items()), align=False),
        *scale_row,
        row("ratings per user", _stats(d["ratings_per_user"]), align=False),
        row("ratings per item", _stats(d["ratings_per_item"]), align=False),
        "",
        "users by number of ratings",
    ]
    histogram = d["user_histogram"]
    fullest = max(histogram.values(), default=0)
    label_width = max([len(label) for label in histogram] + [7])
    count_width = max([len(f"{n:,}") for n in histogram.values()] + [3])
    for label, n in histogram.items():
        bar = "#" * (max(1, round(BAR_WIDTH * n / fullest)) if n else 0)
        lines.append(f"  {label:<{label_width}}  {n:>{count_width},}  {bar}".rstrip())
    lines += [
        "",
        (f"split: {split['query_size']} query ratings per user, users with "
         f"{split['min_ratings']}-{split['max_ratings']} ratings"),
        row("users kept", _number(split["users_kept"]), indent=2),
        row(f"too few (< {split['min_ratings']})", _number(split["users_too_few"]), indent=2),
        row(f"too many (> {split['max_ratings']})", _number(split["users_too_many"]), indent=2),
        row("support per user", _stats(split["support_per_user"]), indent=2, align=False),
        row("support rows", _number(split["support_rows"]), indent=2),
        row("query rows", _number(split["query_rows"]), indent=2),
    ]
    return "\n".join(lines)


def read_ratings_source(path: str | os.PathLike, rating_scale: tuple[float, float] | None = None) -> pd.DataFrame:
    """The ratings behind ``jaxmeta data describe PATH``, checked as training checks them.

    ``path`` is a MovieLens folder (one holding ``u.data``: ML-100K; or
    ``ratings.dat`` or MeLU's ``ratings_no_timestamp.dat``: ML-1M, every row
    kept), or a CSV/Parquet file with ``user``, ``item`` and
    ``rating`` columns (:func:`jaxmeta.data.interactions.read_interactions`).

    Every rating must be a finite number inside ``rating_scale=(low, high)`` when
    given, else (a file) inside the fences of the file's ratings
    (:func:`jaxmeta.data.scale.fences`), as :func:`jaxmeta.data.datasets.table`
    requires; the first bad row of a file is named by its line.

    Raises:
      ValueError: a bad row, a file that is empty or holds a header only; the
        message names the file.
      FileNotFoundError: no such file or folder, or a folder without MovieLens files.
      PermissionError: the file cannot be read.
    """
    given = scale.as_scale(rating_scale)
    path = Path(path)
    if path.is_dir():
        if (path / "u.data").is_file():
            ratings = movielens.load_ml100k_ratings(path)
        else:
            # MovieLens-1M, or MeLU's copy of it
            found = [name for name in ("ratings.dat", "ratings_no_timestamp.dat") if (path / name).is_file()]
            if not found:
                raise FileNotFoundError(f"{path}: a folder, but neither u.data (MovieLens-100K) nor ratings.dat "
                                        "(MovieLens-1M) is in it; pass a MovieLens folder or a ratings file.")
            ratings = movielens.load_ml1m_ratings(path, filename=found[0], duplicates="keep")
        if given is not None:  # the loaders checked 1-5 stars; a given scale may be narrower
            scale.check_ratings(ratings["rating"], given, what=str(path))
        return ratings
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; pass a ratings file or a MovieLens folder.")
    ratings = interactions.read_interactions(path, user="user", item="item", rating="rating", duplicates="keep",
                                             rating_range="infer" if given is None else tuple(given))
    if len(ratings) == 0:
        raise ValueError(f"{path}: no ratings, only the column names; pass a table with one row per rating "
                         "(columns user, item, rating).")
    return ratings
