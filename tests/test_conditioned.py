"""Task-conditioned meta-learning (:mod:`jaxmeta.algorithms.conditioned`) against
independent references: the objective written plainly (a Python loop over users,
their real rows and the inner steps), central finite differences in float64,
MAML at initialisation, padding with NaN, and training on the synthetic data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import meta_grad, random_tasks, tiny_model
from test_gradients import central_differences, users_of

from jaxmeta import algorithms
from jaxmeta.algorithms.conditioned import conditioned
from jaxmeta.data import synthetic
from jaxmeta.models import Model, embedding_mlp
from jaxmeta.tasks import RaggedTasks, pad_tasks
from jaxmeta.train import BatchStream, fit

LR, K = 0.3, 2
SMALL = {"encoder_width": 4, "task_dim": 3}  # few encoder weights: finite differences over every one
FAST = ("body", "head")  # tiny_model's fast weights


def make(model, **options):
    return conditioned(model, **{"inner_optimizer": LR, "inner_steps": K, "outer_optimizer": optax.sgd(1.0),
                                 **SMALL, **options})


def film_on(state, seed, scale=0.5):
    """``state`` with random FiLM maps (they start at zero, where the encoder has no gradient), random
    encoder biases and a fresh ``optax.sgd(1.0)`` state, so that ``meta_grad`` reads the gradient."""
    rng = np.random.default_rng(seed)  # numpy: no compilation per leaf shape
    film = jax.tree.map(lambda x: jnp.asarray(scale * rng.normal(size=x.shape), x.dtype), state.hyper["film"])
    # The encoder's biases start at exactly 0: a row whose units are all dead then puts the next layer's
    # units exactly on ReLU's kink, where a central difference (slope 1/2) and jax (slope 0) disagree in
    # every weight before it. Nonzero biases keep every pre-activation off the kink.
    encoder = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(0.1 * rng.normal(size=x.shape), x.dtype) if path[-1].key == "b" else x,
        state.hyper["encoder"])
    hyper = {**state.hyper, "film": film, "encoder": encoder}
    return state._replace(hyper=hyper, opt_state=optax.sgd(1.0).init((state.params, hyper)))


# --------------------------------------------------------------------------- the plain reference


def reference_task_vector(encoder, features, y):
    """z of one user's real support rows: phi per row, mean, rho; zeros without rows."""
    if len(y) == 0:
        return jnp.zeros(encoder["task"][1]["b"].shape, features.dtype)
    h = jnp.concatenate([features, y[:, None]], axis=1)
    for layer in encoder["rows"]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"][None, :])
    hidden, last = encoder["task"]
    return jax.nn.relu(h.mean(axis=0) @ hidden["w"] + hidden["b"]) @ last["w"] + last["b"]


def reference_user(model, params, hyper, sx, sy, qx, *, steps, first_order=False):
    """One user's adapted fast weights and query predictions, written plainly."""
    features = model.stage.embed(params, sx) if model.stage is not None else sx.astype(sy.dtype)
    z = reference_task_vector(hyper["encoder"], features, sy)
    scale, shift = hyper["film"]["scale"], hyper["film"]["shift"]
    fast = {key: {"w": params[key]["w"] * (1 + z @ scale[key]["w"])[None, :] + (z @ shift[key]["w"])[None, :],
                  "b": params[key]["b"] * (1 + z @ scale[key]["b"]) + z @ shift[key]["b"]} for key in FAST}
    slow = {key: value for key, value in params.items() if key not in FAST}

    def support(fast):
        return jnp.mean((model.apply({**fast, **slow}, sx) - sy) ** 2)

    for _ in range(steps if len(sy) else 0):
        grads = jax.grad(support)(fast)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        fast = jax.tree.map(lambda p, g: p - LR * g, fast, grads)
    return fast, model.apply({**fast, **slow}, qx)


