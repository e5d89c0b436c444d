"""A fused Pallas kernel: per-user SGD adaptation of an MLP on features, and its query predictions.

For a block of users at a time, all on chip: ``steps`` plain SGD steps of the
MLP (ReLU between layers, none after the last, width 1 out: MeLU's
``256 -> 64 -> 64 -> 1``) on each user's masked mean squared support error,
then the adapted MLP on the user's query rows. In: the embedded support and
query rows, targets, masks and the shared initial weights. Out: each user's
adapted weights (optional), query predictions and support losses. The jnp
reference of the same function is :mod:`jaxmeta.kernels.reference`.

How it computes. The first layer is adapted in closed form: each SGD step
changes ``(w, b)`` by ``-lr (x^T delta, 1^T delta)`` (``x`` the user's fixed
support features, ``delta`` the gradient at the layer's pre-activation), so
after any number of steps its pre-activation is ``x w + b - lr (x x^T + 1) T``
with ``T`` the sum of the ``delta`` so far. The kernel carries ``T [support,
hidden]`` instead of the ``[in, hidden]`` weights, and forms the adapted first
layer once at the end (``w - lr x^T T``), only if asked. The other layers are
carried as weights; their gradients are written out by hand. The result is
that of the plain loop up to float32 rounding (the tests compare them).

Lowering. On an NVIDIA or AMD GPU the kernel lowers through Pallas' Triton
backend (``jax.experimental.pallas.triton``): general matrix products of any
power-of-two tile of at least 16 a side and loops, without the warpgroup
programming Mosaic GPU asks for. Elsewhere it runs in Pallas' interpret mode
(the same kernel body as XLA operations: exact, slow, for tests). Triton wants
power-of-two blocks, so the wrapper pads the user axis to whole blocks and
rows, features and hidden widths to powers of two (at least 16): padded rows
weigh nothing in the loss and padded units stay exactly zero, and everything
padded is sliced off again. Float32 products run at full float32 precision
(``Precision.HIGHEST``, no TF32). ``compute_dtype=bfloat16``: the features
travel as bfloat16 and the products that read them (the wide ones: features
times the first layer's weights, and their Gram matrices) take bfloat16
operands with float32 accumulation; the small per-step products, the weights
and the updates stay float32.

Gradients. :func:`fused_adapt` and :func:`fused_adapt_task` have a first-order
custom VJP (first-order MAML): the adapted weights' cotangent passes to the
initial weights unchanged (``d adapted / d init`` is the identity), the
predictions' cotangent reaches the initial weights and the query features
through the MLP at the adapted weights, and nothing reaches the support rows
or targets (the inner gradients are constants). The losses carry no gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from .reference import adapt_one, mlp

MIN_TILE = 16  # the smallest side of a matrix product tile in Triton
DEFAULT_BLOCK_USERS = 8
DEFAULT_NUM_WARPS = 8
COMPUTE_DTYPES = ("float32", "bfloat16")

Layers = list[dict[str, jax.Array]]


class FusedAdapted(NamedTuple):
    """What the fused adaptation gives, per user (leading ``[users]`` axis when batched)."""

    layers: Layers | None  # the adapted weights [{"w": [in, out], "b": [out]}, ...]; None if not asked for
    predictions: jax.Array  # float32 [query]: the adapted MLP on the query rows
    losses: jax.Array  # float32 [steps]: the masked support loss before each step


class _Config(NamedTuple):
    lr: float
    steps: int
    block_users: int
    compute_dtype: str
    with_weights: bool
    interpret: bool | None  # None: interpret unless the default backend is a GPU
    num_warps: int


def _pow2(n: int, floor: int = MIN_TILE) -> int:
    return max(floor, 1 << (max(int(n), 1) - 1).bit_length())


def _config(lr, steps, block_users, compute_dtype, with_weights, interpret, num_warps) -> _Config:
    if not lr > 0:
        raise ValueError(f"lr={lr}: pass a positive SGD rate.")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps={steps}: pass a non-negative whole number of SGD steps.")
    block_users = DEFAULT_BLOCK_USERS if block_users is None else block_users
    if block_users < 1 or block_users & (block_users - 1):
        raise ValueError(f"block_users={block_users}: pass a power of two (Triton blocks are powers of two), e.g. 8.")
    name = jnp.dtype(compute_dtype).name
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype={compute_dtype!r}: pass jnp.float32 or jnp.bfloat16.")
    return _Config(float(lr), int(steps), int(block_users), name, bool(with_weights), interpret, int(num_warps))


def check_layers(layers: Sequence[dict], features: int) -> None:
    """Raises unless ``layers`` is an MLP the kernel takes: at least two dense layers
    ``{"w": [in, out], "b": [out]}`` chained from ``features`` inputs to one output."""
    if len(layers) < 2:
        raise ValueError(f"got {len(layers)} dense layer(s); the fused kernel needs at least two (one hidden layer): "
                         "use the XLA path (backend='xla') for a linear model.")
    width = features
    for i, layer in enumerate(layers):
        w, b = jnp.shape(layer["w"]), jnp.shape(layer["b"])
        if len(w) != 2 or w[0] != width or b != (w[1],):
            raise ValueError(f"layer {i} has w {w} and b {b} after {width} features; pass "
                             f"{{'w': [{width}, out], 'b': [out]}}.")
        width = w[1]
    if width != 1:
        raise ValueError(f"the last layer has {width} outputs; the kernel predicts one number per row (width 1).")


def _kernel(*refs, n_layers: int, n_inputs: int, cfg: _Config):
    """One program: the users of one block, one after the other."""
    sx_ref, sy_ref, sw_ref, qx_ref = refs[:4]
    w_refs, b_refs = refs[4:4 + 2 * n_layers:2], refs[5:4 + 2 * n_layers:2]
    pred_ref, loss_ref, *weight_refs = refs[n_inputs:]
    dtype = jnp.dtype(cfg.compute_dtype)
    precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None
    lr, k_pad = cfg.lr, loss_ref.shape[-1]

    def dot(a, b, contract, low):
        """A product accumulated in float32, of operands in ``compute_dtype`` where ``low``
        (the products of the features) and float32 otherwise."""
        kind, prec = (dtype, precision) if low else (jnp.float32, jax.lax.Precision.HIGHEST)
        return jax.lax.dot_general(a.astype(kind), b.astype(kind), (contract, ((), ())), precision=prec,
                                   preferred_element_type=jnp.float32)

    mm = lambda a, b, low=False: dot(a, b, ((1,), (0,)), low)  # a @ b
    mm_tn = lambda a, b: dot(a, b, ((0,), (0,)), False)  # a.T @ b
    mm_nt = lambda a, b, low=False: dot(a, b, ((1,), (1,)), low)  # a @ b.T

    def forward(z0, rest):
        """The layers after the first, from its pre-activation: (output, pre-activations, activations)."""
        zs, acts = [z0], [jnp.maximum(z0, 0.0)]
        for w, b in rest[:-1]:
            zs.append(mm(acts[-1], w) + b[None, :])
            acts.append(jnp.maximum(zs[-1], 0.0))
        w_last, b_last = rest[-1]
        return jnp.sum(acts[-1] * w_last[None, :], axis=1) + b_last, zs, acts

    def user(u, carry):
        x, y, sw = sx_ref[u], sy_ref[u], sw_ref[u]
        b0 = b_refs[0][...]
        base = mm(x, w_refs[0][...], True) + b0[None, :]  # the first layer's pre-activation at the initial weights
        gram = mm_nt(x, x, True) + 1.0
        rest = tuple((w_refs[i][...], b_refs[i][...]) for i in range(1, n_layers))
        iota = jax.lax.broadcasted_iota(jnp.int32, (k_pad,), 0)

        def step(k, state):
            total, rest, losses = state
            out, zs, acts = forward(base - lr * mm(gram, total), rest)
            r = out - y
            losses = jnp.where(iota == k, jnp.sum(sw * r * r), losses)
            g = 2.0 * sw * r  # d loss / d output; sw = mask / count
            w_last, b_last = rest[-1]
            new = [(w_last - lr * jnp.sum(g[:, None] * acts[-1], axis=0), b_last - lr * jnp.sum(g))]
            da = g[:, None] * w_last[None, :]
            for j in range(len(rest) - 2, -1, -1):  # the hidden layers, last first
                w, b = rest[j]
                dz = jnp.where(zs[j + 1] > 0, da, 0.0)
                da = mm_nt(dz, w)
                new.append((w - lr * mm_tn(acts[j], dz), b - lr * jnp.sum(dz, axis=0)))
            delta = jnp.where(zs[0] > 0, da, 0.0)
            return total + delta, tuple(reversed(new)), losses

        start = (jnp.zeros(base.shape, jnp.float32), rest, jnp.zeros((k_pad,), jnp.float32))
        total, rest, losses = jax.lax.fori_loop(0, cfg.steps, step, start)
        q = qx_ref[u]
        zq = mm(q, w_refs[0][...], True) + b0[None, :] - lr * mm(mm_nt(q, x, True) + 1.0, total)
        pred_ref[u] = forward(zq, rest)[0]
        loss_ref[u] = losses
        if cfg.with_weights:
            weight_refs[0][u] = w_refs[0][...] - lr * mm_tn(x, total)
            weight_refs[1][u] = b0 - lr * jnp.sum(total, axis=0)
            for i, (w, b) in enumerate(rest):
                weight_refs[2 + 2 * i][u] = w
                weight_refs[3 + 2 * i][u] = b
        return carry

    jax.lax.fori_loop(0, cfg.block_users, user, 0)


def launch(support_x, support_y, support_weight, query_x, layers, *, cfg: _Config, poison: bool = False):
    """The ``pallas_call`` on inputs already padded (see :func:`pad`); returns its raw
    outputs ``(predictions, losses, *adapted weights)``, padding included.

    ``poison``: start every output buffer filled with NaN (aliased inputs), so that
    an element the kernel fails to write shows as NaN.
    """
    users = support_x.shape[0]
    q_pad, bu, n_layers = query_x.shape[1], cfg.block_users, len(layers)
    grid = (users // bu,)
    params = [a for layer in layers for a in (layer["w"], layer["b"])]

    def blocked(shape):  # a per-user array: one block of users per program
        return pl.BlockSpec(block_shape=(bu, *shape[1:]), index_map=lambda i: (i,) + (0,) * (len(shape) - 1))

    def shared(shape):  # the initial weights: whole, for every program
        return pl.BlockSpec(block_shape=tuple(shape), index_map=lambda i: (0,) * len(shape))

    out_shapes = [jax.ShapeDtypeStruct((users, q_pad), jnp.float32),
                  jax.ShapeDtypeStruct((users, _pow2(cfg.steps)), jnp.float32)]
    if cfg.with_weights:
        out_shapes += [jax.ShapeDtypeStruct((users, *p.shape), jnp.float32) for p in params]
    inputs = [support_x, support_y, support_weight, query_x, *params]
    in_specs = [blocked(a.shape) for a in inputs[:4]] + [shared(p.shape) for p in params]
    out_specs = [blocked(s.shape) for s in out_shapes]
    aliases = {}
    if poison:
        aliases = {len(inputs) + i: i for i in range(len(out_shapes))}
        inputs += [jnp.full(s.shape, jnp.nan, s.dtype) for s in out_shapes]
        in_specs += out_specs
    interpret = jax.default_backend() != "gpu" if cfg.interpret is None else cfg.interpret
    compiler_params = None
    if not interpret:
        from jax.experimental.pallas import triton as pltriton

        compiler_params = pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=1)
    kernel = functools.partial(_kernel, n_layers=n_layers, n_inputs=len(inputs), cfg=cfg)
    return pl.pallas_call(kernel, out_shape=out_shapes, grid=grid, in_specs=in_specs, out_specs=out_specs,
                          input_output_aliases=aliases, interpret=interpret, compiler_params=compiler_params,
                          name="jaxmeta_fused_adapt")(*inputs)


def pad(support_x, support_y, support_mask, query_x, layers, *, cfg: _Config):
    """The kernel's inputs: users padded to whole blocks, rows, features and hidden
    widths to powers of two (at least 16); masked support rows and targets zeroed; the mask
    turned into row weights ``mask / count``; the last layer's ``w`` as a vector.
    Padding users and rows weigh nothing; padded units have zero weights."""
    users, support, features = support_x.shape
    dtype = jnp.dtype(cfg.compute_dtype)
    users_pad = -(-users // cfg.block_users) * cfg.block_users
    s_pad, q_pad = _pow2(support), _pow2(query_x.shape[1])
    widths = [features] + [layer["w"].shape[1] for layer in layers]
    padded = [_pow2(w) for w in widths[:-1]] + [1]

    def grow(a, shape):
        return jnp.pad(a, [(0, n - m) for m, n in zip(a.shape, shape)])

    mask = support_mask.astype(bool)
    count = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1).astype(jnp.float32)
    sx = jnp.where(mask[:, :, None], support_x, 0).astype(dtype)
    out = (grow(sx, (users_pad, s_pad, padded[0])),
           grow(jnp.where(mask, support_y, 0).astype(jnp.float32), (users_pad, s_pad)),
           grow(mask.astype(jnp.float32) / count, (users_pad, s_pad)),
           grow(query_x.astype(dtype), (users_pad, q_pad, padded[0])))
    kernel_layers = []
    for i, layer in enumerate(layers):
        w = grow(layer["w"].astype(jnp.float32), (padded[i], padded[i + 1]))
        b = grow(layer["b"].astype(jnp.float32), (padded[i + 1],))
        kernel_layers.append({"w": w[:, 0] if i == len(layers) - 1 else w, "b": b})
    return (*out, kernel_layers)


def _unpad(outputs, users: int, query: int, layers: Layers, cfg: _Config) -> FusedAdapted:
    predictions, losses, *weights = outputs
    adapted = None
    if cfg.with_weights:
        adapted = []
        for i, layer in enumerate(layers):
            (n_in, n_out), w, b = layer["w"].shape, weights[2 * i], weights[2 * i + 1]
            w = w[:users, :n_in, None] if i == len(layers) - 1 else w[:users, :n_in, :n_out]
            adapted.append({"w": w, "b": b[:users, :n_out]})
    return FusedAdapted(adapted, predictions[:users, :query], losses[:users, :cfg.steps])


def _run(support_x, support_y, support_mask, query_x, layers, cfg: _Config) -> FusedAdapted:
    """The batched primal: pad, launch, slice."""
    if support_x.ndim != 3 or query_x.ndim != 3 or support_y.shape != support_x.shape[:2] \
            or support_mask.shape != support_y.shape or query_x.shape[::2] != support_x.shape[::2]:
        raise ValueError(f"support_x {support_x.shape}, support_y {support_y.shape}, support_mask "
                         f"{support_mask.shape}, query_x {query_x.shape}: pass [users, support, features], "
                         "[users, support], [users, support] and [users, query, features].")
    check_layers(layers, support_x.shape[2])
    *arrays, kernel_layers = pad(support_x, support_y, support_mask, query_x, layers, cfg=cfg)
    outputs = launch(*arrays, kernel_layers, cfg=cfg)
    return _unpad(outputs, support_x.shape[0], query_x.shape[1], layers, cfg)


def _first_order_bwd(res, cot: FusedAdapted, *, batched: bool):
    """The first-order VJP: see the module docstring."""
    adapted, query_x = res
    apply = jax.vmap(mlp) if batched else mlp
    _, vjp = jax.vjp(lambda ls, q: apply(ls, q.astype(jnp.float32)), adapted, query_x)
    d_layers, d_query = vjp(cot.predictions)
    if cot.layers is not None:
        d_layers = jax.tree.map(jnp.add, d_layers, cot.layers)
    if batched:  # the initial weights are shared by all users
        d_layers = jax.tree.map(lambda g: jnp.sum(g, axis=0), d_layers)
    return None, None, None, d_query.astype(query_x.dtype), d_layers


def _with_vjp(primal, with_weights_fn, cfg: _Config, *, batched: bool):
    fn = jax.custom_vjp(primal)

    def fwd(*args):
        out = with_weights_fn(*args)
        return (out if cfg.with_weights else out._replace(layers=None)), (out.layers, args[3])

    fn.defvjp(fwd, functools.partial(_first_order_bwd, batched=batched))
    return fn


@functools.cache
def _batched_fn(cfg: _Config):
    weights = cfg._replace(with_weights=True)
    return _with_vjp(lambda *a: _run(*a, cfg), lambda *a: _run(*a, weights), cfg, batched=True)


@functools.cache
def _task_fn(cfg: _Config):
    def one_user(c: _Config):
        @jax.custom_batching.custom_vmap
        def one(sx, sy, sm, qx, layers):
            out = _run(sx[None], sy[None], sm[None], qx[None], layers, c)
            return jax.tree.map(lambda a: a[0], out)

        @one.def_vmap
        def rule(axis_size, in_batched, sx, sy, sm, qx, layers):
            if any(jax.tree.leaves(in_batched[4])):  # per-user initial weights: the reference, user by user
                layer_axes = jax.tree.map(lambda b: 0 if b else None, in_batched[4])
                data = [a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
                        for a, b in zip((sx, sy, sm, qx), in_batched[:4])]
                ref = lambda a, b, m, q, ls: adapt_one(a, b, m, q, ls, lr=c.lr, steps=c.steps,
                                                       compute_dtype=c.compute_dtype)
                out = FusedAdapted(*jax.vmap(ref, in_axes=(0, 0, 0, 0, layer_axes))(*data, layers))
                out = out if c.with_weights else out._replace(layers=None)
            else:
                data = [a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
                        for a, b in zip((sx, sy, sm, qx), in_batched[:4])]
                out = _run(*data, layers, c)
            return out, jax.tree.map(lambda _: True, out)

        return one

    return _with_vjp(one_user(cfg), one_user(cfg._replace(with_weights=True)), cfg, batched=False)


def fused_adapt(support_x: jax.Array, support_y: jax.Array, support_mask: jax.Array, query_x: jax.Array,
                layers: Sequence[dict], *, lr: float, steps: int, block_users: int | None = None,
                compute_dtype: Any = jnp.float32, with_weights: bool = True, interpret: bool | None = None,
                num_warps: int = DEFAULT_NUM_WARPS) -> FusedAdapted:
    """Adapts the MLP to every user of a batch with the fused kernel.

    Args:
      support_x: ``[users, support, features]`` support rows (e.g. MeLU's embedded
        fields); rows where ``support_mask`` is False are zeroed before use, so that
        nothing in them (even NaN) reaches a result.
      support_y: ``[users, support]`` targets.
      support_mask: bool ``[users, support]``: the real rows; a user with none
        keeps the initial weights.
      query_x: ``[users, query, features]`` rows to predict after adaptation.
      layers: the initial weights, shared by all users: ``[{"w": [in, out], "b":
        [out]}, ...]``, at least two layers, the last of width 1; ReLU between
        layers, none after the last.
      lr: the SGD rate.
      steps: SGD steps on the masked mean squared error of the support rows.
      block_users: users per program (a power of two; default 8). Any number of
        users works: the last block is padded.
      compute_dtype: ``jnp.float32`` or ``jnp.bfloat16``: the type of the features
        and of the operands of the products that read them (accumulated in
        float32; see the module docstring).
      with_weights: also return the adapted weights (serving); without them the
        kernel writes only predictions and losses (evaluation, training).
      interpret: run in Pallas' interpret mode; default: unless the default
        backend is a GPU.
      num_warps: Triton warps per program (GPU only).

    Returns:
      :class:`FusedAdapted` with a leading ``[users]`` axis: the adapted layers
      (``None`` without ``with_weights``), the query predictions ``[users, query]``
      and the support losses before each step ``[users, steps]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> k = jax.random.split(jax.random.key(0), 4)
      >>> layers = [{"w": jax.random.normal(k[0], (4, 8)), "b": jnp.zeros(8)},
      ...           {"w": jax.random.normal(k[1], (8, 1)), "b": jnp.zeros(1)}]
      >>> sx, qx = jax.random.normal(k[2], (3, 5, 4)), jax.random.normal(k[3], (3, 2, 4))
      >>> out = fused_adapt(sx, jnp.ones((3, 5)), jnp.ones((3, 5), bool), qx, layers, lr=0.1, steps=2)
      >>> out.layers[0]["w"].shape, out.predictions.shape, out.losses.shape
      ((3, 4, 8), (3, 2), (3, 2))
    """
    cfg = _config(lr, steps, block_users, compute_dtype, with_weights, interpret, num_warps)
    return _batched_fn(cfg)(support_x, support_y, support_mask, query_x, list(layers))


def fused_adapt_task(support_x: jax.Array, support_y: jax.Array, support_mask: jax.Array, query_x: jax.Array,
                     layers: Sequence[dict], *, lr: float, steps: int, block_users: int | None = None,
                     compute_dtype: Any = jnp.float32, with_weights: bool = True, interpret: bool | None = None,
                     num_warps: int = DEFAULT_NUM_WARPS) -> FusedAdapted:
    """:func:`fused_adapt` written for ONE user (``[support, features]``, ``[support]``,
    ``[support]``, ``[query, features]``), for per-task engine code: under ``jax.vmap``
    over users (with the initial weights shared) it runs as one batched kernel call
    (``jax.custom_batching.custom_vmap``); with per-user initial weights it falls back
    to the jnp reference. Same arguments and first-order VJP as :func:`fused_adapt`."""
    cfg = _config(lr, steps, block_users, compute_dtype, with_weights, interpret, num_warps)
    return _task_fn(cfg)(support_x, support_y, support_mask, query_x, list(layers))
