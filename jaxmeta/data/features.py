"""Feature encoding: vocabularies with an out-of-vocabulary index, multi-valued
fields padded with -1, standardised numbers; the dict of arrays every model reads.

The input contract (the models of :mod:`jaxmeta.models` are built against it):
the per-row inputs of a task are a dict keyed by field name, each leaf with a
leading rows axis,

* single-valued categorical field: int32 ``[rows]``; 0 is the
  out-of-vocabulary (OOV) index, known values are 1..V;
* multi-valued categorical field (genres, directors, actors): int32
  ``[rows, max_values]``; -1 marks an empty slot, 0 an OOV value, 1..V known
  values (a row with no value is all -1);
* numeric field: float32 ``[rows]``, standardised with the mean and standard
  deviation of the table the encoder was fitted on;
* vector field (a dense feature such as an item's text vector,
  :mod:`jaxmeta.data.text_features`): float32 ``[rows, width]``, the vector of
  the row's user or item as its table holds it (zeros where missing).

A :class:`FieldSpec` describes each field and :data:`FeatureSpec` (a tuple of
them, in the dict's fixed order) the whole input, so that a model can size its
embedding tables from ``spec`` alone.

What counts as "known" is decided by :meth:`FeatureEncoder.fit`: vocabularies
and numeric statistics come from the user and item tables it is given, counting
each user or item row once. MeLU (and :func:`melu_encoder`) fits them on the
complete tables, cold users and items included: a new user's profile and a new
item's metadata are known when they arrive, only their ratings are new, and
MeLU's own value lists (``m_*.txt``) cover every movie and user. Fit on the
training users and items only for the stricter protocol in which values seen
only on cold users or items map to the OOV index. Either way a value unseen at
fit time (a new zip code, a new director) or a missing one encodes as 0, so a
saved encoder (:meth:`FeatureEncoder.to_dict`) can encode any new user or item.

References:
  H. Lee, J. Im, S. Jang, H. Cho and S. Chung. MeLU: Meta-Learned User Preference
  Estimator for Cold-Start Recommendation. KDD 2019.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from jaxmeta._checks import positive_int
from jaxmeta._checks import shown as _shown

FIELD_KINDS = ("categorical", "multi", "numeric", "vector")
TABLES = ("user", "item")
_FORMAT = "jaxmeta.FeatureEncoder"
_VERSION = 1

__all__ = (
    "FIELD_KINDS",
    "FeatureEncoder",
    "FeatureSpec",
    "FieldSpec",
    "Vocabulary",
    "melu_encoder",
)


class FieldSpec(NamedTuple):
    """One field of the model inputs.

    Attributes:
      name: the key of the field in the inputs dict.
      kind: ``"categorical"``, ``"multi"``, ``"numeric"`` or ``"vector"``.
      size: rows of the field's embedding table: V + 1 (the V known values and
        the OOV index 0); 1 for a numeric field; the width of a vector field
        (the rows of its projection).
      max_values: slots per row of a multi-valued field; 1 otherwise.
    """

    name: str
    kind: str
    size: int
    max_values: int


FeatureSpec = tuple[FieldSpec, ...]


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _plain(value: Any, what: str) -> str | int | float:
    """A vocabulary value as a JSON-safe Python scalar (numpy scalars unwrapped)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral, numbers.Real)):
        raise TypeError(
            f"{what}: value {value!r} of type {type(value).__name__} cannot be a vocabulary entry; "
            "pass strings or numbers (multi-valued columns as tuples, to a 'multi' field)."
        )
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, str):
        if not math.isfinite(value):
            raise ValueError(f"{what}: value {value!r} cannot be a vocabulary entry; pass finite numbers.")
        return float(value)
    return value


def _sort_key(value: str | int | float) -> tuple[int, Any]:
    return (1, value) if isinstance(value, str) else (0, value)  # numbers first, then strings


