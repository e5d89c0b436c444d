"""Every algorithm, table-driven: batching over users equals a per-user loop,
chunking and padding change nothing, the step compiles once, every factory
takes the same options, plain SGD takes the fast path however it is given, and
a user without support rows is predicted unadapted, never NaN.

The per-user loop here runs the library's step on one user at a time; the
independent references (plain Python loops over users and inner steps, finite
differences, hand-computed and closed-form updates) are in test_gradients.py.
"""

from __future__ import annotations

import importlib
import inspect
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmeta import algorithms
from jaxmeta.algorithms._defaults import DEFAULT_OUTER_OPTIMIZER, plain_sgd_rate
from jaxmeta.models import Model, embedding_mlp
from jaxmeta.tasks import RaggedTasks, pad_tasks

from conftest import ALGORITHMS, VOCAB, learner_factories, meta_grad, random_tasks, tiny_model

TOL = dict(rtol=1e-5, atol=1e-5)


def make(name, **extra):
    return learner_factories(optax.sgd(1.0), **extra)[name](tiny_model())


def assert_trees_close(a, b, **tol):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **(tol or TOL))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_batched_step_equals_python_loop_over_users(name, tasks, batch):
    learner = make(name)
    state = learner.init(jax.random.key(0))
    grads, metrics = meta_grad(learner, state, batch)
    one = lambda u: pad_tasks(tasks.take([u]), support_size=batch.support_size, query_size=batch.query_size)  # noqa: E731
    singles = [meta_grad(learner, state, one(u)) for u in range(len(tasks))]
    loop_grads = jax.tree.map(lambda *g: sum(g) / len(g), *[g for g, _ in singles])
    assert_trees_close(grads, loop_grads)
    assert float(metrics["tasks"]) == len(tasks)
    for key in metrics:
        if key != "tasks":
            np.testing.assert_allclose(metrics[key], np.mean([m[key] for _, m in singles]), **TOL)


# maml (second order), reptile (its own update) and no_adaptation (no inner loop) in the default suite;
# every other algorithm with -m slow: chunking is the engine's, not the algorithm's.
@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in ("maml", "reptile", "no_adaptation")
                                               else [pytest.mark.slow]) for n in ALGORITHMS])
def test_chunked_equals_unchunked(name, batch):
    whole, chunked = make(name), make(name, chunk_size=3)  # 7 users: chunks of 3, 3 and 1 (+2 padding)
    state = whole.init(jax.random.key(0))
    assert_trees_close(meta_grad(whole, state, batch), meta_grad(chunked, state, batch))
    assert_trees_close(whole.evaluate(state, batch), chunked.evaluate(state, batch))
    assert_trees_close(whole.adapt(state, batch), chunked.adapt(state, batch))
    assert_trees_close(whole.predict(state, batch), chunked.predict(state, batch))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_padding_rows_and_users_change_nothing(name, tasks, batch):
    learner = make(name)
    state = learner.init(jax.random.key(0))
    padded = pad_tasks(tasks, support_size=batch.support_size + 3, query_size=batch.query_size + 2, num_tasks=11)
    # Garbage in padded rows must not leak either: fill them with other valid ids and NaN targets.
    fill = lambda a, m: np.where(np.expand_dims(m, tuple(range(m.ndim, a.ndim))), a, np.ones_like(a) * (2 if a.dtype.kind == "i" else np.nan))  # noqa: E731
    padded = padded._replace(
        support_x=fill(padded.support_x, padded.support_mask),
        support_y=fill(padded.support_y, padded.support_mask),
        query_x=fill(padded.query_x, padded.query_mask),
        query_y=fill(padded.query_y, padded.query_mask),
    )
    # Padding changes float32 summation order; implicit MAML's conjugate gradient
    # amplifies that rounding to ~1e-5 (in float64 the two agree to 1e-13).
    tol = dict(rtol=1e-4, atol=5e-5) if name == "imaml" else TOL
    assert_trees_close(meta_grad(learner, state, batch), meta_grad(learner, state, padded), **tol)
    assert_trees_close(learner.evaluate(state, batch), learner.evaluate(state, padded), **tol)
    real = lambda tree: jax.tree.map(lambda a: a[: len(tasks)], tree)  # noqa: E731
    assert_trees_close(learner.adapt(state, batch), real(learner.adapt(state, padded)))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_no_recompilation_on_later_steps(name):
    traces = []
    base = tiny_model()

    def counting_apply(params, x):
        traces.append(1)  # runs only while JAX traces
        return base.apply(params, x)

    learner = learner_factories(optax.adam(1e-2))[name](base._replace(apply=counting_apply))
    state = learner.init(jax.random.key(0))
    batches = [pad_tasks(random_tasks(5, seed=s), support_size=6, query_size=4) for s in range(4)]
    state, _ = learner.step(state, batches[0])
    learner.evaluate(state, batches[0])
    after_first = len(traces)
    for b in batches[1:]:
        state, metrics = learner.step(state, b)
        learner.evaluate(state, b)
    assert len(traces) == after_first, "later same-shaped steps re-traced the model"
    assert int(state.step) == 4 and np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_adapt_returns_per_user_fast_weights(name, batch):
    learner = make(name)
    state = learner.init(jax.random.key(0))
    fast = learner.adapt(state, batch)
    assert fast["emb"] == [None, None]  # slow weights are never copied per user
    head = fast["head"]["w"]
    assert head.shape == (batch.num_tasks,) + state.params["head"]["w"].shape
    moved = float(jnp.max(jnp.abs(head - state.params["head"]["w"][None])))
    if name == "no_adaptation":
        assert moved == 0.0
    else:
        assert moved > 1e-4
    if name == "anil":
        assert fast["body"] == {"w": None, "b": None}
    else:
        assert fast["body"]["w"].shape[0] == batch.num_tasks