def reference(model, meta, users, **options):
    """The meta-objective (the mean query loss over users), and each user's adapted
    fast weights and query predictions."""
    params, hyper = meta
    adapted = [reference_user(model, params, hyper, sx, sy, qx, **options) for sx, sy, qx, _ in users]
    losses = [jnp.mean((predictions - qy) ** 2) for (_, predictions), (_, _, _, qy) in zip(adapted, users)]
    return sum(losses) / len(losses), adapted


@pytest.mark.parametrize("steps, first_order", [pytest.param(K, False, marks=pytest.mark.slow),
                                                pytest.param(K, True, marks=pytest.mark.slow),
                                                pytest.param(0, False, marks=pytest.mark.slow)])
def test_batch_equals_a_loop_over_users_and_finite_differences(steps, first_order):
    """Float64: the vmapped loss, adapted weights and predictions equal the plain per-user
    reference, and the meta-gradient (model, encoder and FiLM) equals its central finite
    differences (first order: its own gradient, a stop-gradient having no finite difference)."""
    with jax.enable_x64(True):
        model = tiny_model(jnp.float64, staged=True)
        tasks = random_tasks(3, seed=4, dtype=np.float64)
        batch = pad_tasks(tasks, dtype=np.float64)
        learner = make(model, inner_steps=steps, first_order=first_order)
        state = film_on(learner.init(jax.random.key(1)), 2)
        meta = (state.params, state.hyper)
        grads, metrics = meta_grad(learner, state, batch)
        users = users_of(tasks)

        def objective(m):
            return reference(model, m, users, steps=steps, first_order=first_order)

        value, per_user = jax.jit(objective)(meta)
        np.testing.assert_allclose(float(metrics["loss"]), float(value), rtol=1e-10)
        adapted = learner.adapt(state, batch)
        predictions = learner.apply_adapted(state, adapted, batch.query_x)  # adapt once, then score (serving)
        for u, (fast, want_predictions) in enumerate(per_user):
            np.testing.assert_allclose(predictions[u][: len(want_predictions)], want_predictions, rtol=1e-10)
            for key in FAST:
                for name in ("w", "b"):
                    np.testing.assert_allclose(adapted[key][name][u], fast[key][name], rtol=1e-10, atol=1e-13)

        if first_order:
            want, tol = jax.jit(jax.grad(lambda m: objective(m)[0]))(meta), {"rtol": 1e-9, "atol": 1e-12}
        else:
            want, tol = central_differences(lambda m: objective(m)[0], meta), {"rtol": 1e-6, "atol": 1e-8}
        assert jax.tree.structure(grads) == jax.tree.structure(want)
        for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
            np.testing.assert_allclose(got, ref, **tol)
        encoder_grads = jax.tree.leaves(grads[1]["encoder"])
        assert max(float(jnp.max(jnp.abs(g))) for g in encoder_grads) > 1e-4  # the encoder is trained


# --------------------------------------------------------------------------- padding, empty users, MAML


def dense_model() -> Model:
    """``x @ w + b + c`` on float rows ``[rows, 3]``, no input stage: the encoder reads the rows themselves."""

    def init(key):
        return {"w": jax.random.normal(key, (3,)), "b": jnp.zeros(()), "c": jnp.full((), 0.1)}

    return Model(init, lambda p, x: x @ p["w"] + p["b"] + p["c"], is_fast=lambda path: path[0] != "c")


def dense_tasks(num_users, seed=0):
    rng = np.random.default_rng(seed)

    def rows(n):
        return rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=n).astype(np.float32)

    return RaggedTasks(*(list(f) for f in zip(*[rows(2 + u) + rows(1 + u % 2) for u in range(num_users)])))


SETTINGS = {
    "raw_float_rows": (dense_model, {"feature_dim": 3}, lambda: dense_tasks(4)),  # NaN and inf at the encoder's input
    "ids_through_the_model_embeddings": (lambda: tiny_model(staged=True), {}, lambda: random_tasks(6, seed=1)),
}


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.isfinite(np.asarray(x)).all()
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("setting", [pytest.param(s, marks=[] if s == "raw_float_rows" else [pytest.mark.slow])
                                     for s in SETTINGS])
