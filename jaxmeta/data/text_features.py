"""Item text as a feature: one text per item, encoded once by a sentence encoder, cached on disk.

An item's text is built from its metadata: "Title (year). Genres: ... .
Director: ... . Actors: ... . Plot: ..." (ML-1M with MeLU's IMDb metadata), or
title, year and genres alone (ML-100K, ML-1M without it). A sentence encoder
(:class:`jaxmeta.text.SentenceEncoder`) turns each text into a vector; the
vectors go into the item table as a column of arrays, which
:class:`jaxmeta.data.features.FeatureEncoder` reads as a ``"vector"`` field and
the models project into their embedding space with learned (slow) weights. A
new item needs no rating to get its vector: its text is enough.

Vectors are cached on disk, keyed by the encoder's fingerprint (its weights,
tokenizer and settings) and the sha256 of each text, so a text is encoded once
per model, whichever table or run asks for it.

Texts are encoded up to :data:`DEFAULT_TOKENS` tokens by default (the callers'
``text_tokens``): ML-1M's title, year, genres, director and actors take 40 on
average, and the rest is the start of the plot.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

__all__ = (
    "DEFAULT_TOKENS",
    "add_text_vectors",
    "display_title",
    "item_text",
    "item_text_vectors",
    "item_texts",
    "with_melu_metadata",
)

# The most tokens of an item text the driver and the reproductions encode. The whole ML-1M texts
# (149 tokens on average with the plots, cut at all-MiniLM-L6-v2's 256) take three times longer
# to encode: 112 s against 40 s for the 3,883 movies on a 2-core CPU (python -m bench.text).
DEFAULT_TOKENS = 64

_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
# MovieLens files titles as "American President, The (1995)"; these are the
# articles moved back to the front for the text ("The American President").
_ARTICLE = re.compile(
    r"^(?P<main>.+?), (?P<article>The|A|An|Les|La|Le|L'|Il|El|Das|Der|Die|Los|Las|Lo|Un|Une|Den|Det)"
    r"(?P<rest>\s*\(.*\))?$"
)


class _Encoder(Protocol):
    """What :func:`item_text_vectors` needs of an encoder (a :class:`jaxmeta.text.SentenceEncoder`)."""

    fingerprint: str
    dim: int

    def encode(self, texts: Sequence[str], *, batch_size: int | None = ...) -> np.ndarray: ...


def display_title(title: str) -> str:
    """A MovieLens title as written in prose: the final "(year)" dropped, a trailing article moved to the front.

    Example:
      >>> display_title("American President, The (1995)")
      'The American President'
      >>> display_title("City of Lost Children, The (Cité des enfants perdus, La) (1995)")
      'The City of Lost Children (Cité des enfants perdus, La)'
      >>> display_title("Toy Story")
      'Toy Story'
    """
    title = _YEAR.sub("", title).strip()
    match = _ARTICLE.match(title)
    if match is None:
        return title
    article = match["article"]
    return f"{article}{'' if article.endswith(chr(39)) else ' '}{match['main']}{match['rest'] or ''}"


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _names(values: Any) -> list[str]:
    if _missing(values) or isinstance(values, str):
        return [] if _missing(values) or not values else [values]
    return [str(v) for v in values if not _missing(v) and str(v) and str(v) != "unknown"]


def item_text(
    title: str,
    *,
    year: int | None = None,
    genres: Iterable[str] = (),
    directors: Iterable[str] = (),
    actors: Iterable[str] = (),
    plot: str | None = None,
) -> str:
    """One item's text: "Title (year). Genres: a, b. Director: x. Actors: c, d. Plot: ...".

    Parts without a value are left out; the title goes through
    :func:`display_title`, and its year is used when ``year`` is missing.
    MovieLens-100K's genre "unknown" is left out too.

    Example:
      >>> item_text("Toy Story (1995)", genres=("Animation", "Children's", "Comedy"),
      ...           directors=("John Lasseter",), actors=("Tom Hanks", "Tim Allen"), plot="Toys come to life.")
      "Toy Story (1995). Genres: Animation, Children's, Comedy. Director: John Lasseter. Actors: Tom Hanks, Tim Allen. Plot: Toys come to life."
      >>> item_text("Heat (1995)", genres=("unknown",))
      'Heat (1995).'
    """
    if _missing(title):
        title = ""
    if _missing(year):
        found = _YEAR.search(str(title))
        year = int(found[1]) if found else None
    head = display_title(str(title)) + (f" ({int(year)})" if year is not None else "")
    parts = [head.strip()]
    genres, directors, actors = _names(genres), _names(directors), _names(actors)
    if genres:
        parts.append("Genres: " + ", ".join(genres))
    if directors:
        parts.append(("Director: " if len(directors) == 1 else "Directors: ") + ", ".join(directors))
    if actors:
        parts.append("Actors: " + ", ".join(actors))
    if not _missing(plot) and str(plot).strip():
        parts.append("Plot: " + str(plot).strip())
    return " ".join(p if p.endswith((".", "!", "?")) else p + "." for p in parts if p)


_COLUMNS = ("year", "genres", "directors", "actors", "plot")


def item_texts(items: pd.DataFrame, *, title: str = "title") -> pd.Series:
    """The text of every item of a table (:func:`item_text` of each row), index and order kept.

    Reads the columns it finds among ``title``, ``year``, ``genres``,
    ``directors``, ``actors`` and ``plot``: the tables of
    :func:`jaxmeta.data.movielens.load_ml1m_items` and ``load_ml100k_items``
    (title and genres; the year is read off the title), or ML-1M items with
    MeLU's metadata (:func:`with_melu_metadata`).

    Raises:
      ValueError: the table has no ``title`` column.
    """
    if title not in items.columns:
        raise ValueError(f"the item table lacks the column {title!r} (it has {list(items.columns)}); "
                         "pass title= to name the column holding titles.")
    present = [c for c in _COLUMNS if c in items.columns]
    rows = zip(items[title], *(items[c] for c in present))
    texts = [item_text(t, **dict(zip(present, values))) for t, *values in rows]
    return pd.Series(texts, index=items.index, name="text", dtype=object)


def with_melu_metadata(items: pd.DataFrame, melu_items: pd.DataFrame,
                       columns: Sequence[str] = ("directors", "actors", "plot")) -> pd.DataFrame:
    """ML-1M's item table with MeLU's IMDb metadata joined on ``item``.

    The ML-1M title, year and genres are kept (all 3,883 movies); ``columns`` of
    :func:`jaxmeta.data.movielens.load_melu_items` are added, empty (missing
    plot, no names) for the movies MeLU lacks (ids 860 and 1795, which MeLU merged).

    Args:
      items: :func:`jaxmeta.data.movielens.load_ml1m_items`.
      melu_items: :func:`jaxmeta.data.movielens.load_melu_items`.
      columns: MeLU's columns to add.
    """
    missing = [c for c in ("item", *columns) if c not in melu_items.columns]
    if missing:
        raise ValueError(f"melu_items lacks the column(s) {missing}; pass jaxmeta.data.movielens.load_melu_items.")
    clash = [c for c in columns if c in items.columns]
    if clash:
        raise ValueError(f"items already has the column(s) {clash}; drop them or pass other columns=.")
    out = items.merge(melu_items[["item", *columns]], on="item", how="left", validate="one_to_one")
    for c in columns:
        if melu_items[c].map(lambda v: isinstance(v, tuple)).any():
            out[c] = out[c].map(lambda v: v if isinstance(v, tuple) else ())
    return out


# --------------------------------------------------------------------------- cache


def _text_keys(texts: Sequence[str]) -> np.ndarray:
    """uint8 ``[n, 32]``: the sha256 of each text's UTF-8 bytes."""
    return np.frombuffer(b"".join(hashlib.sha256(t.encode("utf-8")).digest() for t in texts),
                         np.uint8).reshape(len(texts), 32)


