"""The reproduction's pieces that need no real data: model selection on
validation users, the vocabularies fitted on training rows, the --inner-lr flag."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
from conftest import random_tasks, tiny_model

from jaxmeta.data.features import FeatureEncoder
from jaxmeta.evaluation import predict_tasks, query_metrics
from jaxmeta.reproduce import _fit_encoder, _inner_rates, _predictor, _train
from jaxmeta.tasks import pad_tasks
from jaxmeta.train import TrainConfig, make_learner


def setup(steps=12):
    config = TrainConfig(algo="maml", steps=steps, batch_size=4, inner_lr=0.3, outer_lr=0.05, num_buckets=1)
    learner = make_learner(config, tiny_model())
    valid = [pad_tasks(random_tasks(6, seed=9), support_size=6, query_size=4)]
    return config, learner, random_tasks(16, seed=1), valid


def test_selection_keeps_the_best_checkpoint_and_its_score():
    config, learner, train, valid = setup()
    methods = {"maml": partial(_predictor, learner)}
    every_step, seconds, rate = _train(learner, train, config, desc="t", progress=False, methods=methods,
                                       valid=valid, every=1)
    last_only, _, _ = _train(learner, train, config, desc="t", progress=False, methods=methods, valid=valid,
                             every=config.steps)
    best, last = every_step["maml"], last_only["maml"]
    assert seconds > 0 and rate > 0
    assert last.step == config.steps and 1 <= best.step <= config.steps
    assert best.valid_mae <= last.valid_mae  # training is seeded: the last checkpoint was a candidate
    predictions, queries = predict_tasks(_predictor(learner, best.state), valid)
    assert query_metrics(predictions, queries, ks=())["mae"] == pytest.approx(best.valid_mae, rel=1e-6)
    assert int(best.state.step) == best.step


def test_selection_checks_every_few_steps_and_at_the_end():
    config, learner, train, valid = setup(steps=10)
    seen = []

    def watch(state):
        seen.append(int(state.step))
        return _predictor(learner, state)

    _train(learner, train, config, desc="t", progress=False, methods={"m": watch}, valid=valid, every=4)
    assert seen == [4, 8, 10]


def test_selection_skips_diverged_checkpoints_and_fails_if_all_diverge():
    config, learner, train, valid = setup(steps=4)
    calls = []

    def sometimes_nan(state):
        calls.append(int(state.step))
        good = _predictor(learner, state)
        return good if int(state.step) == 2 else (lambda b: np.full(np.shape(b.query_y), np.nan))

    best, _, _ = _train(learner, train, config, desc="t", progress=False, methods={"m": sometimes_nan},
                        valid=valid, every=1)
    assert best["m"].step == 2 and calls == [1, 2, 3, 4]
    with pytest.raises(FloatingPointError, match="never gave finite"):
        _train(learner, train, config, desc="t", progress=False, valid=valid, every=1,
               methods={"m": lambda s: (lambda b: np.full(np.shape(b.query_y), np.inf))})


def test_vocabularies_from_training_rows_send_unseen_values_to_oov():
    users = pd.DataFrame({"user": [1, 2, 3, 4], "zip": ["a", "a", "b", "c"]})
    items = pd.DataFrame({"item": [10, 11], "genres": [("x",), ("y",)]})
    train = pd.DataFrame({"user": [1, 2, 3], "item": [10, 10, 10]})

    def fit(u, i):
        return FeatureEncoder.fit(u, i, user_categorical=["zip"], item_multi=["genres"])

    seen = _fit_encoder(fit, users, items, train, "train")
    codes = seen.encode_ids([1, 3, 4, 4], [10, 10, 11, 10])
    zips, genres = codes["zip"], codes["genres"]
    assert zips[0] > 0 and zips[1] > 0 and zips[2] == 0  # user 4's zip "c" never trained: OOV
    assert genres[0, 0] > 0 and genres[2, 0] == 0  # item 11 was never rated in training: its genre is OOV
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