def test_evaluate_before_is_the_unadapted_model(batch):
    learner = make("maml")
    state = learner.init(jax.random.key(0))
    metrics = learner.evaluate(state, batch)
    model = tiny_model()
    per_user = [float(jnp.mean((model.apply(state.params, qx) - qy) ** 2)) for qx, qy in _query(batch)]
    np.testing.assert_allclose(metrics["query_loss_before"], np.mean(per_user), rtol=1e-5)
    assert float(metrics["query_loss_after"]) != float(metrics["query_loss_before"])


def dense_model() -> Model:
    """``x @ w + b`` on float inputs ``[rows, 3]``; all weights fast but a slow offset."""

    def init(key):
        return {"w": jax.random.normal(key, (3,)), "b": jnp.zeros(()), "c": jnp.full((), 0.1)}

    return Model(init, lambda p, x: x @ p["w"] + p["b"] + p["c"], is_fast=lambda path: path[0] != "c", is_head=lambda path: path[0] == "b")


@pytest.mark.parametrize("name", ALGORITHMS)
def test_non_finite_padded_inputs_and_targets_do_not_leak(name):
    rng = np.random.default_rng(0)
    rows = lambda n: (rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=n).astype(np.float32))  # noqa: E731
    parts = [rows(2 + u) + rows(1 + u % 2) for u in range(4)]
    tasks = RaggedTasks(*(list(f) for f in zip(*parts)))
    clean = pad_tasks(tasks, num_tasks=5)
    dirty = clean._replace(
        support_x=np.where(clean.support_mask[..., None], clean.support_x, np.nan),
        support_y=np.where(clean.support_mask, clean.support_y, np.inf),
        query_x=np.where(clean.query_mask[..., None], clean.query_x, -np.inf),
        query_y=np.where(clean.query_mask, clean.query_y, np.nan),
    )
    learner = learner_factories(optax.sgd(1.0))[name](dense_model())
    state = learner.init(jax.random.key(0))
    got, want = meta_grad(learner, state, dirty), meta_grad(learner, state, clean)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(got))
    assert_trees_close(got, want)
    assert_trees_close(learner.evaluate(state, dirty), learner.evaluate(state, clean))


