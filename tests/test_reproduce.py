"""The reproduction's pieces: model selection on validation sets (the :class:`Validate` hook),
the vocabularies fitted on training rows, the --inner-lr flag, held-out items, the report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import random_tasks, tiny_model

from jaxmeta.cli import _inner_rates
from jaxmeta.data.datasets import _fit_encoder
from jaxmeta.data.features import FeatureEncoder
from jaxmeta.evaluation import predict_tasks, query_metrics
from jaxmeta.job import TrainConfig, make_learner
from jaxmeta.reproduce import Experiment
from jaxmeta.tasks import pad_tasks
from jaxmeta.train import BatchStream, Validate, fit


def setup(steps=12):
    config = TrainConfig(algo="maml", steps=steps, batch_size=4, inner_lr=0.3, outer_lr=0.05, num_buckets=1)
    learner = make_learner(config, tiny_model())
    valid = {"users": [pad_tasks(random_tasks(6, seed=9), support_size=6, query_size=4)]}
    return config, learner, random_tasks(16, seed=1), valid


def predictor(learner):
    return lambda state: (lambda batch: learner.predict(state, batch))


def select(learner, train, config, valid, methods, every):
    """Trains with a :class:`Validate` hook that keeps every method's best state; returns the hook."""
    validate = Validate(valid, methods, every=every, keep=True)
    stream = BatchStream(train, batch_size=config.batch_size, num_buckets=config.num_buckets, seed=config.seed)
    fit(learner, stream, steps=config.steps, seed=config.seed, hooks=[validate], progress=False)
    return validate


def test_selection_keeps_the_best_checkpoint_and_its_score():
    config, learner, train, valid = setup()
    methods = {"maml": predictor(learner)}
    every_step = select(learner, train, config, valid, methods, every=1)
    last_only = select(learner, train, config, valid, methods, every=config.steps)
    best, last = every_step.chosen("users", "maml"), last_only.chosen("users", "maml")
    assert every_step.seconds > 0
    assert last.step == config.steps and 1 <= best.step <= config.steps
    assert best.valid_mae <= last.valid_mae  # training is seeded: the last checkpoint was a candidate
    predictions, queries = predict_tasks(predictor(learner)(best.state), valid["users"])
    assert query_metrics(predictions, queries, ks=())["mae"] == pytest.approx(best.valid_mae, rel=1e-6)
    assert int(best.state.step) == best.step


def test_selection_checks_every_few_steps_and_at_the_end():
    config, learner, train, valid = setup(steps=10)
    seen = []

    def watch(state):
        seen.append(int(state.step))
        return predictor(learner)(state)

    validate = select(learner, train, config, valid, {"m": watch}, every=4)
    best = validate.chosen("users", "m")
    assert seen == [4, 8, 10]
    curve = validate.curves["m"]["users"]
    assert [step for step, _ in curve] == [4, 8, 10]  # every check is recorded
    assert dict(curve)[best.step] == round(best.valid_mae, 4)
    assert min(mae for _, mae in curve) == round(best.valid_mae, 4)


def test_selection_skips_diverged_checkpoints_and_fails_if_all_diverge():
    config, learner, train, valid = setup(steps=4)
    calls = []

    def sometimes_nan(state):
        calls.append(int(state.step))
        good = predictor(learner)(state)
        return good if int(state.step) == 2 else (lambda b: np.full(np.shape(b.query_y), np.nan))

    validate = select(learner, train, config, valid, {"m": sometimes_nan}, every=1)
    assert validate.chosen("users", "m").step == 2 and calls == [1, 2, 3, 4]
    assert [mae is None for _, mae in validate.curves["m"]["users"]] == [True, False, True, True]
    never = select(learner, train, config, valid, {"m": lambda s: (lambda b: np.full(np.shape(b.query_y), np.inf))},
                   every=1)
    with pytest.raises(FloatingPointError, match="never gave finite"):
        never.chosen("users", "m")


