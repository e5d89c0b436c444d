"""The Pallas kernels (``jaxmeta.kernels``) against their jnp references, and the
kernel backend of the engine against its XLA path.

On a machine without a GPU the kernels run in Pallas' interpret mode: the same
kernel body, executed as XLA operations. Shapes here are small (interpret mode is
slow); a test that the kernel lowers through Triton for a GPU runs everywhere.
"""

from __future__ import annotations

import doctest
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import meta_grad, random_tasks, tiny_model
from jax.experimental import pallas as pl

from jaxmeta import algorithms
from jaxmeta.algorithms._core import kernel_adapter
from jaxmeta.data.features import FieldSpec
from jaxmeta.kernels import adapt as kernel
from jaxmeta.kernels import fused_adapt, fused_adapt_reference, fused_adapt_task
from jaxmeta.kernels.reference import adapt_one, mlp
from jaxmeta.losses import squared_error
from jaxmeta.models import embedding_mlp, melu
from jaxmeta.tasks import TaskBatch, pad_tasks

LR = 0.05
FEATURES, HIDDEN, SUPPORT, QUERY = 24, (16, 12), 7, 5
BLOCK = 8  # users per program: 11 users are a block and 3


def rel_max(a, b) -> float:
    """Largest absolute difference over the largest absolute value of the reference."""
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def rel_norm(a, b) -> float:
    return float(jnp.linalg.norm(jnp.ravel(a - b)) / jnp.linalg.norm(jnp.ravel(b)))


def problem(users: int, seed: int, *, garbage: bool = True):
    """Fresh random users: ragged support sizes 0..SUPPORT (some users have none), NaN in
    the masked support rows and targets, and an MLP ``24 -> 16 -> 12 -> 1``."""
    rng = np.random.default_rng(seed)
    widths = (FEATURES, *HIDDEN, 1)
    keys = jax.random.split(jax.random.key(seed), 2 * len(widths))
    layers = [{"w": jax.random.normal(keys[2 * i], (n_in, n_out)) * (2 / n_in) ** 0.5,
               "b": 0.1 * jax.random.normal(keys[2 * i + 1], (n_out,))}
              for i, (n_in, n_out) in enumerate(itertools.pairwise(widths))]
    layers[-1]["b"] = layers[-1]["b"] + 3.0
    sizes = rng.integers(1, SUPPORT + 1, users)
    sizes[0], sizes[-1] = SUPPORT, 0 if users > 1 else SUPPORT  # a full user and, with company, an empty one
    mask = np.arange(SUPPORT)[None, :] < sizes[:, None]
    sx = rng.normal(size=(users, SUPPORT, FEATURES)) / FEATURES**0.5
    sy = 3 + rng.normal(size=(users, SUPPORT))
    if garbage:
        sx, sy = np.where(mask[..., None], sx, np.nan), np.where(mask, sy, np.nan)
    qx = rng.normal(size=(users, QUERY, FEATURES)) / FEATURES**0.5
    arrays = (jnp.asarray(sx, jnp.float32), jnp.asarray(sy, jnp.float32), jnp.asarray(mask),
              jnp.asarray(qx, jnp.float32))
    return arrays, layers


def outputs(out) -> list:
    return jax.tree.leaves((out[0], out[1], out[2]))


def kernel_and_reference(arrays, layers, **options):
    kernel_fn = jax.jit(lambda *a: fused_adapt(*a, layers, lr=LR, block_users=BLOCK, **options))
    reference_fn = jax.jit(lambda *a: fused_adapt_reference(*a, layers, lr=LR, steps=options["steps"]))
    return kernel_fn(*arrays), reference_fn(*arrays)


