"""Item text as a feature: the texts, the disk cache of their vectors, the "vector" field
kind of the FeatureEncoder, and its learned projection in MeLU and the two-tower model."""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
from conftest import real

from jaxmeta import algorithms
from jaxmeta.data import movielens
from jaxmeta.data.features import FeatureEncoder, FieldSpec
from jaxmeta.data.text_features import (
    add_text_vectors,
    display_title,
    item_text,
    item_text_vectors,
    item_texts,
    with_melu_metadata,
)
from jaxmeta.models.melu import embed_fields, melu
from jaxmeta.models.two_tower import two_tower
from jaxmeta.tasks import RaggedTasks, pad_tasks

# --------------------------------------------------------------------------- texts


def test_item_text_of_an_ml1m_movie_with_melu_metadata():
    text = item_text("American President, The (1995)", year=1995, genres=("Comedy", "Drama"),
                     directors=("Rob Reiner",), actors=("Michael Douglas", "Annette Bening"),
                     plot="A widowed U.S. president falls for a lobbyist.")
    assert text == ("The American President (1995). Genres: Comedy, Drama. Director: Rob Reiner. "
                    "Actors: Michael Douglas, Annette Bening. Plot: A widowed U.S. president falls for a lobbyist.")
    assert item_text("Heat", directors=("A", "B"), plot="Why?") == "Heat. Directors: A, B. Plot: Why?"
    assert item_text("Heat", year=pd.NA, genres=(), plot=float("nan")) == "Heat."
    assert display_title("Misérables, Les (1995)") == "Les Misérables"
    assert display_title("Homme, L' (1999)") == "L'Homme"
    assert display_title("A Few Good Men (1992)") == "A Few Good Men"


def test_item_texts_read_the_columns_the_table_has():
    ml100k = pd.DataFrame({"item": [1, 2], "title": ["Toy Story (1995)", "Unknown Movie"],
                           "genres": [("Animation", "Comedy"), ("unknown",)]}, index=[10, 11])
    texts = item_texts(ml100k)
    assert texts.tolist() == ["Toy Story (1995). Genres: Animation, Comedy.", "Unknown Movie."]
    assert texts.index.tolist() == [10, 11]
    ml1m = pd.DataFrame({"item": [1, 2, 3], "title": ["Toy Story (1995)", "Jumanji (1995)", "Heat (1995)"],
                         "year": [1995, 1995, 1995], "genres": [("Animation",), ("Adventure",), ("Action",)]})
    melu = pd.DataFrame({"item": [1, 2], "directors": [("John Lasseter",), ()], "actors": [("Tom Hanks",), ("Robin Williams",)],
                         "plot": ["Toys live.", np.nan]})
    both = with_melu_metadata(ml1m, melu)
    assert both["directors"].tolist() == [("John Lasseter",), (), ()] and both["plot"].isna().tolist() == [False, True, True]
    assert item_texts(both).tolist() == [
        "Toy Story (1995). Genres: Animation. Director: John Lasseter. Actors: Tom Hanks. Plot: Toys live.",
        "Jumanji (1995). Genres: Adventure. Actors: Robin Williams.",
        "Heat (1995). Genres: Action.",
    ]
    with pytest.raises(ValueError, match="lacks the column 'title'"):
        item_texts(ml1m.drop(columns="title"))
    with pytest.raises(ValueError, match="already has the column"):
        with_melu_metadata(both, melu)


def test_real_item_texts():
    ml1m_dir = real("ml-1m")
    items = with_melu_metadata(movielens.load_ml1m_items(ml1m_dir), movielens.load_melu_items(ml1m_dir / "melu_extra"))
    texts = item_texts(items).set_axis(items["item"])
    assert len(texts) == 3883 and texts.str.len().min() > 10
    assert texts[1].startswith("Toy Story (1995). Genres: Animation, Children's, Comedy. Director: John Lasseter. "
                               "Actors: Tom Hanks, Tim Allen, Don Rickles, Jim Varney. Plot: A little boy named Andy")
    assert "Plot:" not in texts[860] and "Plot:" not in texts[1795]  # MeLU merged them into 811 and 1741
    ml100k = item_texts(movielens.load_ml100k_items(real("ml-100k")))
    assert len(ml100k) == 1682 and ml100k.str.contains("unknown").sum() == 1  # genre "unknown" left out...
    assert (ml100k == "unknown.").sum() == 1  # ...but one movie's title is "unknown"


# --------------------------------------------------------------------------- the cache


class CountingEncoder:
    """A stand-in sentence encoder: a text's vector is read off its sha256."""

    dim = 4

    def __init__(self, fingerprint: str = "a" * 64):
        self.fingerprint = fingerprint
        self.calls: list[list[str]] = []

    def vector(self, text: str) -> np.ndarray:
        return np.frombuffer(hashlib.sha256(text.encode()).digest()[:4], np.uint8).astype(np.float32) / 255

    def encode(self, texts, *, batch_size=64):
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts]).reshape(len(texts), self.dim)