def test_each_validation_set_keeps_its_own_best_checkpoint():
    config, learner, train, valid = setup(steps=12)
    valid["other"] = [pad_tasks(random_tasks(6, seed=4), support_size=6, query_size=4)]
    methods = {"maml": predictor(learner)}
    both = select(learner, train, config, valid, methods, every=1)
    for name, batches in valid.items():
        # the same run with this set alone: the same choice, so neither set's choice leaks into the other's
        alone = select(learner, train, config, {name: batches}, methods, every=1)
        assert both.chosen(name, "maml").step == alone.chosen(name, "maml").step
        assert both.chosen(name, "maml").valid_mae == pytest.approx(alone.chosen(name, "maml").valid_mae, rel=1e-6)
        # and the kept score is the checkpoint's own on that set (an explicit evaluation)
        predictions, queries = predict_tasks(predictor(learner)(both.chosen(name, "maml").state), batches)
        mae = query_metrics(predictions, queries, ks=())["mae"]
        assert mae == pytest.approx(both.chosen(name, "maml").valid_mae, rel=1e-6)


def test_vocabularies_from_training_rows_send_unseen_values_to_oov():
    users = pd.DataFrame({"user": [1, 2, 3, 4], "zip": ["a", "a", "b", "c"]})
    items = pd.DataFrame({"item": [10, 11], "genres": [("x",), ("y", "z", "x")]})
    train = pd.DataFrame({"user": [1, 2, 3], "item": [10, 10, 10]})

    def fit(u, i, max_values=None):
        return FeatureEncoder.fit(u, i, user_categorical=["zip"], item_multi=["genres"], max_values=max_values)

    seen = _fit_encoder(fit, users, items, train, "train")
    codes = seen.encode_ids([1, 3, 4, 4], [10, 10, 11, 10])
    zips, genres = codes["zip"], codes["genres"]
    assert zips[0] > 0 and zips[1] > 0 and zips[2] == 0  # user 4's zip "c" never trained: OOV
    assert genres[0, 0] > 0 and genres[2, 0] == 0  # item 11 was never rated in training: its genre is OOV
    # the slots are sized on every item: item 11's three genres fit (OOV, OOV, then "x" known)
    assert genres.shape[1] == 3 and genres[2].tolist() == [0, 0, genres[0, 0]] and genres[0, 1:].tolist() == [-1, -1]
    everything = _fit_encoder(fit, users, items, train, "all").encode_ids([4], [11])
    assert everything["zip"][0] > 0 and everything["genres"][0, 0] > 0


@pytest.mark.parametrize(
    "values, expected",
    [
        (["0.05"], 0.05),
        ([], 0.1),
        (["maml=0.2", "anil=0.3"], {"maml": 0.2, "anil": 0.3}),
    ],
)
def test_inner_lr_flag(values, expected):
    assert _inner_rates(values) == expected


def test_inner_lr_flag_with_a_default_and_an_override():
    rates = _inner_rates(["0.1", "reptile=0.03"])
    assert rates["reptile"] == 0.03 and rates["maml"] == rates["metasgd"] == 0.1


@pytest.mark.parametrize("value, message", [("fast", "pass a rate"), ("sgd=0.1", "'sgd' is not an algorithm")])
def test_inner_lr_flag_rejects_bad_values(value, message):
    with pytest.raises(ValueError, match=message):
        _inner_rates([value])