@pytest.mark.parametrize(
    "inner",
    [
        pytest.param(optax.sgd(0.3), id="sgd"),
        pytest.param(optax.adam(0.1), id="adam", marks=pytest.mark.slow),
        # no derivative at a zero gradient
        pytest.param(optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.3)), id="clip_by_global_norm"),
    ],
)
def test_any_inner_optimizer_with_padding_users_and_chunks(inner, tasks, batch):
    """Padding users and chunk padding have zero support gradients; second-order
    meta-gradients through a non-smooth inner optimizer must not turn NaN."""
    make = lambda **kw: algorithms.maml(tiny_model(), inner_optimizer=inner, inner_steps=2, outer_optimizer=optax.sgd(1.0), **kw)  # noqa: E731
    learner, chunked = make(), make(chunk_size=3)
    state = learner.init(jax.random.key(0))
    want = meta_grad(learner, state, batch)
    padded = pad_tasks(tasks, num_tasks=9)
    for got in (meta_grad(learner, state, padded), meta_grad(chunked, state, batch), meta_grad(chunked, state, padded)):
        assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(got))
        assert_trees_close(got, want)


def _query(batch):
    return [
        (np.asarray(x)[m], np.asarray(y)[m])
        for x, y, m in zip(batch.query_x, batch.query_y, batch.query_mask)
    ]


def test_binary_cross_entropy_loss_trains_clicks():
    model = embedding_mlp([3, 5], embed_dim=2, hidden=(4,))
    tasks = random_tasks(6, seed=3)
    clicks = tasks.__class__(
        tasks.support_x, [(y > 0).astype(np.float32) for y in tasks.support_y],
        tasks.query_x, [(y > 0).astype(np.float32) for y in tasks.query_y],
    )
    learner = algorithms.maml(model, loss="bce", outer_optimizer=optax.adam(1e-2))
    state = learner.init(jax.random.key(0))
    batch = pad_tasks(clicks)
    first = None
    for _ in range(30):
        state, metrics = learner.step(state, batch)
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < first
    assert np.isclose(first, np.log(2), atol=0.3)  # logits start near 0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: algorithms.maml(tiny_model(), inner_steps=0), "inner_steps=0"),
        (lambda: algorithms.maml(tiny_model(), chunk_size=0), "chunk_size=0"),
        (lambda: algorithms.anil(Model(lambda k: {}, lambda p, x: x)), "is_head"),
        (lambda: algorithms.imaml(tiny_model(), reg=0.0), "reg=0.0"),
        (lambda: algorithms.maml(tiny_model(), loss="l1"), "'l1'"),
    ],
)
def test_bad_arguments_raise_with_the_value_and_a_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- one set of options

FACTORIES = {**algorithms.META_LEARNERS, **algorithms.BASELINES}
COMMON = {"inner_optimizer": 0.03, "inner_steps": 5, "outer_optimizer": DEFAULT_OUTER_OPTIMIZER, "loss": "mse",
          "chunk_size": None, "is_fast": None, "backend": "xla"}
