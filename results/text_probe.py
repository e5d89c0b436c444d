"""How much do item features tell about how a new ML-1M movie will be rated? A ridge probe.

For every movie with at least 5 ratings in MeLU's ``warm`` state (the training
movies) and in its ``item_cold`` state (the movies of 1998-2000), the target is
the movie's mean rating there. Ridge regressions fitted on the warm movies
predict the new movies' means from: MeLU's item features (one-hot MPAA rating,
genres, directors and actors, each value kept when at least 5 warm movies have
it), the all-MiniLM-L6-v2 vector of the movie's text (64 tokens, as
``jaxmeta reproduce --text`` makes it), or both. Printed per feature set and
ridge strength: R² and MAE on the new movies' means, against the warm movies'
mean rating alone.

    python results/text_probe.py [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from jaxmeta.data import movielens as ml
from jaxmeta.data import splits, text_features
from jaxmeta.reproduce import DEFAULT_TEXT_CACHE, DEFAULT_TEXT_TOKENS
from jaxmeta.text import load_encoder

FIELDS = ("rate", "genres", "directors", "actors")
STRENGTHS = (1, 3, 10, 30, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="../shared/data", help="the folder holding ml-1m/")
    folder = Path(parser.parse_args().data_dir) / "ml-1m"
    ratings = ml.load_ml1m_ratings(folder, filename="ratings_no_timestamp.dat", duplicates="keep")
    states = splits.melu_scenarios(folder / "melu_states", ratings=ratings)
    melu_items = ml.load_melu_items(folder / "melu_extra")
    items = text_features.with_melu_metadata(ml.load_ml1m_items(folder), melu_items)
    encoder = load_encoder("all-MiniLM-L6-v2", max_length=DEFAULT_TEXT_TOKENS)
    items = text_features.add_text_vectors(items, encoder, cache_dir=DEFAULT_TEXT_CACHE)
    vector = dict(zip(items["item"], items["text_vector"]))
    means = {s: states[s].groupby("item")["rating"].agg(["mean", "count"]).query("count >= 5")["mean"]
             for s in ("warm", "item_cold")}

    table = melu_items.set_index("item")

    def values(item):
        for field in FIELDS:
            value = table.at[item, field] if item in table.index else None
            for v in value if isinstance(value, tuple) else (() if value is None or value != value else (value,)):
                yield field, v

    counts = Counter(key for item in means["warm"].index for key in set(values(item)))
    column = {key: j for j, key in enumerate(k for k, n in counts.items() if n >= 5)}

    def features(state, kinds):
        rows = []
        for item in means[state].index:
            parts = []
            if "melu" in kinds:
                onehot = np.zeros(len(column), np.float32)
                onehot[[column[k] for k in values(item) if k in column]] = 1.0
                parts.append(onehot)
            if "text" in kinds:
                parts.append(vector[item])
            rows.append(np.concatenate(parts))
        return np.stack(rows)

    y, t = means["warm"].to_numpy(), means["item_cold"].to_numpy()
    print(f"{len(y)} warm and {len(t)} new movies with 5+ ratings; {len(column)} MeLU feature values; "
          f"MAE of the new movies' means from the warm mean alone: {np.mean(np.abs(t - y.mean())):.3f}")
    print("| features | ridge λ | R² on new movies | MAE on new movies |")
    print("|---|---:|---:|---:|")
    for kinds in ("melu", "text", "melu+text"):
        x, z = features("warm", kinds), features("item_cold", kinds)
        for strength in STRENGTHS:
            w = np.linalg.solve(x.T @ x + strength * np.eye(x.shape[1]), x.T @ (y - y.mean()))
            p = y.mean() + z @ w
            r2, mae = 1 - np.mean((t - p) ** 2) / t.var(), np.mean(np.abs(t - p))
            print(f"| {kinds} | {strength} | {r2:.3f} | {mae:.3f} |")


if __name__ == "__main__":
    main()