@pytest.mark.slow  # reads and splits the real ML-1M: pytest -m slow
def test_real_ml1m_held_out_items_never_train_and_leave_the_rest_alone():
    """``movielens(valid_items=...)``: the held-out items leave the training users and the item
    vocabularies; the validation users and the test scenarios are those of a plain load."""
    from conftest import real

    from jaxmeta.data.datasets import movielens as load

    folder = real("ml-1m")

    def items(tasks):
        return {int(i) for x in (*tasks.support_x, *tasks.query_x) for i in np.asarray(x["item_id"])}

    plain, held = load("ml-1m", folder), load("ml-1m", folder, valid_items=0.1)
    new = items(held.valid["new_items"])
    assert list(plain.valid) == ["users"] and len(held.valid["new_items"]) > 100
    assert new <= set(plain.warm_ratings["item"]) and not new & items(held.train)  # warm items, held out
    assert not new & set(held.warm_ratings["item"])  # the simple baselines never see them either
    assert len(items(held.train)) < len(items(plain.train))
    np.testing.assert_array_equal(np.concatenate(plain.valid["users"].query_y),
                                  np.concatenate(held.valid["users"].query_y))
    for s in set(plain.scenarios) - {"warm"}:  # "warm" is the training users: they lost the held-out items
        np.testing.assert_array_equal(np.concatenate(plain.scenarios[s].query_y),
                                      np.concatenate(held.scenarios[s].query_y))
    # vocabularies come from the training items: fewer of them, so no more values and some fewer
    sizes = [{f.name: f.size for f in d.encoder.spec} for d in (plain, held)]
    assert sizes[0].keys() == sizes[1].keys() and all(sizes[1][k] <= sizes[0][k] for k in sizes[0])
    assert sizes[1]["actors"] < sizes[0]["actors"]
    with pytest.raises(ValueError, match="ml-100k has no item-cold scenario"):
        load("ml-100k", folder.parent / "ml-100k", valid_items=0.1)


def test_real_ml100k_heavy_users_train_and_leave_the_rest_alone():
    """``movielens("ml-100k", keep_heavy=True)``: the users with more than 100 ratings join the training
    ratings and nothing else; the tasks (training, validation, test) are a plain load's, row for row."""
    from conftest import real

    from jaxmeta.data.datasets import movielens as load
    from jaxmeta.data.splits import MAX_RATINGS

    folder = real("ml-100k")
    plain, kept = load("ml-100k", folder, seed=1), load("ml-100k", folder, seed=1, keep_heavy=True)
    counts = kept.warm_ratings.groupby("user").size()  # RecBole's users have 13-100 ratings: none is added
    added = kept.warm_ratings[kept.warm_ratings["user"].isin(counts.index[counts > MAX_RATINGS])]
    assert set(plain.warm_ratings["user"]) == set(counts.index[counts <= MAX_RATINGS])
    assert len(kept.warm_ratings) == len(plain.warm_ratings) + len(added) and added["user"].nunique() == 361
    for a, b in [(plain.train, kept.train), (plain.valid["users"], kept.valid["users"]),
                 (plain.scenarios["user_cold"], kept.scenarios["user_cold"])]:
        for field in ("support_x", "query_x"):
            np.testing.assert_array_equal(np.concatenate([x["item_id"] for x in getattr(a, field)]),
                                          np.concatenate([x["item_id"] for x in getattr(b, field)]))
        for field in ("support_y", "query_y"):
            np.testing.assert_array_equal(np.concatenate(getattr(a, field)), np.concatenate(getattr(b, field)))
    assert "heavy users training" in kept.split and "heavy" not in plain.split
    with pytest.raises(ValueError, match="keep_heavy=True: ml-1m's split already keeps"):
        load("ml-1m", folder.parent / "ml-1m", keep_heavy=True)
    with pytest.raises(ValueError, match="keep_heavy=True with dataset='ml-1m'"):
        Experiment("ml-1m", algos=("maml",), keep_heavy=True)