class Vocabulary:
    """The known values of a categorical field, numbered 1..V; 0 is out-of-vocabulary.

    Values are strings or numbers (numpy scalars are accepted and stored as the
    Python ones, so that the vocabulary is JSON-safe). Encoding a value that is
    not known, or a missing one (None, NaN), gives 0.

    Example:
      >>> vocab = Vocabulary.build(["M", "F", "F", "X"], min_count=2)
      >>> vocab.values, vocab.size
      (('F',), 2)
      >>> Vocabulary.build(["M", "F", "F"]).encode(["F", "M", "unseen", None]).tolist()
      [1, 2, 0, 0]
      >>> Vocabulary.from_dict(vocab.to_dict()) == vocab
      True
    """

    __slots__ = ("_values", "_index")

    def __init__(self, values: Iterable[Hashable]):
        """Builds a vocabulary whose value ``values[i]`` has index ``i + 1``.

        Raises:
          ValueError: a value repeats, is missing or is not finite.
          TypeError: a value is neither a string nor a number.
        """
        plain = []
        for i, value in enumerate(values):
            if _is_missing(value):
                raise ValueError(f"Vocabulary value {i} is missing ({value!r}); pass known values only.")
            plain.append(_plain(value, f"Vocabulary value {i}"))
        index = pd.Index(plain, dtype=object)
        if not index.is_unique:
            repeated = index[index.duplicated()].tolist()
            raise ValueError(f"Vocabulary values repeat: {repeated[:5]}; pass each value once.")
        self._values = tuple(plain)
        self._index = index

    @classmethod
    def build(cls, values: Iterable[Hashable], *, min_count: int = 1) -> Vocabulary:
        """The vocabulary of the values seen at least ``min_count`` times.

        Missing values (None, NaN) are skipped. Known values are ordered numbers
        first, then strings, each ascending, so the numbering does not depend on
        the order of the data.

        Args:
          values: the training values, one per occurrence.
          min_count: values seen fewer times than this are left out (they will
            encode as the OOV index 0).
        """
        positive_int("min_count", min_count)
        counts = Counter()
        for i, value in enumerate(values):
            if not _is_missing(value):
                counts[_plain(value, f"value {i}")] += 1
        return cls(sorted((v for v, n in counts.items() if n >= min_count), key=_sort_key))

    @property
    def values(self) -> tuple[str | int | float, ...]:
        """The known values; ``values[i]`` has index ``i + 1``."""
        return self._values

    @property
    def size(self) -> int:
        """V + 1: the known values and the OOV index 0 (the embedding table's rows)."""
        return len(self._values) + 1

    def encode(self, values: Iterable[Hashable]) -> np.ndarray:
        """int32 ``[n]``: the index of each value, 0 where unknown or missing."""
        values = list(values)
        array = np.empty(len(values), dtype=object)
        for i, value in enumerate(values):  # element by element: a tuple stays one (unknown) value
            array[i] = value
        if not self._values:
            return np.zeros(len(array), np.int32)
        return (self._index.get_indexer(pd.Index(array, dtype=object)) + 1).astype(np.int32)

    def decode(self, indices: Iterable[int]) -> list[str | int | float | None]:
        """The value of each index; None for 0 (OOV) and -1 (empty slot)."""
        out = []
        for i in indices:
            i = int(i)
            if not -1 <= i < self.size:
                raise ValueError(f"index {i} is outside this vocabulary's range -1..{self.size - 1}.")
            out.append(self._values[i - 1] if i >= 1 else None)
        return out

    def to_dict(self) -> dict[str, list]:
        """``{"values": [...]}``, JSON-safe."""
        return {"values": list(self._values)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocabulary:
        """The vocabulary saved by :meth:`to_dict`."""
        if not isinstance(data, Mapping) or not isinstance(data.get("values"), list):
            raise ValueError(f"expected {{'values': [...]}} as written by Vocabulary.to_dict, got {data!r:.200}.")
        return cls(data["values"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._values == other._values and [type(v) for v in self._values] == [type(v) for v in other._values]

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        shown = ", ".join(repr(v) for v in self._values[:5]) + (", ..." if len(self._values) > 5 else "")
        return f"Vocabulary(size={self.size}, values=({shown}))"


@dataclasses.dataclass(frozen=True)
class _Field:
    """What the encoder knows of one field (everything but the data)."""

    name: str  # the column of its table, and the key in the inputs dict
    table: str  # "user" or "item"
    kind: str  # one of FIELD_KINDS
    vocabulary: Vocabulary | None = None  # categorical and multi
    max_values: int = 1  # multi: slots per row
    prefix: int | None = None  # categorical and multi: keep the first `prefix` characters of strings
    mean: float = 0.0  # numeric
    std: float = 1.0  # numeric
    width: int = 0  # vector

    @property
    def spec(self) -> FieldSpec:
        if self.kind == "vector":
            return FieldSpec(self.name, self.kind, self.width, 1)
        size = 1 if self.vocabulary is None else self.vocabulary.size
        return FieldSpec(self.name, self.kind, size, self.max_values)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "table": self.table, "kind": self.kind}
        if self.kind == "numeric":
            return out | {"mean": self.mean, "std": self.std}
        if self.kind == "vector":
            return out | {"width": self.width}
        return out | {"vocabulary": self.vocabulary.to_dict(), "max_values": self.max_values, "prefix": self.prefix}


def _cut(values: pd.Series, field: str, prefix: int | None) -> pd.Series:
    """Values with strings cut to their first ``prefix`` characters (missing ones kept)."""
    if prefix is None:
        return values
    bad = [v for v in values if not _is_missing(v) and not isinstance(v, str)]
    if bad:
        raise TypeError(
            f"field {field!r} has prefix={prefix} but holds the non-string value {_shown(bad[0])}; "
            "prefix applies to string columns: convert the column to str first, or drop the prefix."
        )
    return values.map(lambda v: v[:prefix] if isinstance(v, str) else v)


def _scalars(values: pd.Series, field: str, ids: pd.Series, prefix: int | None) -> pd.Series:
    """The values of a single-valued field, cut to ``prefix``; a collection raises."""
    nested = values.map(lambda v: isinstance(v, (tuple, list, set, frozenset, np.ndarray))).to_numpy(dtype=bool)
    if nested.any():
        first = int(np.flatnonzero(nested)[0])
        raise TypeError(
            f"categorical field {field!r}, id {_shown(ids.iloc[first])}: holds the collection "
            f"{values.iloc[first]!r:.80}; declare a column with several values per row multi."
        )
    return _cut(values, field, prefix)


def _value_lists(values: pd.Series, field: str, ids: pd.Series, prefix: int | None) -> list[tuple]:
    """Each row's values as a tuple without repeats (order kept); missing -> ()."""
    out = []
    for key, row in zip(ids, values):
        if isinstance(row, (str, bytes)) or not (isinstance(row, (Sequence, set, frozenset, np.ndarray)) or
                                                 _is_missing(row)):
            raise TypeError(
                f"multi-valued field {field!r}, id {_shown(key)}: expected a tuple of values, got {row!r:.80}; "
                "split the strings into tuples first (the loaders of jaxmeta.data.movielens do), or declare the "
                "column categorical."
            )
        items = () if _is_missing(row) else tuple(row)
        if prefix is not None:
            items = tuple(_cut(pd.Series(items, dtype=object), field, prefix))
        out.append(tuple(dict.fromkeys(v for v in items if not _is_missing(v))))
    return out


def _numbers(values: pd.Series, field: str, ids: pd.Series) -> np.ndarray:
    """float64 values of a numeric column (NaN where missing); anything else raises."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(np.float64).to_numpy()
    converted = pd.to_numeric(values, errors="coerce")
    bad = converted.isna().to_numpy() & ~values.map(_is_missing).to_numpy(dtype=bool)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"numeric field {field!r}, id {_shown(ids.iloc[first])}: {values.iloc[first]!r} is not a number "
            f"({int(bad.sum())} such rows); declare the column categorical, or convert it to numbers."
        )
    return converted.to_numpy(np.float64, na_value=np.nan)


def _vectors(values: pd.Series, field: str, ids: pd.Series, width: int | None) -> np.ndarray:
    """float32 ``[n, width]`` from a column of vectors (missing rows -> zeros); ``width``
    None: the width of the first vector."""
    rows = []
    for key, row in zip(ids, values):
        if _is_missing(row):
            rows.append(None)
            continue
        if isinstance(row, (str, bytes)) or not isinstance(row, (Sequence, np.ndarray)):
            raise TypeError(
                f"vector field {field!r}, id {_shown(key)}: expected a 1-D array of numbers, got {row!r:.80}; "
                "put one vector per row (e.g. jaxmeta.data.text_features.add_text_vectors), or declare the column "
                "numeric."
            )
        vector = np.asarray(row, dtype=np.float64)
        if width is None:
            width = vector.size
        if vector.shape != (width,) or not np.isfinite(vector).all():
            raise ValueError(
                f"vector field {field!r}, id {_shown(key)}: a vector of shape {vector.shape} "
                f"{'with non-finite values ' if vector.shape == (width,) else ''}where the field holds finite vectors "
                f"of width {width}; give every row a vector of that width (or a missing value)."
            )
        rows.append(vector)
    if width is None:
        raise ValueError(f"vector field {field!r} has no vector in its table to fit on; pass at least one.")
    out = np.zeros((len(rows), width), np.float32)
    for i, vector in enumerate(rows):
        if vector is not None:
            out[i] = vector
    return out


def _encode_column(field: _Field, values: pd.Series, ids: pd.Series) -> np.ndarray:
    """One field of a feature table: int32 [n] / int32 [n, max_values] / float32 [n] / float32 [n, width]."""
    if field.kind == "vector":
        return _vectors(values, field.name, ids, field.width)
    if field.kind == "categorical":
        return field.vocabulary.encode(_scalars(values, field.name, ids, field.prefix))
    if field.kind == "numeric":
        x = (_numbers(values, field.name, ids) - field.mean) / field.std
        return np.nan_to_num(x, nan=0.0).astype(np.float32)  # missing -> the fitting mean
    lists = _value_lists(values, field.name, ids, field.prefix)
    lengths = np.array([len(v) for v in lists], dtype=np.int64)
    if lengths.size and lengths.max() > field.max_values:
        worst = int(np.argmax(lengths))
        raise ValueError(
            f"multi-valued field {field.name!r}, id {_shown(ids.iloc[worst])}: {lengths[worst]} values but the encoder "
            f"has max_values={field.max_values}; refit with max_values={{{field.name!r}: {lengths.max()}}} or more."
        )
    out = np.full((len(lists), field.max_values), -1, dtype=np.int32)
    flat = field.vocabulary.encode([v for row in lists for v in row])
    rows = np.repeat(np.arange(len(lists)), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = flat
    return out


class _Lookup(NamedTuple):
    """A feature table, encoded once: row ``ids.get_loc(id)`` of each array."""

    ids: pd.Index
    arrays: dict[str, np.ndarray]


def _check_table(frame: pd.DataFrame | None, table: str, key: str, columns: Sequence[str]) -> None:
    if frame is None:
        if columns:
            raise ValueError(
                f"{table} fields {list(columns)} were asked for but {table}s=None: pass the {table} table."
            )
        return
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"the {table} table must be a pandas DataFrame, got {type(frame).__name__}.")
    missing = [c for c in [key, *columns] if c not in frame.columns]
    if missing:
        raise ValueError(
            f"the {table} table lacks the column(s) {missing}; available columns: {list(frame.columns)}. "
            f"Pass the names it uses ({table}_key= for the id column)."
        )
    ids = frame[key]
    if ids.isna().any():
        raise ValueError(f"the {table} table has a missing id in column {key!r}; every row needs an id.")
    repeated = ids[ids.duplicated()]
    if len(repeated):
        raise ValueError(
            f"the {table} table repeats {len(repeated)} id(s) in column {key!r}, e.g. {_shown(repeated.iloc[0])}; "
            "a feature table needs one row per id."
        )


class FeatureEncoder:
    """Encodes (user, item) pairs into the inputs dict of the models.

    Build one with :meth:`fit` (or :func:`melu_encoder`); the fitted encoder holds
    its vocabularies and statistics (saved by :meth:`to_dict`) and the user and
    item tables, encoded once, to look pairs up in (data, not saved: give them
    back with :meth:`with_tables`).

    Field order in the dict and in :attr:`spec`: item fields, then user fields
    (MeLU concatenates item embeddings before user embeddings); within each
    table categorical, then multi-valued, then numeric, then vector fields,
    each in the order given.

    Example:
      >>> import pandas as pd
      >>> users = pd.DataFrame({"user": [1, 2], "gender": ["F", "M"], "age": [20.0, 40.0]})
      >>> items = pd.DataFrame({"item": [7, 8], "genres": [("Drama",), ("Comedy", "Drama")]})
      >>> enc = FeatureEncoder.fit(users, items, user_categorical=["gender"], user_numeric=["age"],
      ...                          item_multi=["genres"])
      >>> [tuple(f) for f in enc.spec]
      [('genres', 'multi', 3, 2), ('gender', 'categorical', 3, 1), ('age', 'numeric', 1, 1)]
      >>> x = enc.encode([(1, 8), (2, 7)])
      >>> x["genres"].tolist(), x["gender"].tolist(), x["age"].tolist()
      ([[1, 2], [2, -1]], [1, 2], [-1.0, 1.0])
    """

    def __init__(
        self,
        fields: Sequence[_Field],
        *,
        user_key: str = "user",
        item_key: str = "item",
        users: pd.DataFrame | None = None,
        items: pd.DataFrame | None = None,
    ):
        """Use :meth:`fit` or :meth:`from_dict`; this assembles a fitted encoder."""
        names = [f.name for f in fields]
        if len(set(names)) != len(names):
            raise ValueError(f"field names repeat: {names}; each field needs its own name.")
        self._fields = tuple(fields)
        self._keys = {"user": user_key, "item": item_key}
        self._lookups: dict[str, _Lookup | None] = {"user": None, "item": None}
        for table, frame in (("user", users), ("item", items)):
            if frame is not None:
                self._lookups[table] = self._encode_table(table, frame)

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(
        cls,
        users: pd.DataFrame | None,
        items: pd.DataFrame | None,
        *,
        user_categorical: Sequence[str] = (),
        user_multi: Sequence[str] = (),
        user_numeric: Sequence[str] = (),
        item_categorical: Sequence[str] = (),
        item_multi: Sequence[str] = (),
        item_numeric: Sequence[str] = (),
        user_vector: Sequence[str] = (),
        item_vector: Sequence[str] = (),
        min_count: int | Mapping[str, int] = 1,
        prefix: Mapping[str, int] | None = None,
        max_values: Mapping[str, int] | None = None,
        user_key: str = "user",
        item_key: str = "item",
    ) -> FeatureEncoder:
        """Fits vocabularies and numeric statistics on a user and an item table.

        Each field is named after its column; the id columns themselves may be
        fields (e.g. ``item_categorical=["item"]`` gives every item its own
        embedding, and items absent from ``items`` the OOV index).

        Args:
          users: one row per user: ``user_key`` and the user feature columns
            (e.g. :func:`jaxmeta.data.movielens.load_ml1m_users`); None when no
            user field is used.
          items: one row per item, likewise (multi-valued columns hold tuples,
            e.g. :func:`jaxmeta.data.movielens.load_melu_items`); None when no
            item field is used.
          user_categorical, item_categorical: single-valued categorical columns.
          user_multi, item_multi: multi-valued columns (tuples of values;
            missing or ``()`` for none). A value repeated within a row counts once.
          user_numeric, item_numeric: numeric columns, standardised with the
            mean and (population) standard deviation over the table's rows; a
            constant column keeps std 1; missing values encode as 0.0 (the mean).
          user_vector, item_vector: columns of vectors (1-D arrays of one width,
            e.g. text vectors from
            :func:`jaxmeta.data.text_features.add_text_vectors`), fed to the
            models as they are (no standardisation); a missing value encodes as
            zeros. The vectors are data of the table, like every feature: an
            item absent at fit time gets its vector from the table given to
            :meth:`with_tables`.
          min_count: the fewest rows a categorical or multi value must appear in
            to enter the vocabulary (rarer ones encode as 0); one number for
            every field or ``{field: count}`` (default 1).
          prefix: ``{field: n}``: keep the first n characters of string values
            before the lookup (MeLU keys zip codes by their first 5).
          max_values: ``{field: n}``: slots per row of a multi-valued field;
            default the most values any row of the fitting table has (at least 1).
          user_key, item_key: the id columns of the two tables.

        Returns:
          The fitted encoder, holding ``users`` and ``items`` to encode pairs.

        Raises:
          ValueError: a column is missing, a field is named twice, an option
            names a field it does not apply to, ids repeat, or values do not fit
            the field's kind.
        """
        kinds = {
            "item": (("categorical", item_categorical), ("multi", item_multi), ("numeric", item_numeric),
                     ("vector", item_vector)),
            "user": (("categorical", user_categorical), ("multi", user_multi), ("numeric", user_numeric),
                     ("vector", user_vector)),
        }
        plan = []
        for table, groups in kinds.items():
            for kind, columns in groups:
                if isinstance(columns, str):
                    raise TypeError(f"{table}_{kind}={columns!r}: pass a list of column names, e.g. [{columns!r}].")
                plan += [(name, table, kind) for name in columns]
        names = [name for name, _, _ in plan]
        if not names:
            raise ValueError("no fields: name at least one column in user_categorical=, item_multi=, etc.")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"field(s) {repeated} are named more than once (fields are keyed by column name, across both "
                "tables): rename one of the columns."
            )
        frames = {"user": users, "item": items}
        keys = {"user": user_key, "item": item_key}
        for table in TABLES:
            _check_table(frames[table], table, keys[table], [n for n, t, _ in plan if t == table])

        kind_of = {name: kind for name, _, kind in plan}
        prefix, max_values = dict(prefix or {}), dict(max_values or {})
        if isinstance(min_count, Mapping):
            counts = dict(min_count)
        else:
            counts = {n: min_count for n in names if kind_of[n] in ("categorical", "multi")}
        for option, values, allowed in (
            ("prefix", prefix, ("categorical", "multi")),
            ("max_values", max_values, ("multi",)),
            ("min_count", counts, ("categorical", "multi")),
        ):
            for name, n in values.items():
                if kind_of.get(name) not in allowed:
                    what = "not a field" if name not in kind_of else f"a {kind_of[name]} field"
                    raise ValueError(
                        f"{option} names {name!r}, which is {what}; it applies to {' and '.join(allowed)} fields: "
                        f"{[m for m in names if kind_of[m] in allowed]}."
                    )
                positive_int(f"{option}[{name!r}]", n)

        fields = []
        for name, table, kind in plan:
            frame = frames[table]
            values, ids = frame[name], frame[keys[table]]
            if kind == "vector":
                fields.append(_Field(name, table, kind, width=_vectors(values, name, ids, None).shape[1]))
                continue
            if kind == "numeric":
                x = _numbers(values, name, ids)
                if np.isnan(x).all():
                    raise ValueError(f"numeric field {name!r} has no value in the {table} table to fit on.")
                std = float(np.nanstd(x))
                fields.append(_Field(name, table, kind, mean=float(np.nanmean(x)), std=std if std > 0 else 1.0))
                continue
            if kind == "categorical":
                seen = _scalars(values, name, ids, prefix.get(name))
                width = 1
            else:
                lists = _value_lists(values, name, ids, prefix.get(name))
                seen = [v for row in lists for v in row]
                width = max_values.get(name, max([len(row) for row in lists] + [1]))
            vocab = Vocabulary.build(seen, min_count=counts.get(name, 1))
            fields.append(_Field(name, table, kind, vocabulary=vocab, max_values=width, prefix=prefix.get(name)))
        return cls(fields, user_key=user_key, item_key=item_key, users=users, items=items)

    # ------------------------------------------------------------------ use

    @property
    def spec(self) -> FeatureSpec:
        """The fields, in the order of the inputs dict."""
        return tuple(f.spec for f in self._fields)

    @property
    def vocabularies(self) -> dict[str, Vocabulary]:
        """The vocabulary of each categorical and multi-valued field."""
        return {f.name: f.vocabulary for f in self._fields if f.vocabulary is not None}

    def _encode_table(self, table: str, frame: pd.DataFrame) -> _Lookup:
        fields = [f for f in self._fields if f.table == table]
        key = self._keys[table]
        _check_table(frame, table, key, [f.name for f in fields])
        ids = frame[key].reset_index(drop=True)
        arrays = {f.name: _encode_column(f, frame[f.name].reset_index(drop=True), ids) for f in fields}
        return _Lookup(pd.Index(ids.to_numpy(dtype=object), dtype=object), arrays)

    def with_tables(self, users: pd.DataFrame | None = None, items: pd.DataFrame | None = None) -> FeatureEncoder:
        """The same encoder (vocabularies, statistics) looking pairs up in new tables.

        Use it to encode users and items the encoder was not fitted on, e.g. after
        :meth:`from_dict`. A table left None keeps the one held now.
        """
        out = FeatureEncoder(self._fields, user_key=self._keys["user"], item_key=self._keys["item"])
        for table, frame in (("user", users), ("item", items)):
            out._lookups[table] = self._lookups[table] if frame is None else out._encode_table(table, frame)
        return out

    def with_rows(self, users: pd.DataFrame | None = None, items: pd.DataFrame | None = None) -> FeatureEncoder:
        """The same encoder (vocabularies, statistics) with rows added to the tables it holds.

        A row whose id the table already holds replaces that row; the other
        rows are kept. Use it to encode a few new users or items beside the
        ones the encoder holds (e.g. a new user's profile, or a new user with
        every feature missing) without the tables the encoder was made with;
        :meth:`with_tables` replaces a table instead. ``self`` is unchanged.

        Args:
          users, items: rows with the id column and every field of their table
            (:meth:`table_columns`); a missing value encodes as a missing one
            always does (OOV, no values, the fitting mean, zeros). None adds none.

        Example:
          >>> users = pd.DataFrame({"user": [1, 2], "gender": ["F", "M"], "age": [20.0, 40.0]})
          >>> enc = FeatureEncoder.fit(users, None, user_categorical=["gender"], user_numeric=["age"])
          >>> new = pd.DataFrame({"user": [2, "new"], "gender": ["F", None], "age": [None, None]})
          >>> x = enc.with_rows(users=new).encode_ids([1, 2, "new"], [0, 0, 0])
          >>> x["gender"].tolist(), x["age"].tolist()  # user 2 replaced; "new" unknown: OOV and the mean
          ([1, 1, 0], [-1.0, 0.0, 0.0])
        """
        out = FeatureEncoder(self._fields, user_key=self._keys["user"], item_key=self._keys["item"])
        for table, frame in (("user", users), ("item", items)):
            held = self._lookups[table]
            if frame is None or held is None:
                out._lookups[table] = held if frame is None else out._encode_table(table, frame)
                continue
            added = out._encode_table(table, frame)
            kept = ~held.ids.isin(added.ids)
            out._lookups[table] = _Lookup(
                held.ids[kept].append(added.ids),
                {name: np.concatenate([a[kept], added.arrays[name]]) for name, a in held.arrays.items()},
            )
        return out

    def table_columns(self, table: str) -> tuple[str, ...]:
        """The columns of the ``"user"`` or ``"item"`` table: its id column, then its fields (in :attr:`spec`
        order, the id column again where it is a field too); what :meth:`with_tables` and :meth:`with_rows` read.

        Example:
          >>> users = pd.DataFrame({"user": [1, 2], "gender": ["F", "M"]})
          >>> FeatureEncoder.fit(users, None, user_categorical=["gender"]).table_columns("user")
          ('user', 'gender')
        """
        if table not in TABLES:
            raise ValueError(f"table={table!r}: pass 'user' or 'item'.")
        return (self._keys[table], *(f.name for f in self._fields if f.table == table))

    def ids(self, table: str) -> np.ndarray:
        """The ids of the rows of the ``"user"`` or ``"item"`` table held (those :meth:`encode_ids` can look up).

        The dtype is inferred from the ids (int64 for integer ids, object for strings or mixed ids).
        """
        if table not in ("user", "item"):
            raise ValueError(f"table={table!r}: pass 'user' or 'item'.")
        if table not in self._lookups:
            return np.array([], dtype=object)
        return self._lookups[table].ids.infer_objects().to_numpy()

    def encode_ids(self, users: Sequence | np.ndarray, items: Sequence | np.ndarray) -> dict[str, np.ndarray]:
        """Encodes pairs given as two aligned sequences of ids.

        Returns:
          ``{field: array}`` in :attr:`spec` order, each with one row per pair
          (see the module docstring for dtypes and shapes).

        Raises:
          ValueError: the sequences differ in length, or an id has no row in the
            table the encoder holds for it.
        """
        ids = {"user": np.asarray(users, dtype=object), "item": np.asarray(items, dtype=object)}
        if ids["user"].ndim != 1 or ids["user"].shape != ids["item"].shape:
            raise ValueError(
                f"users and items must be 1-D and of equal length, got shapes {ids['user'].shape} and "
                f"{ids['item'].shape}: pass one user id and one item id per pair."
            )
        rows = {}
        for table in TABLES:
            if not any(f.table == table for f in self._fields):
                continue
            lookup = self._lookups[table]
            if lookup is None:
                raise ValueError(
                    f"this encoder holds no {table} table (e.g. it was made by from_dict): call "
                    f"encoder.with_tables({table}s=...) with the {table}s to encode."
                )
            rows[table] = lookup.ids.get_indexer(pd.Index(ids[table], dtype=object))
            unknown = rows[table] < 0
            if unknown.any():
                missing = pd.unique(ids[table][unknown])
                hint = f"pass their features with encoder.with_tables({table}s=...)"
                held = type(lookup.ids[0]).__name__ if len(lookup.ids) else None
                if held is not None and type(missing[0]).__name__ != held:
                    hint = f"the table's ids are {held} but these are {type(missing[0]).__name__}: read both alike"
                raise ValueError(
                    f"{len(missing)} {table} id(s) have no row in the encoder's {table} table, e.g. "
                    f"{', '.join(_shown(m) for m in missing[:5])}: {hint}."
                )
        return {f.name: self._lookups[f.table].arrays[f.name][rows[f.table]] for f in self._fields}

    def encode(self, pairs: pd.DataFrame | Iterable[tuple[Hashable, Hashable]]) -> dict[str, np.ndarray]:
        """Encodes (user, item) pairs into the inputs dict.

        Args:
          pairs: a DataFrame with the user and item id columns (e.g. ratings), or
            an iterable of ``(user, item)`` tuples.

        Returns:
          ``{field: array}`` in :attr:`spec` order, one row per pair.
        """
        if isinstance(pairs, pd.DataFrame):
            missing = [k for k in self._keys.values() if k not in pairs.columns]
            if missing:
                raise ValueError(
                    f"pairs lacks the id column(s) {missing}; available columns: {list(pairs.columns)}."
                )
            return self.encode_ids(pairs[self._keys["user"]].to_numpy(), pairs[self._keys["item"]].to_numpy())
        pairs = list(pairs)
        bad = [p for p in pairs if not (isinstance(p, (tuple, list)) and len(p) == 2)]
        if bad:
            raise ValueError(f"pair {bad[0]!r} is not a (user, item) pair: pass 2-tuples or a DataFrame.")
        users = np.empty(len(pairs), dtype=object)
        items = np.empty(len(pairs), dtype=object)
        for i, (user, item) in enumerate(pairs):
            users[i], items[i] = user, item
        return self.encode_ids(users, items)

    # ------------------------------------------------------------------ saving

    def to_dict(self) -> dict[str, Any]:
        """The encoder's vocabularies, statistics and options, JSON-safe.

        The feature tables are not included: they are data, not model state.
        """
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "user_key": self._keys["user"],
            "item_key": self._keys["item"],
            "fields": [f.to_dict() for f in self._fields],
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, users: pd.DataFrame | None = None, items: pd.DataFrame | None = None
    ) -> FeatureEncoder:
        """The encoder saved by :meth:`to_dict`, looking pairs up in ``users`` and ``items``.

        Raises:
          ValueError: ``data`` is not what :meth:`to_dict` writes.
        """
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ValueError(f"expected a dict written by FeatureEncoder.to_dict (format {_FORMAT!r}).")
        if data.get("version") != _VERSION:
            raise ValueError(f"FeatureEncoder dict version {data.get('version')!r}: this jaxmeta reads {_VERSION}.")
        fields = []
        for i, f in enumerate(data.get("fields", ())):
            try:
                if f["table"] not in TABLES or f["kind"] not in FIELD_KINDS:
                    raise ValueError(f"table {f['table']!r} / kind {f['kind']!r}")
                if f["kind"] == "numeric":
                    fields.append(_Field(f["name"], f["table"], "numeric", mean=float(f["mean"]), std=float(f["std"])))
                elif f["kind"] == "vector":
                    if isinstance(f["width"], bool) or not isinstance(f["width"], int) or f["width"] < 1:
                        raise ValueError(f"width {f['width']!r}")
                    fields.append(_Field(f["name"], f["table"], "vector", width=f["width"]))
                else:
                    vocab = Vocabulary.from_dict(f["vocabulary"])
                    fields.append(_Field(f["name"], f["table"], f["kind"], vocabulary=vocab,
                                         max_values=int(f["max_values"]), prefix=f["prefix"]))
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"field {i} of the FeatureEncoder dict is malformed ({err}).") from None
        return cls(fields, user_key=data["user_key"], item_key=data["item_key"], users=users, items=items)


def melu_encoder(users: pd.DataFrame, items: pd.DataFrame, *, min_count: int = 1,
                 item_vector: Sequence[str] = (), max_values: Mapping[str, int] | None = None) -> FeatureEncoder:
    """The 8 fields of MeLU on MovieLens-1M (and optional item vectors).

    Items: ``rate`` (MPAA rating; categorical), ``genres``, ``directors``,
    ``actors`` (multi-valued); users: ``gender``, ``age``, ``occupation``,
    ``zip`` (its first 5 characters; categorical). In that order, MeLU's; the
    ``item_vector`` columns (e.g. text vectors) come after the item fields.

    Vocabularies come from the tables given. Pass the complete tables (all
    6,040 users; all 3,881 movies of ``movies_extrainfos.dat``) to reproduce MeLU,
    whose value lists cover every user and movie; pass the training users' and
    items' rows only for a protocol where unseen values are OOV.

    Args:
      users: :func:`jaxmeta.data.movielens.load_ml1m_users` (``user``, ``gender``,
        ``age``, ``occupation``, ``zip``).
      items: :func:`jaxmeta.data.movielens.load_melu_items` (``item``, ``rate``,
        ``genres``, ``directors``, ``actors``).
      min_count: as in :meth:`FeatureEncoder.fit` (MeLU: 1).
      item_vector: columns of ``items`` holding vectors (not in MeLU), e.g. the
        ``text_vector`` of :func:`jaxmeta.data.text_features.add_text_vectors`.
      max_values: as in :meth:`FeatureEncoder.fit`: slots per row of
        ``genres``, ``directors`` or ``actors`` (default the most in ``items``).

    References:
      H. Lee et al. MeLU: Meta-Learned User Preference Estimator for Cold-Start
      Recommendation. KDD 2019 (the code's ``item_converting``/``user_converting``).
    """
    return FeatureEncoder.fit(
        users,
        items,
        item_categorical=["rate"],
        item_multi=["genres", "directors", "actors"],
        item_vector=list(item_vector),
        user_categorical=["gender", "age", "occupation", "zip"],
        prefix={"zip": 5},
        min_count=min_count,
        max_values=max_values,
    )