@pytest.mark.parametrize("users, steps", [(1, 5), (7, 1), (BLOCK + 3, 5)])
def test_kernel_equals_reference_in_float32(users, steps):
    arrays, layers = problem(users, seed=users * 10 + steps)
    got, want = kernel_and_reference(arrays, layers, steps=steps)
    assert got.layers[0]["w"].shape == (users, FEATURES, HIDDEN[0]) and got.layers[-1]["w"].shape == (users, 12, 1)
    assert got.predictions.shape == (users, QUERY) and got.losses.shape == (users, steps)
    for a, b in zip(outputs(got), outputs(want), strict=True):
        assert a.shape == b.shape and bool(jnp.isfinite(a).all())
        assert rel_max(a, b) < 1e-5
    # Users without support rows keep the initial weights (and their losses are 0).
    empty = ~np.asarray(arrays[2]).any(axis=1)
    for layer, init in zip(got.layers, layers):
        np.testing.assert_array_equal(np.asarray(layer["w"])[empty], np.broadcast_to(init["w"], layer["w"][empty].shape))
    assert users == 1 or empty.any()


def test_bfloat16_inputs_within_a_percent():
    # Rounding the features to bfloat16 moves a bias by about as much in absolute terms
    # as it moves the weights, which is a lot relative to a bias near zero (ReLU units
    # switch on or off): the f32 reference on bfloat16-rounded inputs moves as much. So
    # each layer's weights are compared as one (w, b) vector.
    arrays, layers = problem(BLOCK + 3, seed=5)
    got, f32 = kernel_and_reference(arrays, layers, steps=5, compute_dtype=jnp.bfloat16)
    rounded = jax.jit(lambda *a: fused_adapt_reference(*a, layers, lr=LR, steps=5, compute_dtype=jnp.bfloat16))
    for want in (f32, rounded(*arrays)):
        for a, b in zip(got.layers, want[0], strict=True):
            assert rel_norm(jnp.concatenate([a["w"].ravel(), a["b"].ravel()]),
                            jnp.concatenate([b["w"].ravel(), b["b"].ravel()])) < 1e-2
        assert rel_norm(got.predictions, want[1]) < 1e-2 and rel_norm(got.losses, want[2]) < 1e-2
    assert 0 < rel_max(got.predictions, f32[1])  # the option changes something


@pytest.mark.parametrize("with_weights", [True, False])
def test_every_output_element_is_written(with_weights):
    # The outputs start as NaN (aliased input buffers); every element, padding included,
    # must be overwritten with a finite value.
    arrays, layers = problem(BLOCK + 3, seed=3)
    cfg = kernel._config(LR, 5, BLOCK, jnp.float32, with_weights, None, 8)
    *padded, kernel_layers = kernel.pad(*arrays, layers, cfg=cfg)
    raw = jax.jit(lambda *a: kernel.launch(*a, cfg=cfg, poison=True))(*padded, kernel_layers)
    assert len(raw) == 2 + (2 * len(layers) if with_weights else 0) and raw[0].shape[0] == 2 * BLOCK
    for out in raw:
        assert bool(jnp.isfinite(out).all())
    got = kernel._unpad(raw, BLOCK + 3, QUERY, layers, cfg)
    want = jax.jit(lambda *a: fused_adapt_reference(*a, layers, lr=LR, steps=5))(*arrays)
    assert (got.layers is None) != with_weights
    assert rel_max(got.predictions, want[1]) < 1e-5 and rel_max(got.losses, want[2]) < 1e-5


def test_the_poison_check_catches_an_unwritten_element():
    def half(x_ref, poison_ref, o_ref):
        del poison_ref  # the output's starting buffer
        o_ref[0] = x_ref[0]  # row 1 is never written

    x = jnp.ones((2, 16))
    out = pl.pallas_call(half, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype), input_output_aliases={1: 0},
                         interpret=True)(x, jnp.full(x.shape, jnp.nan))
    assert bool(jnp.isfinite(out[0]).all()) and bool(jnp.isnan(out[1]).all())


def first_order_reference(layers, arrays, query_y):
    """The first-order MAML query loss written plainly: ``d adapted / d init`` the identity."""
    sx, sy, sm, qx = arrays
    sg = jax.lax.stop_gradient
    adapted, _, _ = jax.vmap(lambda a, b, m, q: adapt_one(a, b, m, q, sg(layers), lr=LR, steps=5))(sg(sx), sy, sm, qx)
    adapted = jax.tree.map(lambda init, a: init[None] + sg(a - init[None]), layers, adapted)
    return jnp.mean((jax.vmap(mlp)(adapted, qx) - query_y) ** 2) + 1e-2 * sum(jnp.sum(a["w"]) for a in adapted)