NO_INNER_LOOP = ("inner_optimizer", "inner_steps", "is_fast", "backend")  # options no_adaptation refuses


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_every_factory_lists_the_common_keywords_with_the_common_defaults(name):
    params = inspect.signature(FACTORIES[name]).parameters
    assert next(iter(params)) == "model"
    assert all(p.kind is p.KEYWORD_ONLY for key, p in params.items() if key != "model"), "no **kwargs, no positionals"
    for key, default in COMMON.items():
        closed = name == "no_adaptation" or name in algorithms.CLOSED_FORM
        want = None if closed and key in NO_INNER_LOOP and key != "is_fast" or (
            name == "no_adaptation" and key == "is_fast") else default
        assert params[key].default is want or params[key].default == want, (key, params[key].default)
    for key in ("first_order", "remat"):
        if key in params:
            assert params[key].default is (None if (name, key) == ("fomaml", "first_order") else False)
    assert ("first_order" in params) == (name in ("maml", "fomaml", "anil", "metasgd", "conditioned"))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: algorithms.fomaml(tiny_model(), first_order=True), "fomaml: first_order=True does not apply"),
        (lambda: algorithms.fomaml(tiny_model(), first_order=False), "fomaml: first_order=False does not apply"),
        (lambda: algorithms.anil(tiny_model(), is_fast=lambda path: True), "anil: is_fast=.* does not apply"),
        (lambda: algorithms.no_adaptation(tiny_model(), inner_optimizer=0.03), "no_adaptation: inner_optimizer=0.03 "),
        (lambda: algorithms.no_adaptation(tiny_model(), inner_steps=5), "no_adaptation: inner_steps=5 does not apply"),
        (lambda: algorithms.no_adaptation(tiny_model(), is_fast=lambda path: True), "no_adaptation: is_fast="),
        (lambda: algorithms.no_adaptation(tiny_model(), backend="xla"), "no_adaptation: backend='xla' does not"),
        (lambda: algorithms.metasgd(tiny_model(), backend="pallas"), "metasgd: backend='pallas' does not apply"),
        (lambda: algorithms.imaml(tiny_model(), backend="pallas"), "imaml: backend='pallas' does not apply"),
        (lambda: algorithms.metasgd(tiny_model(), inner_optimizer=optax.adam(0.1)), "metasgd: inner_optimizer is an"),
        (lambda: algorithms.reptile(tiny_model(), backend="gpu"), "reptile: backend='gpu'"),
        (lambda: algorithms.finetune(tiny_model(), inner_optimizer="adam"), "finetune: inner_optimizer='adam'"),
        (lambda: algorithms.imaml(tiny_model(), cg_steps=0), r"cg_steps=0: .*\(imaml's"),
    ],
)
def test_an_option_that_does_not_apply_raises_one_value_error_naming_it(call, match):
    with pytest.raises(ValueError, match=match):
        call()


INNER_LOOP = sorted(name for name in FACTORIES if name != "no_adaptation" and name not in algorithms.CLOSED_FORM)


ZERO_INNER_STEPS = ("conditioned",)  # conditioning on the support set alone is a method: tests/test_conditioned.py


@pytest.mark.parametrize("name, option, value", [
    (name, option, value)
    for name in INNER_LOOP
    for option, value in (("inner_steps", 0), ("inner_optimizer", -0.1), ("inner_optimizer", 0))
    if not (name in ZERO_INNER_STEPS and (option, value) == ("inner_steps", 0))
])
def test_bad_inner_options_are_refused_by_every_factory(name, option, value):
    with pytest.raises(ValueError, match=f"{option}={value}") as error:
        FACTORIES[name](tiny_model(), **{option: value})
    assert name in str(error.value)


@pytest.mark.parametrize("name", ["metasgd", "imaml", "conditioned"])
def test_auto_backend_is_xla_where_there_is_no_kernel(name):
    FACTORIES[name](tiny_model(staged=True), backend="auto")


# --------------------------------------------------------------------------- plain SGD, however it is given


def fast_of(model, is_fast=None):
    return algorithms.split_fast(model.param_shapes(), model.is_fast if is_fast is None else is_fast)[0]


PROBES = {
    "sgd": (optax.sgd(0.3), 0.3),
    "identity_then_sgd": (optax.chain(optax.identity(), optax.sgd(0.3)), 0.3),
    "scale": (optax.scale(-0.3), 0.3),
    "masked_everywhere": (optax.masked(optax.sgd(0.3), lambda params: jax.tree.map(lambda _: True, params)), 0.3),
    "masked_matrices": (optax.masked(optax.sgd(0.3), lambda params: jax.tree.map(lambda x: x.ndim > 1, params)), None),
    "momentum": (optax.sgd(0.3, momentum=0.9), None),
    "momentum_0": (optax.sgd(0.3, momentum=0.0), None),  # a momentum trace in its state, though it changes nothing
    "schedule": (optax.sgd(optax.exponential_decay(0.3, 10, 0.5)), None),  # a step count in its state
    "adam": (optax.adam(0.3), None),
    "clip_by_global_norm": (optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.3)), None),
    "clip_by_global_norm_1e6": (optax.chain(optax.clip_by_global_norm(1e6), optax.sgd(0.3)), None),  # the 1e10 probe
    "clip": (optax.chain(optax.clip(1.0), optax.sgd(0.3)), None),
    "weight_decay": (optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.3)), None),
    "sign": (optax.chain(optax.scale_by_sign(), optax.sgd(0.3)), None),
    "normalised": (optax.chain(optax.normalize_by_update_norm(), optax.sgd(0.3)), None),
    "nonnegative": (optax.chain(optax.sgd(0.3), optax.keep_params_nonnegative()), None),
    "ascent": (optax.scale(0.3), None),
}


