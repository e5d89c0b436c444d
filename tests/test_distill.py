"""Distillation (:mod:`jaxmeta.algorithms.distill`) and amortised adaptation against independent
references: the mixed objective written plainly (a Python loop over users and inner steps, the
teacher's predictions from its own plain loop) and its central finite differences in float64, an
explicit loop over one-user batches, NaN padding, the target-mixing identity, the encoder's one
forward pass, and exact resume of a distilled ``jaxmeta train`` run."""

from __future__ import annotations

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
from conftest import (
    RUN_SETTINGS,
    VOCAB,
    assert_batch_equals_loop,
    jaxmeta,
    meta_grad,
    random_tasks,
    real,
    tiny_model,
)
from test_conditioned import SMALL, film_on, reference_user
from test_gradients import central_differences, users_of

from jaxmeta import algorithms
from jaxmeta.algorithms import amortised, conditioned, distill, maml, warm_start
from jaxmeta.algorithms.conditioned import modulate, task_vector
from jaxmeta.checkpoint import Checkpoints
from jaxmeta.job import TrainConfig, restore_run
from jaxmeta.models import embedding_mlp
from jaxmeta.tasks import pad_tasks

LR, K, K_TEACHER = 0.3, 2, 3
ALPHA = 0.3
TRACES = []  # one entry each time JAX traces the float32 teacher's model


# --------------------------------------------------------------------------- the learners
# Built once per module (float32) and used on batches of one shape, so that the tests share
# their compiled steps.


def teacher_of(dtype=jnp.float32):
    """A MAML teacher on the tiny model, at a random (untrained) state: its adapted predictions
    differ from the ratings, which is all a test of the mixing needs."""
    model = tiny_model(dtype)
    learner = maml(model, inner_optimizer=LR, inner_steps=K_TEACHER)
    return model, learner, learner.init(jax.random.key(7))


@functools.cache
def teacher32():
    """:func:`teacher_of` in float32, its model counting its traces in :data:`TRACES`."""
    model, _, state = teacher_of()

    def counting(params, x):
        TRACES.append(1)  # runs only while JAX traces
        return model.apply(params, x)

    return model, maml(model._replace(apply=counting), inner_optimizer=LR, inner_steps=K_TEACHER), state


def mlp(hidden, dtype=jnp.float32):
    """``embedding_mlp`` on conftest's ids, its parameters cast to ``dtype``."""
    model = embedding_mlp(VOCAB, embed_dim=2, hidden=hidden, output_bias=0.3)
    return model._replace(init=lambda key: jax.tree.map(lambda a: a.astype(dtype), model.init(key)))


def with_random_biases(state, seed):
    """``state`` with random hidden biases (they start at zero) and a fresh ``optax.sgd(1.0)`` state,
    so that ``meta_grad`` reads the gradient and no ReLU input sits at exactly 0."""
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(0.1 * rng.normal(size=x.shape), x.dtype) if getattr(path[-1], "key", None) == "b" else x,
        state.params)
    return state._replace(params=params, opt_state=optax.sgd(1.0).init((params, state.hyper)))


def student_of(kind, dtype=jnp.float32):
    """``(model, fast keys, learner, state)``: the amortised student (the tiny model, staged, with the
    encoder and FiLM maps random) or the compressed one (MAML on an MLP of 2 hidden units; the teacher's
    tiny model has 3, and any model that reads the same batches will do)."""
    if kind == "amortised":
        model = tiny_model(dtype, staged=True)
        learner = amortised(model, outer_optimizer=optax.sgd(1.0), **SMALL)
        return model, ("body", "head"), learner, film_on(learner.init(jax.random.key(1)), 2)
    model = mlp((2,), dtype)
    learner = maml(model, inner_optimizer=LR, inner_steps=K, outer_optimizer=optax.sgd(1.0))
    return model, ("layers",), learner, with_random_biases(learner.init(jax.random.key(1)), 2)


KINDS = ["amortised", "compressed"]
BATCH = pad_tasks(random_tasks(5, seed=3))


@functools.cache
def student32(kind):
    return student_of(kind)


@functools.cache
def distilled32(kind, alpha=ALPHA):
    _, teacher, teacher_state = teacher32()
    return distill(student32(kind)[2], teacher, teacher_state, alpha=alpha)


# --------------------------------------------------------------------------- the plain reference