def test_first_order_vjp_equals_the_stop_gradient_reference():
    arrays, layers = problem(BLOCK + 3, seed=4, garbage=False)
    query_y = jnp.asarray(3 + np.random.default_rng(4).normal(size=(BLOCK + 3, QUERY)), jnp.float32)

    def batched(ls, sx, qx):
        out = fused_adapt(sx, arrays[1], arrays[2], qx, ls, lr=LR, steps=5, block_users=BLOCK)
        return jnp.mean((out.predictions - query_y) ** 2) + 1e-2 * sum(jnp.sum(a["w"]) for a in out.layers)

    def per_task(ls, sx, qx):
        one = lambda a, b, m, q: fused_adapt_task(a, b, m, q, ls, lr=LR, steps=5, block_users=BLOCK)
        out = jax.vmap(one)(sx, arrays[1], arrays[2], qx)
        return jnp.mean((out.predictions - query_y) ** 2) + 1e-2 * sum(jnp.sum(a["w"]) for a in out.layers)

    want = jax.jit(jax.grad(lambda ls, sx, qx: first_order_reference(ls, (sx, arrays[1], arrays[2], qx), query_y),
                            argnums=(0, 1, 2)))(layers, arrays[0], arrays[3])
    for fn in (batched, per_task):
        got = jax.jit(jax.grad(fn, argnums=(0, 1, 2)))(layers, arrays[0], arrays[3])
        for a, b in zip(jax.tree.leaves(got[0]) + [got[2]], jax.tree.leaves(want[0]) + [want[2]], strict=True):
            assert rel_max(a, b) < 1e-5
        assert not np.asarray(got[1]).any()  # first order: nothing reaches the support rows


def test_per_task_function_is_one_kernel_call_under_vmap():
    arrays, layers = problem(BLOCK + 3, seed=5)
    one = lambda a, b, m, q, ls: fused_adapt_task(a, b, m, q, ls, lr=LR, steps=2, block_users=BLOCK)
    vmapped = jax.vmap(one, in_axes=(0, 0, 0, 0, None))
    text = str(jax.make_jaxpr(vmapped)(*arrays, layers))
    assert text.count("pallas_call") == 1 and "grid=(2,)" in text.replace(" ", "")
    got = jax.jit(vmapped)(*arrays, layers)
    want = jax.jit(lambda *a: fused_adapt_reference(*a, layers, lr=LR, steps=2))(*arrays)
    for a, b in zip(outputs(got), outputs(want), strict=True):
        assert rel_max(a, b) < 1e-5
    # Per-user initial weights: the jnp reference, user by user.
    per_user = jax.tree.map(lambda a: jnp.stack([a, 1.1 * a] * 5 + [a]), layers)
    got = jax.jit(jax.vmap(one))(*arrays, per_user)
    want = jax.jit(jax.vmap(lambda a, b, m, q, ls: adapt_one(a, b, m, q, ls, lr=LR, steps=2)))(*arrays, per_user)
    for a, b in zip(outputs(got), jax.tree.leaves(want), strict=True):
        assert rel_max(a, b) < 1e-5