def test_cache_encodes_each_text_once_per_model(tmp_path):
    encoder = CountingEncoder()
    texts = ["b", "a", "b", "", "Café 東京"]
    first = item_text_vectors(texts, encoder, cache_dir=tmp_path)
    np.testing.assert_array_equal(first, np.stack([encoder.vector(t) for t in texts]))
    assert encoder.calls == [["b", "a", "", "Café 東京"]]  # repeats once
    again = item_text_vectors(texts[::-1], encoder, cache_dir=tmp_path)
    np.testing.assert_array_equal(again, first[::-1])
    assert len(encoder.calls) == 1  # all hits
    item_text_vectors(["a", "new"], encoder, cache_dir=tmp_path)
    assert encoder.calls[-1] == ["new"]  # only the miss
    folder = tmp_path / ("a" * 32)
    assert len(list(folder.glob("vectors-*.npz"))) == 2 and not list(folder.glob(".tmp*"))
    assert json.loads((folder / "model.json").read_text())["fingerprint"] == "a" * 64

    other = CountingEncoder("b" * 64)  # another model: its own folder, nothing reused
    item_text_vectors(texts, other, cache_dir=tmp_path)
    assert other.calls == [["b", "a", "", "Café 東京"]] and (tmp_path / ("b" * 32)).is_dir()

    uncached = CountingEncoder()
    assert item_text_vectors([], uncached).shape == (0, 4)
    item_text_vectors(["a", "a"], uncached)
    item_text_vectors(["a"], uncached)
    assert uncached.calls == [["a"], ["a"]]


def test_cache_folder_expands_the_home_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # "~" is $HOME on POSIX
    monkeypatch.chdir(tmp_path / "..")
    item_text_vectors(["a"], CountingEncoder(), cache_dir="~/cache")
    assert (tmp_path / "cache" / ("a" * 32) / "model.json").is_file()
    assert not (tmp_path / ".." / "~").exists()  # no folder literally named "~"


def test_cache_rejects_foreign_files_and_bad_texts(tmp_path):
    folder = tmp_path / ("a" * 32)
    folder.mkdir()
    np.savez(folder / "vectors-x.npz", keys=np.zeros((1, 32), np.uint8), vectors=np.zeros((1, 7), np.float32))
    with pytest.raises(ValueError, match="not \\[n, 4\\]"):
        item_text_vectors(["a"], CountingEncoder(), cache_dir=tmp_path)
    with pytest.raises(TypeError, match="text 1 is nan"):
        item_text_vectors(["a", float("nan")], CountingEncoder())


# --------------------------------------------------------------------------- the vector field


@pytest.fixture
def tables():
    encoder = CountingEncoder()
    users = pd.DataFrame({"user": [1, 2], "gender": ["F", "M"]})
    items = pd.DataFrame({"item": [7, 8, 9], "title": ["Toy Story (1995)", "Heat (1995)", "Up (2009)"],
                          "genres": [("Animation",), ("Action", "Crime"), ("Animation",)],
                          "score": [1.0, 2.0, 3.0]})
    return users, add_text_vectors(items, encoder), encoder


def test_vector_field_encodes_the_items_vectors(tables):
    users, items, text_encoder = tables
    enc = FeatureEncoder.fit(users, items, user_categorical=["gender"], item_multi=["genres"], item_numeric=["score"],
                             item_vector=["text_vector"])
    assert list(enc.spec) == [FieldSpec("genres", "multi", 4, 2), FieldSpec("score", "numeric", 1, 1),
                              FieldSpec("text_vector", "vector", 4, 1), FieldSpec("gender", "categorical", 3, 1)]
    x = enc.encode([(1, 8), (2, 7), (1, 8)])
    expected = np.stack([text_encoder.vector(item_text(t, genres=g)) for t, g in
                         [("Heat (1995)", ("Action", "Crime")), ("Toy Story (1995)", ("Animation",))] * 2])[[0, 1, 0]]
    assert x["text_vector"].dtype == np.float32 and x["text_vector"].shape == (3, 4)
    np.testing.assert_array_equal(x["text_vector"], expected)

    saved = json.loads(json.dumps(enc.to_dict()))
    assert saved["fields"][2] == {"name": "text_vector", "table": "item", "kind": "vector", "width": 4}
    loaded = FeatureEncoder.from_dict(saved, users=users, items=items)
    assert loaded.spec == enc.spec
    for name, value in loaded.encode([(1, 8), (2, 7), (1, 8)]).items():
        np.testing.assert_array_equal(value, x[name])

    # A new item: its vector comes from its text alone, through the same text encoder.
    new = add_text_vectors(pd.DataFrame({"item": [10], "title": ["Brand New (2024)"], "genres": [("Drama",)],
                                         "score": [np.nan]}), text_encoder)
    got = loaded.with_tables(items=pd.concat([items, new], ignore_index=True)).encode([(2, 10)])
    np.testing.assert_array_equal(got["text_vector"][0], text_encoder.vector("Brand New (2024). Genres: Drama."))
    missing = items.assign(text_vector=[None, items["text_vector"][1], np.nan])
    np.testing.assert_array_equal(enc.with_tables(items=missing).encode([(1, 7)])["text_vector"], np.zeros((1, 4)))


