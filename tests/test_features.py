"""Feature encoding: vocabularies and OOV, multi-valued padding, numeric
standardisation, the saved form, and MeLU's 8 fields on the real tables.

Hand-made tables are the specification; the real-data test reads the folder named
by JAXMETA_DATA (default ``../shared/data`` from the repository root) and is
skipped, saying why, only where the files are absent.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from jaxmeta.data import movielens as ml
from jaxmeta.data.features import FeatureEncoder, FieldSpec, Vocabulary, melu_encoder
from jaxmeta.tasks import RaggedTasks, pad_tasks

from conftest import real

# ----------------------------------------------------------------------------- vocabulary


def test_vocabulary_numbers_known_values_from_one_and_sends_the_rest_to_zero():
    vocab = Vocabulary.build(["b", "a", "b", None, np.nan, "c", "b", "a"])
    assert vocab.values == ("a", "b", "c")  # sorted, missing values skipped
    assert vocab.size == 4  # 3 known + the OOV index
    codes = vocab.encode(["c", "a", "zzz", None, float("nan"), "b"])
    assert codes.dtype == np.int32
    assert codes.tolist() == [3, 1, 0, 0, 0, 2]
    assert vocab.decode([3, 1, 0, -1]) == ["c", "a", None, None]
    with pytest.raises(ValueError, match=r"index 4 is outside this vocabulary's range -1\.\.3"):
        vocab.decode([4])


def test_vocabulary_min_count_leaves_rare_values_out():
    values = ["x"] * 3 + ["y"] * 2 + ["z"]
    assert Vocabulary.build(values, min_count=2).values == ("x", "y")
    assert Vocabulary.build(values, min_count=3).encode(["x", "y", "z"]).tolist() == [1, 0, 0]
    assert Vocabulary.build(values, min_count=4).size == 1  # nothing known: everything is OOV
    assert Vocabulary.build(values, min_count=4).encode(["x"]).tolist() == [0]
    with pytest.raises(ValueError, match=r"min_count=0: pass a whole number >= 1"):
        Vocabulary.build(values, min_count=0)


def test_vocabulary_keeps_value_types_through_json():
    vocab = Vocabulary.build([np.int64(18), 1, "18", 2.5, np.int64(18)])
    assert vocab.values == (1, 2.5, 18, "18")  # numbers first, then strings
    assert [type(v) for v in vocab.values] == [int, float, int, str]  # numpy scalars unwrapped
    again = Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again == vocab
    assert again.encode([18, "18", np.int64(1), 3]).tolist() == [3, 4, 1, 0]


def test_vocabulary_rejects_bad_values():
    with pytest.raises(ValueError, match=r"values repeat: \['a'\]"):
        Vocabulary(["a", "b", "a"])
    with pytest.raises(ValueError, match=r"value 1 is missing"):
        Vocabulary(["a", None])
    with pytest.raises(TypeError, match=r"\('a', 'b'\) of type tuple cannot be a vocabulary entry"):
        Vocabulary.build([("a", "b")])
    with pytest.raises(ValueError, match=r"expected \{'values': \[\.\.\.\]\}"):
        Vocabulary.from_dict({"vals": []})


# ----------------------------------------------------------------------------- the encoder


@pytest.fixture
def tables():
    users = pd.DataFrame(
        {
            "user": [10, 11, 12, 13],
            "gender": ["F", "M", "F", None],
            "zip": ["55105", "55105-1234", "T8H1N", "90210"],
            "age": [20.0, 30.0, np.nan, 50.0],
        }
    )
    items = pd.DataFrame(
        {
            "item": ["a", "b", "c"],
            "rate": ["R", "PG", "R"],
            "genres": [("Drama", "Comedy"), (), ("Drama", "Drama", "Horror")],
            "actors": [("Ann",), ("Bob", "Cy"), None],
            "year": [1990, 1990, 1990],
        }
    )
    return users, items


def fit(users, items, **options):
    defaults = dict(
        user_categorical=["gender", "zip"],
        user_numeric=["age"],
        item_categorical=["rate"],
        item_multi=["genres", "actors"],
        item_numeric=["year"],
        prefix={"zip": 5},
    )
    return FeatureEncoder.fit(users, items, **(defaults | options))


def test_spec_lists_item_then_user_fields_with_sizes(tables):
    enc = fit(*tables)
    assert enc.spec == (
        FieldSpec("rate", "categorical", 3, 1),  # PG, R + OOV
        FieldSpec("genres", "multi", 4, 2),  # Comedy, Drama, Horror + OOV; at most 2 distinct per movie
        FieldSpec("actors", "multi", 4, 2),
        FieldSpec("year", "numeric", 1, 1),
        FieldSpec("gender", "categorical", 3, 1),  # F, M + OOV (the missing one is not a value)
        FieldSpec("zip", "categorical", 4, 1),  # 55105, 90210, T8H1N + OOV: "55105-1234" cut to 55105
        FieldSpec("age", "numeric", 1, 1),
    )
    assert enc.vocabularies["zip"].values == ("55105", "90210", "T8H1N")


def test_encode_pairs_by_hand(tables):
    enc = fit(*tables)
    x = enc.encode([(10, "a"), (11, "b"), (13, "c"), (12, "a")])
    assert list(x) == [f.name for f in enc.spec]
    assert x["rate"].tolist() == [2, 1, 2, 2]
    assert x["genres"].tolist() == [[2, 1], [-1, -1], [2, 3], [2, 1]]  # Drama=2 Comedy=1 Horror=3; repeats once
    assert x["actors"].tolist() == [[1, -1], [2, 3], [-1, -1], [1, -1]]  # None: no value at all
    assert x["gender"].tolist() == [1, 2, 0, 1]  # the missing gender of user 13 is OOV
    assert x["zip"].tolist() == [1, 1, 2, 3]
    mean, std = np.mean([20.0, 30.0, 50.0]), np.std([20.0, 30.0, 50.0])
    np.testing.assert_allclose(x["age"], [(20 - mean) / std, (30 - mean) / std, (50 - mean) / std, 0.0], rtol=1e-6)
    assert x["year"].tolist() == [0.0] * 4  # a constant column keeps std 1: (1990 - 1990) / 1
    for name, leaf in x.items():
        assert leaf.dtype == (np.float32 if name in ("age", "year") else np.int32), name
        assert leaf.shape[0] == 4


def test_encode_a_dataframe_equals_encode_of_tuples(tables):
    enc = fit(*tables)
    pairs = pd.DataFrame({"user": [12, 10], "item": ["c", "b"], "rating": [1.0, 2.0]})
    by_frame, by_tuples = enc.encode(pairs), enc.encode([(12, "c"), (10, "b")])
    assert all(np.array_equal(by_frame[k], by_tuples[k]) for k in by_frame)


def test_standardised_numbers_have_zero_mean_unit_std_on_the_fitting_table():
    users = pd.DataFrame({"user": range(50), "score": np.random.default_rng(0).normal(7.0, 3.0, 50)})
    enc = FeatureEncoder.fit(users, None, user_numeric=["score"])
    x = enc.encode_ids(np.arange(50), np.zeros(50))["score"]
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1.0) < 1e-5


def test_unseen_values_of_new_users_and_items_are_oov(tables):
    users, items = tables
    enc = fit(users, items)
    new_users = pd.DataFrame({"user": [99], "gender": ["M"], "zip": ["12345-678"], "age": [30.0]})
    new_items = pd.DataFrame(
        {"item": ["z"], "rate": ["NC-17"], "genres": [("Horror", "Western")], "actors": [("Dee",)], "year": [2001]}
    )
    x = enc.with_tables(new_users, new_items).encode([(99, "z")])
    assert (x["gender"][0], x["zip"][0], x["rate"][0]) == (2, 0, 0)
    assert x["genres"][0].tolist() == [3, 0]  # Horror known, Western OOV
    assert x["actors"][0].tolist() == [0, -1]
    assert x["year"][0] == pytest.approx(2001 - 1990)
    # the old pairs are gone from the new encoder; with_tables(users only) keeps the items
    with pytest.raises(ValueError, match=r"1 user id\(s\) have no row in the encoder's user table, e\.g\. 10: pass their features"):
        enc.with_tables(new_users, new_items).encode([(10, "z")])
    assert enc.with_tables(users=new_users).encode([(99, "a")])["rate"].tolist() == [2]


def test_min_count_makes_rare_values_oov(tables):
    enc = fit(*tables, min_count={"genres": 2, "rate": 2})
    assert enc.vocabularies["genres"].values == ("Drama",)  # in 2 movies (counted once per movie)
    assert enc.vocabularies["rate"].values == ("R",)
    assert enc.encode([(10, "a")])["genres"].tolist() == [[1, 0]]  # Comedy is now OOV, still a slot


def test_to_dict_from_dict_round_trip_through_json(tables):
    users, items = tables
    enc = fit(users, items, min_count={"zip": 1})
    saved = json.loads(json.dumps(enc.to_dict()))
    again = FeatureEncoder.from_dict(saved)
    assert again.spec == enc.spec
    assert again.vocabularies == enc.vocabularies
    with pytest.raises(ValueError, match=r"holds no user table .*: call encoder\.with_tables\(users=\.\.\.\)"):
        again.encode([(10, "a")])
    pairs = [(u, i) for u in users["user"] for i in items["item"]]
    restored = FeatureEncoder.from_dict(saved, users=users, items=items).encode(pairs)
    original = enc.encode(pairs)
    assert list(restored) == list(original)
    for name in original:
        assert restored[name].dtype == original[name].dtype
        np.testing.assert_array_equal(restored[name], original[name])
    with pytest.raises(ValueError, match=r"written by FeatureEncoder\.to_dict"):
        FeatureEncoder.from_dict({"fields": []})


def test_id_columns_can_be_fields(tables):
    users, items = tables
    enc = FeatureEncoder.fit(users, items.iloc[:2], item_categorical=["item"], user_categorical=["user"])
    x = enc.with_tables(items=items).encode([(10, "a"), (13, "c")])
    assert x["item"].tolist() == [1, 0]  # item "c" was not in the fitting table: OOV
    assert x["user"].tolist() == [1, 4]


def test_encoded_inputs_pad_into_a_task_batch(tables):
    enc = fit(*tables)
    x = enc.encode([(10, "a"), (11, "b"), (12, "c")])
    take = lambda a, b: {k: v[a:b] for k, v in x.items()}  # noqa: E731
    tasks = RaggedTasks([take(0, 2), take(2, 3)], [np.ones(2), np.ones(1)], [take(0, 1)] * 2, [np.ones(1)] * 2)
    batch = pad_tasks(tasks)
    assert batch.support_x["genres"].shape == (2, 2, 2)
    assert batch.support_x["age"].dtype == np.float32


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(user_categorical=["gender", "nope"]), ValueError, r"user table lacks the column\(s\) \['nope'\]"),
        (dict(item_categorical=["rate", "genres"]), ValueError, r"\['genres'\] are named more than once"),
        (dict(prefix={"age": 5}), ValueError, r"prefix names 'age', which is a numeric field"),
        (dict(max_values={"zip": 3}), ValueError, r"max_values names 'zip', which is a categorical field"),
        (dict(min_count={"year": 2}), ValueError, r"min_count names 'year', which is a numeric field"),
        (dict(min_count=0), ValueError, r"min_count\['rate'\]=0: pass a whole number >= 1"),
        (dict(item_multi=["rate"], item_categorical=[]), TypeError, r"field 'rate', id 'a': expected a tuple"),
        (dict(item_categorical=["genres"], item_multi=["actors"]), TypeError, r"id 'a': holds the collection"),
        (dict(item_numeric=["rate"], item_categorical=[]), ValueError,
         r"numeric field 'rate', id 'a': 'R' is not a number"),
        (dict(user_categorical="gender"), TypeError, r"pass a list of column names, e\.g\. \['gender'\]"),
        (dict(prefix={"zip": 5, "age": 2}, user_categorical=["gender", "zip", "age"], user_numeric=[]),
         TypeError, r"field 'age' has prefix=2 but holds the non-string value 20\.0"),
    ],
)
def test_fit_errors_name_the_bad_value(tables, options, error, message):
    with pytest.raises(error, match=message):
        fit(*tables, **options)


def test_table_errors(tables):
    users, items = tables
    with pytest.raises(ValueError, match=r"repeats 1 id\(s\) in column 'user', e\.g\. 10"):
        fit(pd.concat([users, users.iloc[:1]]), items)
    with pytest.raises(ValueError, match=r"user fields \['gender'\] were asked for but users=None"):
        FeatureEncoder.fit(None, items, user_categorical=["gender"])
    with pytest.raises(ValueError, match=r"no fields"):
        FeatureEncoder.fit(users, items)
    enc = fit(users, items, max_values={"genres": 2})
    crowded = items.assign(genres=[("Drama", "Comedy", "War"), (), ()])
    with pytest.raises(ValueError, match=r"'genres', id 'a': 3 values but the encoder has max_values=2; refit"):
        enc.with_tables(items=crowded)
    with pytest.raises(ValueError, match=r"users and items must be 1-D and of equal length"):
        enc.encode_ids([10, 11], ["a"])
    with pytest.raises(ValueError, match=r"pair \(10,\) is not a \(user, item\) pair"):
        enc.encode([(10,)])


def test_melu_encoder_has_melus_eight_fields(tables):
    users = pd.DataFrame(
        {"user": [1, 2], "gender": ["F", "M"], "age": [1, 56], "occupation": [10, 16], "zip": ["48067", "98107-2117"]}
    )
    items = pd.DataFrame(
        {
            "item": [5, 6],
            "rate": ["G", "R"],
            "genres": [("Drama",), ("Comedy", "Drama")],
            "directors": [("Ann",), ()],
            "actors": [("Bob", "Cy"), ("Dee",)],
        }
    )
    enc = melu_encoder(users, items)
    assert [(f.name, f.kind) for f in enc.spec] == [
        ("rate", "categorical"), ("genres", "multi"), ("directors", "multi"), ("actors", "multi"),
        ("gender", "categorical"), ("age", "categorical"), ("occupation", "categorical"), ("zip", "categorical"),
    ]
    assert enc.vocabularies["zip"].values == ("48067", "98107")
    x = enc.encode([(2, 6)])
    assert (x["age"][0], x["zip"][0], x["directors"][0].tolist()) == (2, 2, [-1])


# ----------------------------------------------------------------------------- the real data



def test_real_melu_vocabularies_are_melus_lists():
    """Fitted on the complete tables, each vocabulary is MeLU's value list (m_*.txt) less
    its "nan" entry: MeLU encodes a movie without directors as the value "nan", here it
    has no value (all -1)."""
    folder, extra = real("ml-1m"), real("ml-1m/melu_extra")
    enc = melu_encoder(ml.load_ml1m_users(folder), ml.load_melu_items(extra))
    lists = {"rate": "rate", "genres": "genre", "directors": "director", "actors": "actor", "gender": "gender",
             "age": "age", "occupation": "occupation", "zip": "zipcode"}
    sizes = {}
    for field, name in lists.items():
        melu = [line.strip() for line in (extra / f"m_{name}.txt").read_text(encoding="utf-8").splitlines()]
        ours = [str(v) for v in enc.vocabularies[field].values]
        assert sorted(ours) == sorted(v for v in melu if v != "nan"), field
        sizes[field] = enc.vocabularies[field].size
    assert sizes == {"rate": 7, "genres": 25, "directors": 2186, "actors": 7978, "gender": 3, "age": 8,
                     "occupation": 22, "zip": 3403}
    assert {f.name: f.max_values for f in enc.spec if f.kind == "multi"} == {"genres": 7, "directors": 12, "actors": 4}
    x = enc.encode([(1, 1)])  # user 1 (F, under 18, K-12 student), Toy Story
    assert enc.vocabularies["actors"].decode(x["actors"][0]) == ["Tom Hanks", "Tim Allen", "Don Rickles", "Jim Varney"]
    assert enc.vocabularies["rate"].decode(x["rate"]) == ["G"]


def test_with_rows_adds_and_replaces_rows_keeping_vocabularies(tables):
    users, items = tables
    enc = fit(users, items)
    new = pd.DataFrame({"user": [11, "new"], "gender": ["F", None], "zip": ["T8H1N", None], "age": [50.0, np.nan]})
    more = enc.with_rows(users=new)
    assert more.vocabularies == enc.vocabularies and more.spec == enc.spec
    assert sorted(map(str, more.ids("user"))) == ["10", "11", "12", "13", "new"]
    # the same rows as a with_tables of the whole table, each field and dtype
    whole = enc.with_tables(users=pd.concat([users[users["user"] != 11], new], ignore_index=True))
    pairs = [(u, i) for u in [10, 11, 12, 13, "new"] for i in ["a", "c"]]
    got, expected = more.encode(pairs), whole.encode(pairs)
    for name in expected:
        assert got[name].dtype == expected[name].dtype
        np.testing.assert_array_equal(got[name], expected[name])
    x = more.encode([(11, "a"), ("new", "a")])
    assert x["gender"].tolist() == [1, 0] and x["zip"].tolist() == [3, 0] and x["age"][1] == 0.0  # mean
    with pytest.raises(ValueError, match=r"e\.g\. 'new'"):  # the encoder itself is unchanged
        enc.encode([("new", "a")])
    assert enc.with_rows() is not enc and enc.with_rows().encode([(11, "a")])["gender"].tolist() == [2]
    assert enc.with_rows(items=items.iloc[:1].assign(rate="PG")).encode([(10, "a")])["rate"].tolist() == [1]


def test_with_rows_on_an_encoder_without_tables_makes_them(tables):
    users, items = tables
    bare = FeatureEncoder.from_dict(fit(users, items).to_dict())
    x = bare.with_rows(users=users, items=items).encode([(10, "a")])
    np.testing.assert_array_equal(x["zip"], fit(users, items).encode([(10, "a")])["zip"])
    with pytest.raises(ValueError, match=r"the user table lacks the column\(s\) \['zip', 'age'\]"):
        bare.with_rows(users=users[["user", "gender"]])


def test_table_columns(tables):
    enc = fit(*tables)
    assert enc.table_columns("user") == ("user", "gender", "zip", "age")
    assert enc.table_columns("item") == ("item", "rate", "genres", "actors", "year")
    with pytest.raises(ValueError, match="table='users': pass 'user' or 'item'"):
        enc.table_columns("users")