def plain_maml(model, params, fast_keys, sx, sy, qx, *, steps):
    """One user's query predictions after ``steps`` plain SGD steps of the fast weights on the support MSE."""
    fast = {k: v for k, v in params.items() if k in fast_keys}
    slow = {k: v for k, v in params.items() if k not in fast_keys}
    for _ in range(steps if len(sy) else 0):
        grads = jax.grad(lambda f: jnp.mean((model.apply({**f, **slow}, sx) - sy) ** 2))(fast)
        fast = jax.tree.map(lambda p, g: p - LR * g, fast, grads)
    return model.apply({**fast, **slow}, qx)


def student_predictions(kind, model, fast_keys, meta, user):
    sx, sy, qx, _ = user
    if kind == "amortised":
        return reference_user(model, meta[0], meta[1], sx, sy, qx, steps=0)[1]
    return plain_maml(model, meta[0], fast_keys, sx, sy, qx, steps=K)


def mixed_losses(kind, model, fast_keys, meta, users, taught, alpha):
    """``mean over users of (1 - alpha) * MSE(ratings) + alpha * MSE(teacher)``: the losses mixed, not
    the targets."""
    losses = []
    for user, t in zip(users, taught):
        p = student_predictions(kind, model, fast_keys, meta, user)
        losses.append((1 - alpha) * jnp.mean((p - user[3]) ** 2) + alpha * jnp.mean((p - t) ** 2))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("kind", ["amortised", pytest.param("compressed", marks=pytest.mark.slow)])
def test_meta_gradient_is_that_of_the_mixed_losses_by_finite_differences(kind):
    """Float64: the distilled student's meta-gradient (model, and for amortised the encoder and FiLM)
    equals the central finite differences of (1 - alpha) MSE(ratings) + alpha MSE(teacher), written
    plainly with the teacher's predictions from its own plain loop; the reported loss is that mix
    less alpha (1 - alpha) mean((y - t)^2), the identity of the module docstring."""
    with jax.enable_x64(True):
        teacher_model, teacher, teacher_state = teacher_of(jnp.float64)
        model, fast_keys, student, state = student_of(kind, jnp.float64)
        tasks = random_tasks(3, seed=4, dtype=np.float64)
        users = users_of(tasks)
        taught = jax.jit(lambda params: [plain_maml(teacher_model, params, ("body", "head"), sx, sy, qx,
                                                    steps=K_TEACHER) for sx, sy, qx, _ in users])(teacher_state.params)
        grads, metrics = meta_grad(distill(student, teacher, teacher_state, alpha=ALPHA), state,
                                   pad_tasks(tasks, dtype=np.float64))

        def objective(meta):
            return mixed_losses(kind, model, fast_keys, meta, users, taught, ALPHA)

        meta = (state.params, state.hyper)
        gap = np.mean([np.mean((u[3] - t) ** 2) for u, t in zip(users, taught)])
        np.testing.assert_allclose(float(metrics["loss"]), float(objective(meta)) - ALPHA * (1 - ALPHA) * gap,
                                   rtol=1e-10)
        want = central_differences(objective, meta)
        assert jax.tree.structure(grads) == jax.tree.structure(want)
        for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
            np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-8)
        undistilled, _ = meta_grad(student, state, pad_tasks(tasks, dtype=np.float64))
        assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(grads),
                                                                   jax.tree.leaves(undistilled))) > 1e-3


# --------------------------------------------------------------------------- batching, padding


@pytest.mark.parametrize("kind", KINDS)
def test_batch_equals_a_loop_over_one_user_batches(kind):
    """Each user's targets are mixed with the teacher's predictions for that user alone."""
    assert_batch_equals_loop(distilled32(kind), student32(kind)[3], random_tasks(5, seed=3), BATCH)


def test_padded_rows_holding_nan_and_padding_users_change_nothing():
    learner, state = distilled32("amortised"), student32("amortised")[3]
    tasks = random_tasks(5, seed=3)
    clean = BATCH
    padded = pad_tasks(tasks, support_size=clean.support_size + 2, query_size=clean.query_size + 3,
                       num_tasks=len(tasks) + 2)
    padded = padded._replace(support_y=np.where(padded.support_mask, padded.support_y, np.inf),
                             query_y=np.where(padded.query_mask, padded.query_y, np.nan))
    (got, got_metrics), (want, want_metrics) = meta_grad(learner, state, padded), meta_grad(learner, state, clean)
    for a, b in zip(jax.tree.leaves((got, got_metrics)), jax.tree.leaves((want, want_metrics)), strict=True):
        assert np.isfinite(np.asarray(a)).all()
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the mixing identity


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def targets_of(batch, predictions):
    """``batch`` with its real query targets replaced by ``predictions``."""
    return batch._replace(query_y=np.where(batch.query_mask, np.asarray(predictions), batch.query_y))