def test_the_kernel_lowers_through_triton_for_a_gpu():
    # Lowering (not compiling) for CUDA works without a GPU: it checks Triton's block
    # rules (powers of two) and that every operation of the kernel has a Triton rule.
    users, support, query, widths = 16, 20, 10, (256, 64, 64, 1)
    layers = [{"w": jnp.zeros((n_in, n_out)), "b": jnp.zeros(n_out)} for n_in, n_out in itertools.pairwise(widths)]
    args = (jnp.zeros((users, support, 256)), jnp.zeros((users, support)), jnp.ones((users, support), bool),
            jnp.zeros((users, query, 256)))
    for dtype in (jnp.float32, jnp.bfloat16):
        fn = functools.partial(fused_adapt, layers=layers, lr=0.03, steps=5, interpret=False, compute_dtype=dtype)
        lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
        assert "triton" in lowered.as_text()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"block_users": 3}, "block_users=3: pass a power of two"),
        ({"compute_dtype": jnp.float16}, "compute_dtype=.*float32 or jnp.bfloat16"),
        ({"lr": 0.0}, "lr=0.0"),
        ({"steps": -1}, "steps=-1"),
        ({"layers": "one"}, "at least two"),
        ({"layers": "wide"}, "the last layer has 2 outputs"),
        ({"query_x": jnp.zeros((3, 2, 5))}, "query_x"),
    ],
)
def test_bad_kernel_arguments_raise_with_the_value_and_a_fix(kwargs, match):
    arrays, layers = problem(3, seed=0)
    if kwargs.get("layers") == "one":
        kwargs["layers"] = [{"w": jnp.zeros((FEATURES, 1)), "b": jnp.zeros(1)}]
    elif kwargs.get("layers") == "wide":
        kwargs["layers"] = [layers[0], {"w": jnp.zeros((HIDDEN[0], 2)), "b": jnp.zeros(2)}]
    call = dict(zip(("support_x", "support_y", "support_mask", "query_x"), arrays)) | {"layers": layers, "lr": LR,
                                                                                          "steps": 1} | kwargs
    with pytest.raises(ValueError, match=match):
        fused_adapt(**call)


# The engine's kernel backend.

def padded_batch(seed: int) -> TaskBatch:
    """7 ragged users, 2 padding users, padded rows, NaN targets in the padded rows."""
    batch = pad_tasks(random_tasks(7, seed=seed), support_size=8, query_size=5, num_tasks=9)
    return batch._replace(support_y=np.where(batch.support_mask, batch.support_y, np.nan),
                          query_y=np.where(batch.query_mask, batch.query_y, np.nan))


def test_melu_and_embedding_mlp_declare_their_mlp():
    fields = [FieldSpec("age", "categorical", 7, 1), FieldSpec("genre", "multi", 9, 3),
              FieldSpec("year", "numeric", 1, 1)]
    h = jax.random.normal(jax.random.key(1), (5, 12))
    for model in (melu(fields, embed_dim=4, hidden=(8, 6)), embedding_mlp((3, 5, 2), embed_dim=4, hidden=(8, 6))):
        params = jax.jit(model.init)(jax.random.key(0))
        assert model.stage.mlp == ("layers",)
        np.testing.assert_allclose(jax.jit(model.stage.apply_embedded)(params, h), jax.jit(mlp)(params["layers"], h),
                                   rtol=1e-6)


def assert_same(got, want):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert bool(jnp.isfinite(a).all())
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_first_order_maml_on_the_kernel_equals_the_xla_path():
    """Padding users and rows (NaN targets there), chunks of 3 users: training step,
    adaptation, predictions and evaluation are the XLA path's, so the kernel backend keeps
    its batching, chunking and padding guarantees; the step compiles once."""
    traces = []
    net = embedding_mlp((3, 5), embed_dim=4, hidden=(8, 6))

    def counting_embed(params, x):
        traces.append(1)  # runs only while JAX traces
        return net.stage.embed(params, x)

    make = lambda backend, model: algorithms.fomaml(model, inner_optimizer=0.3, inner_steps=2,
                                                    outer_optimizer=optax.sgd(1.0), chunk_size=3, backend=backend)
    xla, pallas = make("xla", net), make("pallas", net._replace(stage=net.stage._replace(embed=counting_embed)))
    state, batch = xla.init(jax.random.key(0)), padded_batch(seed=1)
    assert_same(meta_grad(pallas, state, batch), meta_grad(xla, state, batch))
    for fn in ("adapt", "predict", "evaluate"):
        assert_same(getattr(pallas, fn)(state, batch), getattr(xla, fn)(state, batch))
    first = len(traces)
    for seed in (2, 3):
        state, metrics = pallas.step(state, padded_batch(seed))
    assert len(traces) == first and np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("name, check", [("maml", "predict"), ("reptile", "step"), ("finetune", "adapt")])