@pytest.mark.parametrize("column, options, error, match", [
    ([np.zeros(4), np.zeros(3), np.zeros(4)], {}, ValueError, "shape \\(3,\\) where the field holds finite vectors of width 4"),
    ([np.zeros(4), np.full(4, np.inf), np.zeros(4)], {}, ValueError, "non-finite"),
    (["a", "b", "c"], {}, TypeError, "expected a 1-D array of numbers"),
    ([None, None, np.nan], {}, ValueError, "no vector in its table"),
    ([np.zeros(4)] * 3, {"min_count": {"text_vector": 2}}, ValueError, "which is a vector field"),
])
def test_vector_field_errors(tables, column, options, error, match):
    users, items, _ = tables
    with pytest.raises(error, match=match):
        FeatureEncoder.fit(users, items.assign(text_vector=column), item_vector=["text_vector"], **options)


# --------------------------------------------------------------------------- the models

FIELDS = (FieldSpec("genre", "multi", 5, 2), FieldSpec("text", "vector", 6, 1), FieldSpec("age", "categorical", 4, 1))


def rows(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"genre": rng.integers(-1, 5, (n, 2)).astype(np.int32),
            "text": rng.normal(size=(n, 6)).astype(np.float32),
            "age": rng.integers(0, 4, n).astype(np.int32)}


def test_melu_projects_the_vector_field():
    model = melu(FIELDS, embed_dim=3, hidden=(5,))
    params = model.init(jax.random.key(0))
    proj = params["embeddings"]["text"]
    assert proj["w"].shape == (6, 3) and proj["b"].shape == (3,)
    proj = {"w": proj["w"], "b": proj["b"] + 0.5}
    params["embeddings"]["text"] = proj
    x = rows(7)
    h = np.asarray(embed_fields(params["embeddings"], FIELDS, x))
    np.testing.assert_allclose(h[:, 3:6], x["text"] @ np.asarray(proj["w"]) + np.asarray(proj["b"]), rtol=1e-5, atol=1e-6)
    assert model.apply(params, x).shape == (7,)
    with pytest.raises(TypeError, match="pass float32 vectors"):
        model.apply(params, {**x, "text": x["text"].astype(np.int32)})
    with pytest.raises(ValueError, match="with size=6"):
        model.apply(params, {**x, "text": x["text"][:, :5]})
    with pytest.raises(ValueError, match="the vector's width"):
        melu([FieldSpec("text", "vector", 0, 1)])


def test_gradient_reaches_the_projection_and_matches_finite_differences():
    model = melu(FIELDS, embed_dim=3, hidden=(5,))
    params = model.init(jax.random.key(1))
    x, y = rows(9, seed=2), jnp.linspace(-1.0, 1.0, 9)
    loss = jax.jit(lambda p: jnp.mean((model.apply(p, x) - y) ** 2))
    grad = jax.grad(loss)(params)["embeddings"]["text"]
    assert float(jnp.abs(grad["w"]).max()) > 0 and float(jnp.abs(grad["b"]).max()) > 0
    eps = 1e-3
    for i, j in [(0, 0), (3, 2), (5, 1)]:
        bumped = [jax.tree.map(lambda a: a, params) for _ in range(2)]
        for sign, p in zip((1, -1), bumped):
            p["embeddings"]["text"] = {**p["embeddings"]["text"],
                                       "w": p["embeddings"]["text"]["w"].at[i, j].add(sign * eps)}
        numeric = (loss(bumped[0]) - loss(bumped[1])) / (2 * eps)
        np.testing.assert_allclose(float(grad["w"][i, j]), float(numeric), rtol=2e-2, atol=1e-4)


def test_maml_meta_learns_the_projection_as_a_slow_weight():
    model = melu(FIELDS, embed_dim=3, hidden=(5,))
    learner = algorithms.maml(model, inner_optimizer=optax.sgd(0.1), inner_steps=2, outer_optimizer=optax.sgd(1.0))
    state = learner.init(jax.random.key(0))
    parts = [(rows(5, s), np.linspace(0, 1, 5, dtype=np.float32), rows(3, s + 50), np.ones(3, np.float32))
             for s in range(4)]
    batch = pad_tasks(RaggedTasks(*(list(p) for p in zip(*parts))), support_size=6)
    new, _ = learner.step(state, batch)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.params, new.params)
    assert moved["embeddings"]["text"]["w"] > 0 and moved["embeddings"]["text"]["b"] > 0
    assert not model.is_fast(("embeddings", "text", "w")) and model.stage.is_embedding(("embeddings", "text", "w"))


def test_two_tower_takes_an_item_vector_field():
    model = two_tower([FIELDS[2]], FIELDS[:2], embed_dim=3, hidden=(4,), out_dim=2)
    params = model.init(jax.random.key(0))
    x = rows(4)
    assert model.apply(params, x).shape == (4,)
    grad = jax.grad(lambda p: jnp.sum(model.apply(p, x)))(params)
    assert float(jnp.abs(grad["item"]["embeddings"]["text"]["w"]).max()) > 0