@pytest.mark.parametrize("name", PROBES)
def test_plain_sgd_is_recognised_by_probing(name):
    transformation, rate = PROBES[name]
    got = plain_sgd_rate(transformation, fast_of(tiny_model()))
    assert got == (None if rate is None else float(np.float32(rate)))  # float32: the rate optax multiplies by
    with jax.enable_x64(True):  # float64: the rate exactly
        assert plain_sgd_rate(transformation, fast_of(tiny_model(jnp.float64))) == rate


@pytest.fixture
def inner_loops(monkeypatch):
    """Counts the generic inner loops (``inner_adapt``) and the closed-form ones
    (``inner_adapt_dense``) that the algorithms trace, through every module of
    jaxmeta.algorithms that calls them."""
    calls = {"generic": 0, "closed_form": 0}

    def counted(fn, kind):
        def run(*args, **kwargs):
            calls[kind] += 1  # runs only while JAX traces
            return fn(*args, **kwargs)

        return run

    importlib.import_module("jaxmeta.algorithms")
    for module in [m for name, m in sys.modules.items() if name.startswith("jaxmeta.algorithms.")]:
        for fn, kind in (("inner_adapt", "generic"), ("inner_adapt_dense", "closed_form")):
            if hasattr(module, fn):
                monkeypatch.setattr(module, fn, counted(getattr(module, fn), kind))
    return calls


MODELS = {
    "staged": lambda: tiny_model(staged=True),  # a fast dense layer after the embeddings, then a head
    "linear_head": lambda: embedding_mlp(VOCAB, embed_dim=2, hidden=()),  # one layer: dense on the features and head
}


@pytest.mark.parametrize(
    "name, model, closed_form",
    [
        ("maml", "staged", True),
        ("maml_remat", "staged", True),
        ("fomaml", "staged", True),
        ("anil", "linear_head", True),
        ("anil", "staged", False),  # the head is not the dense layer on the features
        ("reptile", "staged", False),
        ("metasgd", "staged", False),  # per-parameter rates: no closed form
        ("imaml", "staged", False),  # a proximal inner loss: no closed form
        ("finetune", "staged", False),
    ],
)
def test_plain_sgd_as_a_number_or_as_optax_sgd_is_one_computation(name, model, closed_form, inner_loops):
    """``inner_optimizer=0.3`` and ``optax.sgd(0.3)`` build the same learner: the
    same step, metrics and predictions, through the same inner loops, and the
    closed form where the algorithm has one (no generic loop is even traced)."""
    batch = pad_tasks(random_tasks(5, seed=2))

    def run(inner):
        inner_loops.update(generic=0, closed_form=0)
        learner = learner_factories(optax.adam(1e-2), inner_optimizer=inner)[name](MODELS[model]())
        state, metrics = learner.step(learner.init(jax.random.key(0)), batch)
        return (state.params, state.hyper, metrics, learner.predict(state, batch)), dict(inner_loops)

    number, number_loops = run(0.3)
    sgd, sgd_loops = run(optax.sgd(0.3))
    assert_trees_close(number, sgd, rtol=1e-6, atol=1e-7)
    assert number_loops == sgd_loops
    if closed_form:
        assert number_loops["closed_form"] > 0 and number_loops["generic"] == 0, number_loops
    else:
        assert number_loops["generic"] > 0 and number_loops["closed_form"] == 0, number_loops


def test_the_default_inner_optimizer_is_plain_sgd_in_closed_form(inner_loops):
    learner = algorithms.maml(tiny_model(staged=True), inner_steps=2)
    learner.step(learner.init(jax.random.key(0)), pad_tasks(random_tasks(3, seed=0)))
    assert inner_loops["closed_form"] > 0 and inner_loops["generic"] == 0, inner_loops