def test_the_other_learners_on_the_kernel_equal_the_xla_path(name, check):
    """What each runs on the kernel: second-order MAML's predictions (its step stays on
    XLA), Reptile's inner loop in training, fine-tuning's adaptation."""
    factory = {"maml": algorithms.maml, "reptile": algorithms.reptile, "finetune": algorithms.finetune}[name]
    net = embedding_mlp((3, 5), embed_dim=4, hidden=(8, 6))
    make = lambda backend: factory(net, inner_optimizer=0.3, inner_steps=2, outer_optimizer=optax.sgd(1.0),
                                   backend=backend)
    xla, pallas = make("xla"), make("pallas")
    state, batch = xla.init(jax.random.key(0)), pad_tasks(random_tasks(7, seed=1), num_tasks=9)
    fn = (lambda learner: meta_grad(learner, state, batch)) if check == "step" else (
        lambda learner: getattr(learner, check)(state, batch))
    assert_same(fn(pallas), fn(xla))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: algorithms.maml(tiny_model(staged=True), inner_optimizer=0.3, backend="gpu"), "backend='gpu'"),
        (lambda: algorithms.maml(tiny_model(staged=True), inner_optimizer=0.3, backend="pallas"), "Stage.mlp"),
        (lambda: algorithms.fomaml(embedding_mlp((3, 5)), inner_optimizer=optax.sgd(0.3, momentum=0.9),
                                   backend="pallas"), "not plain SGD"),
        (lambda: algorithms.metasgd(embedding_mlp((3, 5)), backend="pallas"), "backend='pallas' does not apply"),
        (lambda: algorithms.imaml(embedding_mlp((3, 5)), backend="pallas"), "backend='pallas' does not apply"),
        (lambda: algorithms.anil(embedding_mlp((3, 5)), backend="pallas"), "fast weights"),
        (lambda: algorithms.maml(embedding_mlp((3, 5)), inner_optimizer=0.3, loss="bce", backend="pallas"), "'mse'"),
        (lambda: algorithms.reptile(embedding_mlp((3, 5)), inner_optimizer=0.3, backend="pallas",
                                    is_fast=lambda path: path[:2] == ("layers", "1")), "fast weights"),
        (lambda: algorithms.finetune(embedding_mlp((3, 5), hidden=()), inner_optimizer=0.3, backend="pallas"),
         "no hidden layer"),
    ],
)
def test_the_kernel_backend_refuses_what_it_cannot_run(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("inner", [0.3, optax.sgd(0.3), optax.chain(optax.identity(), optax.sgd(0.3))],
                         ids=["number", "sgd", "chain"])
def test_plain_sgd_takes_the_kernel_however_it_is_given(inner):
    for factory in (algorithms.maml, algorithms.fomaml, algorithms.reptile, algorithms.finetune):
        # backend="pallas" raises where the kernel does not apply
        factory(embedding_mlp((3, 5)), inner_optimizer=inner, backend="pallas")


def test_auto_backend_is_xla_without_a_gpu_or_where_the_kernel_does_not_apply():
    common = {"inner_lr": 0.3, "inner_steps": 2, "backend": "auto", "who": "maml"}
    applies = kernel_adapter(embedding_mlp((3, 5)), lambda path: path[0] == "layers", squared_error, **common)
    assert (applies is None) == (jax.default_backend() != "gpu")
    model = tiny_model(staged=True)
    assert kernel_adapter(model, model.is_fast, squared_error, **common) is None


def test_kernels_are_a_subpackage_of_jaxmeta_whose_examples_run():
    # pytest does not collect the examples through the jaxmeta/kernels link: run them here.
    assert kernel.__name__ == "jaxmeta.kernels.adapt" and fused_adapt.__module__ == "jaxmeta.kernels.adapt"
    result = doctest.testmod(kernel)
    assert result.attempted > 0 and result.failed == 0