def test_padded_rows_holding_nan_and_padding_users_change_nothing(setting):
    make_model, options, make_tasks = SETTINGS[setting]
    tasks = make_tasks()
    clean = pad_tasks(tasks)
    padded = pad_tasks(tasks, support_size=clean.support_size + 3, query_size=clean.query_size + 2,
                       num_tasks=len(tasks) + 3)

    def dirty(x, mask, bad):
        keep = np.expand_dims(mask, tuple(range(mask.ndim, x.ndim)))
        return np.where(keep, x, np.ones_like(x) * (2 if x.dtype.kind == "i" else bad))  # ids: another valid one

    padded = padded._replace(support_x=dirty(padded.support_x, padded.support_mask, np.nan),
                             support_y=dirty(padded.support_y, padded.support_mask, np.inf),
                             query_x=dirty(padded.query_x, padded.query_mask, -np.inf),
                             query_y=dirty(padded.query_y, padded.query_mask, np.nan))
    learner = make(make_model(), **options)
    state = film_on(learner.init(jax.random.key(0)), 1)

    def real(tree):
        return jax.tree.map(lambda a: a[: len(tasks)], tree)

    assert_trees_close(meta_grad(learner, state, padded), meta_grad(learner, state, clean))
    rows = clean.query_mask
    np.testing.assert_allclose(real(learner.predict(state, padded))[:, : clean.query_size][rows],
                               learner.predict(state, clean)[rows], rtol=1e-5, atol=1e-6)


def test_a_user_without_support_rows_is_neither_modulated_nor_adapted():
    """z = 0 without support rows: the meta-learned weights as they are, the meta-gradient
    of the unadapted model's query loss, and none for the encoder or the FiLM maps."""
    model = tiny_model(staged=True)
    tasks = random_tasks(4, seed=3)
    sx, sy = list(tasks.support_x), list(tasks.support_y)
    sx[0], sy[0] = sx[0][:0], sy[0][:0]
    batch = pad_tasks(RaggedTasks(sx, sy, tasks.query_x, tasks.query_y))
    learner = make(model)
    state = film_on(learner.init(jax.random.key(0)), 1)
    fast = algorithms.split_fast(state.params, model.is_fast)[0]
    for got, want in zip(jax.tree.leaves(learner.adapt(state, batch)), jax.tree.leaves(fast), strict=True):
        np.testing.assert_array_equal(got[0], want)
    alone = pad_tasks(RaggedTasks(sx[:1], sy[:1], tasks.query_x[:1], tasks.query_y[:1]), support_size=4, num_tasks=3)
    (params_grad, hyper_grad), metrics = meta_grad(learner, state, alone)
    assert int(metrics["tasks"]) == 1

    def unadapted_loss(params):
        return jnp.mean((model.apply(params, tasks.query_x[0]) - tasks.query_y[0]) ** 2)

    assert_trees_close(params_grad, jax.grad(unadapted_loss)(state.params), rtol=1e-4, atol=1e-6)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(hyper_grad))