# --------------------------------------------------------------------------- users without support rows

INNER_OPTIMIZERS = {
    "number": 0.3,
    "optax_sgd": optax.sgd(0.3),
    "clip_by_global_norm": optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.3)),  # no derivative at 0
    "adam": optax.adam(0.1, eps_root=1e-8),
}
EMPTY = 2  # the user without support rows


ZERO_SUPPORT_CASES = [
    (name, inner)
    for name in ALGORITHMS
    for inner in ((None,) if name == "no_adaptation" else INNER_OPTIMIZERS)
    if not (name == "metasgd" and inner in ("clip_by_global_norm", "adam"))  # Meta-SGD's is its own SGD (refused above)
]


# The default suite runs the default inner optimizer and the one with no derivative at a zero gradient for
# every algorithm; optax.sgd (one computation with the number, tested above) and Adam run with -m slow.
ZERO_SUPPORT_PARAMS = [pytest.param(n, i, id=f"{n}-{i}",
                                    marks=[pytest.mark.slow] if i in ("optax_sgd", "adam") else [])
                       for n, i in ZERO_SUPPORT_CASES]


@pytest.mark.parametrize("name, inner", ZERO_SUPPORT_PARAMS)
def test_a_user_without_support_rows_is_predicted_unadapted_and_never_nan(name, inner):
    """A real user (query rows) with no support rows, after a step has moved the
    parameters: finite loss, meta-gradient and predictions, the unadapted
    weights and predictions, and (but in Reptile, which trains on the query rows
    too) the meta-gradient of the unadapted model's query loss. The model has a
    fast dense layer, so plain SGD runs in closed form."""
    model = tiny_model(staged=True)
    tasks = random_tasks(5, seed=3)
    sx, sy = list(tasks.support_x), list(tasks.support_y)
    sx[EMPTY], sy[EMPTY] = sx[EMPTY][:0], sy[EMPTY][:0]
    tasks = RaggedTasks(sx, sy, tasks.query_x, tasks.query_y)
    batch = pad_tasks(tasks, support_size=6, query_size=4)
    alone = pad_tasks(tasks.take([EMPTY]), support_size=6, query_size=4, num_tasks=5)
    others = pad_tasks(random_tasks(5, seed=4), support_size=6, query_size=4)
    assert not batch.support_mask[EMPTY].any() and batch.query_mask[EMPTY].any()

    options = {} if inner is None else {"inner_optimizer": INNER_OPTIMIZERS[inner]}
    learner = learner_factories(optax.sgd(1.0), **options)[name](model)
    start = learner.init(jax.random.key(0))
    state, _ = learner.step(start, others)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params, start.params)
    assert max(jax.tree.leaves(moved)) > 1e-3

    grads, metrics = meta_grad(learner, state, batch)
    finite = lambda tree: all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(tree))  # noqa: E731
    assert finite(grads) and finite(metrics)
    predictions = learner.predict(state, batch)
    assert finite(predictions)
    rows = batch.query_mask[EMPTY]
    unadapted = model.apply(state.params, batch.query_x[EMPTY])
    np.testing.assert_allclose(predictions[EMPTY][rows], unadapted[rows], rtol=1e-5, atol=1e-6)
    initial = algorithms.split_fast(state.params, learner.is_fast)[0]
    adapted = learner.adapt(state, batch)
    for got, want in zip(jax.tree.leaves(adapted), jax.tree.leaves(initial), strict=True):
        np.testing.assert_array_equal(got[EMPTY], want)

    (params_grad, hyper_grad), metrics = meta_grad(learner, state, alone)
    assert finite((params_grad, hyper_grad)) and int(metrics["tasks"]) == 1
    if name != "reptile":
        def query_loss(params):  # the unadapted model's mean squared error on the user's query rows
            errors = jnp.where(rows, model.apply(params, alone.query_x[0]) - alone.query_y[0], 0)
            return jnp.sum(errors**2) / rows.sum()

        assert_trees_close(params_grad, jax.grad(query_loss)(state.params), rtol=1e-4, atol=1e-6)
        assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(hyper_grad))  # Meta-SGD's rates