def _read_cache(folder: Path, dim: int) -> dict[bytes, np.ndarray]:
    cached = {}
    for shard in sorted(folder.glob("vectors-*.npz")):
        with np.load(shard) as data:
            keys, vectors = data["keys"], data["vectors"]
        if vectors.ndim != 2 or vectors.shape[1] != dim or keys.shape != (len(vectors), 32):
            raise ValueError(f"cache file {shard} holds vectors of shape {vectors.shape}, not [n, {dim}]; "
                             "it was not written by item_text_vectors for this model: delete it.")
        cached.update(zip(map(bytes, keys), vectors))
    return cached


def _write_atomic(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` to ``path`` through a temporary file in the same folder, renamed into
    place, so a reader never sees half a file (and two writers never mix theirs)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def item_text_vectors(texts: Sequence[str], encoder: _Encoder, *, cache_dir: str | Path | None = None,
                      batch_size: int | None = None) -> np.ndarray:
    """The encoder's vector of each text, from the disk cache where it has them.

    Args:
      texts: the item texts (e.g. :func:`item_texts`); repeats are encoded once.
      encoder: a :class:`jaxmeta.text.SentenceEncoder` (anything with
        ``fingerprint``, ``dim`` and ``encode``).
      cache_dir: folder of the cache (created if absent; ``~`` is expanded);
        None encodes every text and caches nothing. The vectors of one model live in the
        sub-folder named by its fingerprint, one ``vectors-*.npz`` file per
        call that had texts to encode (``keys``: uint8 ``[n, 32]`` sha256 of the
        texts, ``vectors``: float32 ``[n, dim]``), each written atomically.
      batch_size: texts per forward pass of the encoder (None: its default).

    Returns:
      float32 ``[len(texts), encoder.dim]``, in the order of ``texts``.
    """
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"text {bad[0]} is {texts[bad[0]]!r:.80}; pass strings (missing text as '').")
    keys = [bytes(k) for k in _text_keys(texts)]
    unique = list(dict.fromkeys(keys))
    text_of = dict(zip(keys, texts))
    cached: dict[bytes, np.ndarray] = {}
    folder = None
    if cache_dir is not None:
        folder = Path(cache_dir).expanduser() / encoder.fingerprint[:32]
        folder.mkdir(parents=True, exist_ok=True)
        description = folder / "model.json"
        if not description.exists():
            info = {"fingerprint": encoder.fingerprint, "dim": encoder.dim, "encoder": repr(encoder)}
            description.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        cached = _read_cache(folder, encoder.dim)
    missing = [k for k in unique if k not in cached]
    if missing:
        fresh = np.asarray(encoder.encode([text_of[k] for k in missing], batch_size=batch_size), np.float32)
        if fresh.shape != (len(missing), encoder.dim):
            raise ValueError(f"the encoder gave shape {fresh.shape} for {len(missing)} texts; expected "
                             f"[{len(missing)}, {encoder.dim}].")
        cached.update(zip(missing, fresh))
        if folder is not None:
            block = np.frombuffer(b"".join(missing), np.uint8).reshape(len(missing), 32)
            name = hashlib.sha256(block.tobytes()).hexdigest()[:16]
            _write_atomic(folder / f"vectors-{name}.npz", keys=block, vectors=fresh)
    if not texts:
        return np.zeros((0, encoder.dim), np.float32)
    return np.stack([cached[k] for k in keys]).astype(np.float32, copy=False)


def add_text_vectors(items: pd.DataFrame, encoder: _Encoder, *, cache_dir: str | Path | None = None,
                     texts: Sequence[str] | None = None, column: str = "text_vector",
                     batch_size: int | None = None) -> pd.DataFrame:
    """A copy of ``items`` with a column holding each item's text vector (a float32 array).

    Fit a :class:`jaxmeta.data.features.FeatureEncoder` on the result with
    ``item_vector=[column]``; to encode new items, pass their table through
    this function too (their vectors come from their text alone) and give it to
    ``FeatureEncoder.with_tables``.

    Args:
      items: the item table.
      encoder: the sentence encoder.
      cache_dir: as in :func:`item_text_vectors`.
      texts: one text per row; default :func:`item_texts` of ``items``.
      column: the name of the new column.
      batch_size: texts per forward pass of the encoder (None: its default).
    """
    texts = list(item_texts(items) if texts is None else texts)
    if len(texts) != len(items):
        raise ValueError(f"{len(texts)} texts for {len(items)} items; pass one text per row.")
    vectors = item_text_vectors(texts, encoder, cache_dir=cache_dir, batch_size=batch_size)
    out = items.copy()
    out[column] = list(vectors)
    return out