@pytest.mark.parametrize("kind", KINDS)
def test_alpha_0_is_the_students_own_step_and_alpha_1_fits_the_teacher(kind):
    _, teacher, teacher_state = teacher32()
    _, _, student, state = student32(kind)
    batch = BATCH
    own = student.step(state, batch)
    for a, b in zip(leaves(distilled32(kind, 0.0).step(state, batch)), leaves(own), strict=True):
        np.testing.assert_array_equal(a, b)  # the true ratings alone, bit for bit
    taught = targets_of(batch, teacher.predict(teacher_state, batch))
    fitted = distilled32(kind, 1.0).step(state, batch)
    for a, b in zip(leaves(fitted), leaves(student.step(state, taught)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # the teacher's predictions alone
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(fitted[0].params), leaves(own[0].params))) > 1e-4


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_the_meta_gradient_mixes_those_of_the_ratings_and_of_the_teacher(loss):
    """Both losses are affine in their target, so mixing targets mixes the two meta-gradients:
    (1 - alpha) of the ratings' plus alpha of the teacher's (for bce, its probabilities)."""
    _, teacher, teacher_state = teacher32()
    if loss == "mse":
        _, _, student, state = student32("amortised")
        learner, batch = distilled32("amortised"), BATCH
    else:
        student = amortised(tiny_model(staged=True), outer_optimizer=optax.sgd(1.0), loss=loss, **SMALL)
        state = film_on(student.init(jax.random.key(1)), 2)
        learner = distill(student, teacher, teacher_state, alpha=ALPHA, loss=loss)
        batch = BATCH._replace(query_y=(BATCH.query_y > 0).astype(np.float32))  # clicks
    t = teacher.predict(teacher_state, batch)
    t = jax.nn.sigmoid(t) if loss == "bce" else t
    got, _ = meta_grad(learner, state, batch)
    on_ratings, _ = meta_grad(student, state, batch)
    on_teacher, _ = meta_grad(student, state, targets_of(batch, t))
    for g, r, tt in zip(leaves(got), leaves(on_ratings), leaves(on_teacher), strict=True):
        np.testing.assert_allclose(g, (1 - ALPHA) * r + ALPHA * tt, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- amortised adaptation


def test_amortised_adapt_is_one_forward_pass_of_the_encoder_whatever_the_inner_optimizer():
    """The adapted weights are the FiLM-modulated ones of the plain reference (no inner step), the
    same bit for bit as conditioned with inner_steps=0 under any inner optimizer."""
    model, _, learner, state = student32("amortised")
    tasks = random_tasks(5, seed=3)
    batch = BATCH
    adapted = learner.adapt(state, batch)
    users = users_of(tasks)
    references = jax.jit(lambda params, hyper: [reference_user(model, params, hyper, sx, sy, qx, steps=0)
                                                for sx, sy, qx, _ in users])(state.params, state.hyper)
    for u, ((fast, predictions), (_, _, qx, _)) in enumerate(zip(references, users)):
        for key in ("body", "head"):
            for name in ("w", "b"):
                np.testing.assert_allclose(adapted[key][name][u], fast[key][name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(learner.predict(state, batch)[u][: len(qx)], predictions, rtol=1e-5, atol=1e-6)
    @jax.jit
    def by_hand(params, hyper):  # the encoder's pass and FiLM, from the module's own pieces
        features = jax.vmap(model.stage.embed, in_axes=(None, 0))(params, batch.support_x)
        z = jax.vmap(task_vector, in_axes=(None, 0, 0, 0))(hyper["encoder"], features, batch.support_y,
                                                           batch.support_mask)
        return jax.vmap(modulate, in_axes=(None, None, 0))(algorithms.split_fast(params, model.is_fast)[0],
                                                           hyper["film"], z)

    by_hand = by_hand(state.params, state.hyper)
    for inner in (optax.adam(10.0), optax.sgd(5.0, momentum=0.9)):  # amortised: plain SGD at 0.03
        other = conditioned(model, inner_steps=0, inner_optimizer=inner, **SMALL)
        for a, b, c in zip(leaves(adapted), leaves(other.adapt(state, batch)), leaves(by_hand), strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("option", [{"inner_steps": 2}, {"inner_optimizer": 0.1}, {"backend": "xla"}])
def test_amortised_refuses_the_options_of_an_inner_loop(option):
    (name, value), = option.items()
    with pytest.raises(ValueError, match=f"amortised: {name}={value!r} does not apply.*conditioned"):
        amortised(tiny_model(staged=True), **option)


def test_distilled_learner_is_the_students_but_for_the_step_and_compiles_once():
    _, _, student, state = student32("amortised")
    learner = distilled32("amortised")
    for name in ("adapt", "evaluate", "predict", "is_fast", "apply_adapted", "init"):
        assert getattr(learner, name) is getattr(student, name), name
    state, _ = learner.step(state, BATCH)
    traced = len(TRACES)
    assert traced > 0  # the teacher was traced into the step
    for _ in range(2):
        state, metrics = learner.step(state, BATCH)
    assert len(TRACES) == traced, "a later same-shaped step re-traced the teacher"
    assert int(state.step) == 3 and np.isfinite(float(metrics["loss"]))


# --------------------------------------------------------------------------- warm start


def test_warm_start_copies_the_matching_leaves_and_an_amortised_student_starts_as_the_teacher():
    teacher = maml(mlp((4,)), inner_optimizer=LR, inner_steps=K)
    teacher_state = with_random_biases(teacher.init(jax.random.key(3)), 4)
    smaller = amortised(mlp((2,)), encoder_width=4, task_dim=3)
    start = smaller.init(jax.random.key(5))
    warm = warm_start(start, teacher_state)
    copied = 0
    for mine, theirs, before in zip(leaves(warm.params), leaves(teacher_state.params), leaves(start.params),
                                    strict=True):
        np.testing.assert_array_equal(mine, theirs if mine.shape == theirs.shape else before)
        copied += mine.shape == theirs.shape
    assert copied == 3  # the two embedding tables and the output bias; the narrower layers differ in shape
    for a, b in zip(leaves(warm.hyper) + leaves(warm.opt_state), leaves(start.hyper) + leaves(start.opt_state),
                    strict=True):
        np.testing.assert_array_equal(a, b)

    same = amortised(mlp((4,)), encoder_width=4, task_dim=3)  # FiLM starts at zero: no modulation yet
    learner = distill(same, teacher, teacher_state, warm_start=True)
    state = learner.init(jax.random.key(5))
    for a, b in zip(leaves(state.params), leaves(teacher_state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    batch = pad_tasks(random_tasks(4, seed=5))
    np.testing.assert_allclose(learner.evaluate(state, batch)["query_loss_after"],
                               teacher.evaluate(teacher_state, batch)["query_loss_before"], rtol=1e-6)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_alpha_outside_0_1_is_refused_naming_it(alpha):
    _, teacher, teacher_state = teacher_of()
    with pytest.raises(ValueError, match=r"distill: alpha=.*: pass a number in \[0, 1\]"):
        distill(maml(tiny_model()), teacher, teacher_state, alpha=alpha)


def test_a_loss_without_the_mixing_identity_is_refused():
    _, teacher, teacher_state = teacher_of()
    with pytest.raises(ValueError, match=r"distill: loss='huber'.*\['bce', 'mse'\]"):
        distill(maml(tiny_model()), teacher, teacher_state, loss="huber")


@pytest.mark.parametrize("fields, match", [
    ({"teacher": "t", "distill_alpha": 1.5}, r"distill_alpha=1.5: pass a number in \[0, 1\]"),
    ({"distill_alpha": 0.3}, "pass teacher=<a run folder>"),
    ({"distill_warm_start": True}, "pass teacher=<a run folder>"),
    ({"teacher": "t", "distill_warm_start": "yes"}, "distill_warm_start='yes': pass true or false"),
])
def test_config_refuses_bad_distillation_settings(fields, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**fields)


def test_a_teacher_that_is_missing_or_not_a_run_is_one_line_naming_it(tmp_path):
    missing = jaxmeta("train", "--algo", "amortised", "--teacher", tmp_path / "nowhere", "--steps", "2", "--quiet")
    assert missing.returncode == 2
    assert f"teacher='{tmp_path / 'nowhere'}': no such folder; pass the --out folder of a jaxmeta train run" \
        in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = jaxmeta("train", "--teacher", tmp_path / "empty", "--steps", "2", "--quiet")
    assert empty.returncode == 2 and "not a run folder (no config.yaml)" in empty.stderr
    alpha = jaxmeta("train", "--teacher", tmp_path / "empty", "--distill-alpha", "2", "--steps", "2", "--quiet")
    assert alpha.returncode == 2 and "distill_alpha=2.0: pass a number in [0, 1]" in alpha.stderr


def test_a_teacher_trained_on_other_data_is_refused(trained, tmp_path):
    other = jaxmeta("train", "--teacher", trained, "--data-seed", "1", "--steps", "2", "--quiet")
    assert other.returncode == 2
    assert f"teacher='{trained}': the teacher was trained with data_seed=0, this job has data_seed=1" in other.stderr
    own = jaxmeta("train", "--teacher", tmp_path / "run", "--out", tmp_path / "run", "--steps", "2", "--quiet")
    assert own.returncode == 2 and "is this run's own folder (--out)" in own.stderr


# --------------------------------------------------------------------------- the driver


@pytest.fixture(scope="module")
def distilled(trained, tmp_path_factory):
    """``jaxmeta train --algo amortised --teacher <the 4-step maml run> --distill-warm-start``, with the
    settings of conftest's run: validated and saved at steps 2 and 4."""
    run = tmp_path_factory.mktemp("distilled") / "run"
    done = jaxmeta("train", "--algo", "amortised", "--teacher", trained, "--distill-warm-start", "--out", run,
                   *RUN_SETTINGS)
    assert done.returncode == 0, done.stderr
    return run


def test_a_resumed_distillation_run_ends_bitwise_equal_to_the_uninterrupted_one(distilled, trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(distilled, run)
    shutil.rmtree(run / "checkpoints" / "4")  # as if killed after step 3: the last checkpoint is step 2
    shutil.rmtree(run / "baseline")
    resumed = jaxmeta("train", "--out", run, "--resume", "--quiet", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["algo"] == "amortised"
    whole, again = restore_run(distilled, which="latest"), restore_run(run, which="latest")  # no teacher needed
    assert whole.step == again.step == 4
    for a, b in zip(leaves(whole.state), leaves(again.state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert json.loads((run / "result.json").read_text())["query_mse"] == \
        json.loads((distilled / "result.json").read_text())["query_mse"]
    assert whole.config.teacher == str(trained.absolute())
    for folder in (distilled, run):  # the teacher's step, so that a resume can tell it moved on
        assert Checkpoints(folder / "checkpoints", read_only=True).extra(4)["teacher"] == {
            "run": str(trained.absolute()), "step": restore_run(trained).step}
    changed = jaxmeta("train", "--out", run, "--resume", "--distill-alpha", "0.9", "--quiet")
    assert changed.returncode == 2
    assert "--resume with distill_alpha=0.9, but the run was made with distill_alpha=0.5" in changed.stderr


@pytest.mark.slow  # one more training run; the library tests above cover the compressed student
def test_compression_through_the_driver(trained, tmp_path):
    """``--algo maml --hidden 16 --teacher RUN``: a MAML student of half the teacher's width."""
    run = tmp_path / "run"
    done = jaxmeta("train", "--algo", "maml", "--hidden", "16", "--teacher", trained, "--out", run, *RUN_SETTINGS)
    assert done.returncode == 0, done.stderr
    student = restore_run(run)
    assert student.state.params["layers"][0]["w"].shape[1] == 16
    assert restore_run(trained).state.params["layers"][0]["w"].shape[1] == 32
    evaluated = jaxmeta("eval", "--run", run, "--json")
    assert evaluated.returncode == 0, evaluated.stderr


@pytest.mark.slow  # two short trainings on the real ML-100K
def test_an_amortised_student_serves_new_users_in_one_pass_without_its_teacher(served_run, tmp_path):
    """``jaxmeta serve`` and ``jaxmeta recommend`` load a distilled amortised run like any run: the service's
    array path ranks with it, as Recommender.recommend does, after the teacher's folder is gone."""
    from jaxmeta.serve import NewUserRanker, Recommender

    teacher = tmp_path / "teacher"
    shutil.copytree(served_run, teacher, ignore=shutil.ignore_patterns("compile-cache"))
    run = tmp_path / "student"
    done = jaxmeta("train", "--data", "ml-100k", "--data-dir", real("ml-100k").parent, "--algo", "amortised",
                   "--teacher", teacher, "--distill-warm-start", "--steps", "20", "--num-buckets", "1", "--out", run,
                   "--quiet")
    assert done.returncode == 0, done.stderr
    shutil.rmtree(teacher)
    rec = Recommender.load(run)
    assert restore_run(run).config.algo == "amortised"
    ratings = [(1, 5.0), (50, 4.0), (100, 1.0), (181, 2.0)]
    [ranking] = NewUserRanker(rec, k=5).rank([tuple(zip(*ratings))], explain=True)
    table = pd.DataFrame({"user": "new", "item": [i for i, _ in ratings], "rating": [r for _, r in ratings]})
    expected = rec.recommend(table, k=5)
    assert ranking.items.tolist() == expected["item"].tolist()
    np.testing.assert_allclose(ranking.scores, expected["score"], rtol=1e-5, atol=1e-5)
    assert np.abs(ranking.influence).max() > 0  # the set encoder reads the ratings: they move the scores