@pytest.mark.parametrize("staged", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["staged", "plain"])
def test_at_initialisation_it_is_maml(staged):
    """FiLM starts at zero: the same parameters, loss, meta-gradient of the model's
    parameters and predictions as MAML (in closed form on the staged model); the
    encoder has no gradient yet, the FiLM maps have."""
    model, batch = tiny_model(staged=staged), pad_tasks(random_tasks(5, seed=2))
    options = {"inner_optimizer": LR, "inner_steps": K, "outer_optimizer": optax.sgd(1.0)}
    mine, theirs = conditioned(model, feature_dim=4 if staged else 2, **options), algorithms.maml(model, **options)
    state, maml_state = mine.init(jax.random.key(0)), theirs.init(jax.random.key(0))
    assert_trees_close(state.params, maml_state.params, rtol=0, atol=0)
    (params_grad, hyper_grad), metrics = meta_grad(mine, state, batch)
    (maml_grad, _), maml_metrics = meta_grad(theirs, maml_state, batch)
    assert_trees_close(params_grad, maml_grad)
    assert_trees_close(metrics, maml_metrics)
    assert_trees_close(mine.predict(state, batch), theirs.predict(maml_state, batch))
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(hyper_grad["encoder"]))
    assert min(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(hyper_grad["film"])) > 1e-6


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("steps", [2, pytest.param(0, marks=pytest.mark.slow)])
def test_training_on_synthetic_data_lowers_the_query_loss_and_compiles_once(steps):
    """40 outer steps on 1,000 users lower the new users' query loss after adaptation
    (measured: 2.48 -> 1.50 with 2 inner steps, 2.47 -> 1.97 with none)."""
    data = synthetic.generate(num_train_users=1000, num_new_users=64, seed=0)
    base = embedding_mlp(data.vocab_sizes, embed_dim=4, hidden=(16,), output_bias=data.mean_rating)
    traces = []

    def counting_apply(params, x):
        traces.append(1)  # runs only while JAX traces
        return base.apply(params, x)

    learner = conditioned(base._replace(apply=counting_apply), inner_steps=steps, inner_optimizer=0.1,
                          outer_optimizer=optax.adam(1e-2), encoder_width=16, task_dim=8)
    new_users = pad_tasks(data.new)
    start = learner.init(jax.random.key(0))
    before = float(learner.evaluate(start, new_users)["query_loss_after"])
    after_first = []

    def hook(tick):
        if tick.step == 1:
            after_first.append(len(traces))

    state = fit(learner, BatchStream(data.train, batch_size=32, num_buckets=1, seed=0), steps=40, hooks=[hook],
                progress=False)
    assert len(traces) == after_first[0], "later same-shaped steps re-traced the model"
    after = float(learner.evaluate(state, new_users)["query_loss_after"])
    assert after < 0.85 * before, (before, after)
    film = jax.tree.leaves(state.hyper["film"])
    assert max(float(jnp.max(jnp.abs(f))) for f in film) > 1e-3  # the conditioning was learned


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: conditioned(tiny_model(), inner_steps=-1), "conditioned: inner_steps=-1: pass a whole number >= 0"),
        (lambda: conditioned(tiny_model()), "conditioned: feature_dim=None"),  # no stage: the width is unknown
        (lambda: conditioned(tiny_model(staged=True), backend="pallas"), "conditioned: backend='pallas' does not"),
        (lambda: conditioned(tiny_model(staged=True), task_dim=0), "task_dim=0"),
        (lambda: conditioned(tiny_model(staged=True), encoder_width=1.5), "encoder_width=1.5"),
    ],
)
def test_bad_options_raise_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_a_wrong_feature_dim_is_named_when_the_step_is_traced():
    learner = conditioned(tiny_model(), feature_dim=5)
    with pytest.raises(ValueError, match="a support row has 2 features.*pass feature_dim=2"):
        learner.step(learner.init(jax.random.key(0)), pad_tasks(random_tasks(2)))


def test_zero_inner_steps_at_initialisation_is_the_unadapted_model():
    learner = make(tiny_model(staged=True), inner_steps=0)
    batch = pad_tasks(random_tasks(3, seed=5))
    state = learner.init(jax.random.key(0))
    result = learner.evaluate(state, batch)
    np.testing.assert_allclose(result["query_loss_after"], result["query_loss_before"], rtol=1e-6)
    fast = algorithms.split_fast(state.params, learner.is_fast)[0]
    for got, want in zip(jax.tree.leaves(learner.adapt(state, batch)), jax.tree.leaves(fast), strict=True):
        np.testing.assert_array_equal(got, np.broadcast_to(want, got.shape))