def test_markdown_lists_the_checkpoints_chosen_on_held_out_items():
    from jaxmeta.report import format_markdown

    selected = {"maml": {"step": 1600, "valid_mae": 0.7605, "inner_lr": 0.1,
                         "new_items": {"step": 400, "valid_mae": 0.8086, "inner_lr": 0.1}},
                "no_adaptation": {"step": 600, "valid_mae": 0.8251, "new_items": {"step": 100, "valid_mae": 0.8342}}}
    text = format_markdown({"dataset": "ml-1m", "split": "melu", "results": {}, "selected": selected},
                           command="cmd", seconds=10.0, train_users=5, valid_users=2, item_users=3)
    assert "5 meta-training users, 2 validation users, 3 users rating the held-out items." in text
    assert "on the validation users, and for item_cold and user_item_cold on the held-out items" in text
    rows = [line for line in text.splitlines() if line.startswith("| maml") or line.startswith("| no_adaptation")]
    assert rows == ["| maml | 1600 | 0.7605 | 0.1 |", "| maml (new items) | 400 | 0.8086 | 0.1 |",
                    "| no_adaptation | 600 | 0.8251 | – |", "| no_adaptation (new items) | 100 | 0.8342 | – |"]
    assert text.splitlines()[0] == "# ml-1m, melu"  # squared error, the default, goes unsaid
    mae = format_markdown({"dataset": "ml-1m", "split": "melu", "results": {}, "selected": selected, "loss": "mae"},
                          command="cmd")
    assert mae.splitlines()[0] == "# ml-1m, melu, meta-learners trained on mae"


def test_markdown_shows_decoded_mae_and_a_dash_where_a_method_or_an_older_run_lacks_it():
    from jaxmeta.report import format_markdown

    row = {"mae": 0.7, "rmse": 0.9, "ndcg@3": 0.8, "ndcg@5": 0.8, "ndcg_lin@3": 0.9, "train_seconds": 1.0,
           "users_per_s": 5.0}
    results = {"s": {"ridge": {**row, "mae_decoded": 0.6612}, "item_mean": {**row, "mae_decoded": None},
                     "old": row}}
    vs = {"bias": {"mae": [-0.01, 0.002, "win"], "rmse": [-0.01, 0.002, "win"], "ndcg@3": [0.0, 0.01, "tie"],
                   "mae_decoded": [-0.02, 0.003, "win"]},
          "mf": {"mae": [-0.01, 0.002, "win"], "rmse": [-0.01, 0.002, "win"], "ndcg@3": [0.0, 0.01, "tie"]}}
    text = format_markdown({"dataset": "ml-1m", "split": "melu", "results": results,
                            "chosen": {"s": {"method": "ridge", "vs": vs}}}, command="cmd")
    lines = text.splitlines()
    assert "| method | MAE | MAE decoded | RMSE |" in text
    assert next(x for x in lines if x.startswith("| ridge |")).startswith("| ridge | 0.7000 | 0.6612 | 0.9000 |")
    assert next(x for x in lines if x.startswith("| item_mean |")).startswith("| item_mean | 0.7000 | – | 0.9000 |")
    assert next(x for x in lines if x.startswith("| old |")).startswith("| old | 0.7000 | – | 0.9000 |")
    assert "| s | ridge | bias | -0.0100 ± 0.0020 | win | -0.0100 ± 0.0020 | win | +0.0000 ± 0.0100 | tie | " \
           "-0.0200 ± 0.0030 | win |" in text
    assert "| s | ridge | mf | -0.0100 ± 0.0020 | win | -0.0100 ± 0.0020 | win | +0.0000 ± 0.0100 | tie | – | |" in lines


@pytest.mark.parametrize("options, message", [
    ({"students": ("amortised",)}, "the teacher must be one of the trained algos"),
    ({"students": ("amortised",), "teacher": "anil"}, "the teacher must be one of the trained algos"),
    ({"teacher": "maml"}, "without students"),
    ({"students": ("tiny",), "teacher": "maml"}, r"students=\('tiny',\): pass a list drawn from"),
    ({"students": ("compressed",), "teacher": "maml", "distill_alpha": 1.5}, "distill_alpha=1.5"),
    ({"student_steps": 100}, "student_steps=100 without students"),
    ({"students": ("compressed",), "teacher": "maml", "student_steps": 0}, "student_steps=0"),
])
def test_distillation_settings_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        Experiment("ml-100k", algos=("maml",), **options)


