"""Encoding time of every ML-1M item text (issue 8), one JSON line per token limit.

The texts are :func:`jaxmeta.data.text_features.item_texts` of the 3,883 ML-1M
movies with MeLU's metadata (title, year, genres, director, actors, plot), as
``jaxmeta reproduce --text`` builds them. For each ``--tokens`` limit a fresh
encoder is loaded, and ``first_s`` is its first ``encode`` of all texts:
tokenisation, one compilation per length bucket and the forward passes, what a
user waits for once before the vectors are cached. ``median_s`` is the median of
``--repeats`` more calls, compilations cached. No disk cache is involved.

    python -m bench.text [--data-dir ../shared/data] [--tokens 64 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from jaxmeta.data import movielens as ml
from jaxmeta.data import text_features


def ml1m_texts(data_dir: str | os.PathLike) -> list[str]:
    """The text of each ML-1M movie, with MeLU's metadata."""
    folder = Path(data_dir).expanduser()
    folder = folder if (folder / "movies.dat").is_file() else folder / "ml-1m"
    items = text_features.with_melu_metadata(ml.load_ml1m_items(folder), ml.load_melu_items(folder / "melu_extra"))
    return list(text_features.item_texts(items))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}.text", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("JAXMETA_DATA", "../shared/data"),
                        help="the folder holding ml-1m/ (default $JAXMETA_DATA or ../shared/data)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="a packaged model name or a model folder")
    parser.add_argument("--tokens", type=int, nargs="+", default=[text_features.DEFAULT_TOKENS, 256],
                        help="token limits to time (the model's own limit caps each)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first, per limit")
    args = parser.parse_args(argv)
    from jaxmeta.text import load_encoder  # the optional text extra

    texts = ml1m_texts(args.data_dir)
    for tokens in args.tokens:
        encoder = load_encoder(args.model, max_length=tokens)
        lengths = [len(t) for t in encoder.tokenize(texts)]
        start = time.perf_counter()
        encoder.encode(texts)
        first = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            encoder.encode(texts)
            times.append(time.perf_counter() - start)
        print(json.dumps({
            "bench": "text-encode", "model": encoder.name, "items": len(texts), "max_length": encoder.max_length,
            "mean_tokens": round(float(np.mean(lengths)), 1), "first_s": round(first, 2),
            "median_s": round(float(np.median(times)), 2) if times else None, "repeats": args.repeats,
            "device": jax.devices()[0].device_kind, "cpus": os.cpu_count(), "machine": platform.machine(),
        }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