@pytest.mark.parametrize("options, message", [
    ({"loss": "l1"}, r"loss='l1': pass one of \('mse', 'mae', 'huber'\)"),
    ({"loss": "mae", "algos": ("ridge", "multitask")}, "loss='mae' with multitask or students"),
    ({"loss": "huber", "students": ("compressed",), "teacher": "maml"}, "loss='huber' with multitask or students"),
    ({"loss": "mae", "algos": "multitask"}, r"algos='multitask': pass a list"),  # the type first, then the loss
    ({"heavy_users": True}, "heavy_users=True on ml-100k: .* pass keep_heavy=True as well"),
    ({"freeze_items": True}, "freeze_items=True with model='melu', warm_start='none'"),
    ({"freeze_items": True, "model": "hybrid"}, "warm_start='none': only hybrid MeLU's item rows started from ALS"),
    ({"without": ("mlp",)}, r"without=\('mlp',\) with model='melu'"),
    ({"without": ("ids",), "model": "hybrid", "warm_start": "all", "freeze_items": True}, "reads no item rows to hold"),
    ({"without": ("text",), "model": "hybrid"}, r"without=\('text',\): pass a list drawn from"),
    ({"implicit_prior": True}, r"implicit_prior=True with algos=\('maml',\): only ridge's prior"),
    ({"implicit_vectors": True, "algos": ("ridge",), "model": "hybrid"},
     "implicit_vectors=True with implicit_prior=False, model='hybrid': the free vectors"),
    ({"implicit_vectors": True, "implicit_prior": True, "algos": ("ridge",)}, "implicit_prior=True, model='melu'"),
    ({"implicit_vectors": True, "implicit_prior": True, "algos": ("ridge",), "model": "hybrid", "without": ("ids",)},
     r"implicit_vectors=True with without=\('ids',\): the free vectors stand in"),
])
def test_training_loss_is_checked(options, message):
    with pytest.raises(ValueError, match=message):
        Experiment("ml-100k", **{"algos": ("maml",), **options})


def test_held_item_rows_reach_the_optimizer_and_the_tables():
    """``freeze_items``: the outer optimizer of every MeLU-model learner holds ``params["items"]``; the settings go
    into results.json's heading in results.md."""
    import jax.numpy as jnp

    from jaxmeta.report import format_markdown

    ex = Experiment("ml-100k", algos=("ridge",), model="hybrid", warm_start="all", freeze_items=True)
    meta = ({"items": {"vectors": jnp.ones(3)}, "user": {"bias": jnp.ones(())}}, jnp.ones(2))
    opt = ex.model_optimizer()
    updates, _ = opt.update(meta, opt.init(meta), meta)
    assert not np.any(updates[0]["items"]["vectors"]) and np.all(updates[0]["user"]["bias"] < 0)
    moved, _ = ex.outer_optimizer().update(meta, ex.outer_optimizer().init(meta), meta)
    assert np.all(moved[0]["items"]["vectors"] < 0)
    heading = format_markdown({"dataset": "ml-100k", "split": "recbole", "results": {}, "model": "hybrid",
                               "warm_start": "all", "freeze_items": True, "without": ["mlp"]},
                              command="cmd").splitlines()[0]
    assert heading == "# ml-100k, recbole, hybrid MeLU, item rows from ALS (all, held) without mlp"
    implicit = format_markdown({"dataset": "ml-1m", "split": "melu", "results": {}, "model": "hybrid",
                                "implicit_prior": True}, command="cmd").splitlines()[0]
    assert implicit == "# ml-1m, melu, hybrid MeLU, ridge's prior from the items rated"
    vectors = format_markdown({"dataset": "ml-1m", "split": "melu", "results": {}, "model": "hybrid",
                               "implicit_prior": True, "implicit_vectors": True}, command="cmd").splitlines()[0]
    assert vectors == "# ml-1m, melu, hybrid MeLU, ridge's prior from the items rated (free item vectors)"
