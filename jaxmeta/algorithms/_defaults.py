"""The options every algorithm factory shares: their defaults, their checks, and plain SGD recognised.

Every factory of :data:`jaxmeta.algorithms.META_LEARNERS` and
:data:`jaxmeta.algorithms.BASELINES` lists the same keywords, with the same
defaults for the same things (as optax's ``alias.py`` does), all defined here:

* ``inner_optimizer=0.03`` (:data:`DEFAULT_INNER_OPTIMIZER`): an optax
  transformation of the inner loop, or a number: plain SGD at that rate.
  Plain SGD, given either way (``0.03`` or ``optax.sgd(0.03)``), takes the
  fast paths: a fast dense layer on the features adapted in closed form
  (:func:`jaxmeta.inner.inner_adapt_dense`) and the fused Pallas kernel
  (``backend``); see :func:`plain_sgd_rate`.
* ``inner_steps=5`` (:data:`DEFAULT_INNER_STEPS`): inner steps on the support set.
* ``outer_optimizer=optax.adam(1e-3)`` (:data:`DEFAULT_OUTER_OPTIMIZER`).
* ``loss="mse"`` (:data:`DEFAULT_LOSS`): ``"mse"``, ``"mae"``, ``"huber"``, ``"bce"`` or an elementwise callable.
* ``chunk_size=None``: users per chunk inside the compiled functions (``None``: all).
* ``is_fast=None``: the model's fast-weight predicate.
* ``backend="xla"`` (:data:`DEFAULT_BACKEND`): one of :data:`BACKENDS`.
* ``first_order=False``, ``remat=False``: where the meta-gradient goes through
  the inner loop (the MAML family).

An option that does not apply to an algorithm raises one ``ValueError`` naming
it (:func:`refuse`), rather than being ignored.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmeta._checks import positive_int

DEFAULT_INNER_OPTIMIZER = 0.03
DEFAULT_INNER_STEPS = 5
DEFAULT_OUTER_OPTIMIZER = optax.adam(1e-3)
DEFAULT_LOSS = "mse"
DEFAULT_BACKEND = "xla"
BACKENDS = ("xla", "pallas", "auto")

InnerOptimizer = optax.GradientTransformation | float


class Inner(NamedTuple):
    """An ``inner_optimizer`` option as the algorithms run it."""

    optimizer: optax.GradientTransformation  # the inner loop's transformation
    rate: float | None  # its rate when it is plain SGD (updates ``-rate * grads``), else None


def inner_optimizer_of(inner_optimizer: InnerOptimizer, fast_shapes: Any, *, who: str) -> Inner:
    """Reads an ``inner_optimizer`` option.

    Args:
      inner_optimizer: a positive number (plain SGD at that rate) or an optax transformation.
      fast_shapes: the fast weights (arrays or ``jax.ShapeDtypeStruct``, ``None``
        holes allowed), the pytree the inner loop updates: the probe of
        :func:`plain_sgd_rate` runs on gradients of this structure and shapes.
      who: the algorithm's name, for errors.

    Returns:
      :class:`Inner`; ``rate`` is set for a number and for a transformation that
      is plain SGD (:func:`plain_sgd_rate`).

    Raises:
      ValueError: a number that is not positive and finite, or neither a number
        nor a transformation.
    """
    if isinstance(inner_optimizer, numbers.Real) and not isinstance(inner_optimizer, bool):
        rate = float(inner_optimizer)
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"{who}: inner_optimizer={inner_optimizer}: pass a positive SGD rate or an optax "
                             "transformation.")
        return Inner(optax.sgd(rate), rate)
    if not (callable(getattr(inner_optimizer, "init", None)) and callable(getattr(inner_optimizer, "update", None))):
        raise ValueError(f"{who}: inner_optimizer={inner_optimizer!r} is neither a number nor an optax "
                         "transformation; pass a number (plain SGD at that rate) or an optax.GradientTransformation.")
    return Inner(inner_optimizer, plain_sgd_rate(inner_optimizer, fast_shapes))


# Probe gradients: random normal entries times these (magnitudes 1e-5 to 1e10, both signs),
# so that clipping, normalisation and sign-based updates all show.
_PROBE_SCALES = (1.0, 1e-5, 1e10, -1e3)


def plain_sgd_rate(transformation: optax.GradientTransformation, fast_shapes: Any) -> float | None:
    """The rate of ``transformation`` if it is plain SGD, else None.

    Plain SGD updates by ``-rate * grads`` whatever the gradients, the parameters
    and the step. Read by probing, so that any spelling of it counts
    (``optax.sgd(0.03)``, ``optax.chain(optax.identity(), optax.sgd(0.03))``,
    ``optax.scale(-0.03)``): its ``init`` state holds no array (no step count, so
    no schedule; no momentum or moment estimates), and its ``update`` of four
    random gradient pytrees shaped like ``fast_shapes``, of magnitudes ``1e-5`` to
    ``1e10`` and both signs, with random parameters given, returns ``-rate *
    grads`` to the rounding of the default float dtype, with no array in the new
    state either, for one positive rate. Momentum, clipping (at a norm below
    ``1e10``), weight decay, normalisation, schedules and per-leaf rates all fail
    the probe; such a transformation runs in the generic inner loop.

    ``optax.sgd(rate)`` (``chain(identity(), scale(-rate))``) multiplies each
    gradient by the Python float ``-rate`` and keeps no state, so the probe
    recovers ``rate`` exactly in float64 and as ``float32(rate)`` in float32,
    the value its own update multiplies by.

    Example:
      >>> import jax.numpy as jnp
      >>> fast = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
      >>> plain_sgd_rate(optax.sgd(0.5), fast)
      0.5
      >>> [plain_sgd_rate(t, fast) for t in (optax.sgd(0.5, momentum=0.9), optax.adam(0.5),
      ...                                    optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5)))]
      [None, None, None]
    """
    with jax.ensure_compile_time_eval():  # concrete probes even if a factory is called under jax.jit
        return _probe(transformation, fast_shapes)


def _probe(transformation: optax.GradientTransformation, fast_shapes: Any) -> float | None:
    dtype = jax.dtypes.canonicalize_dtype(float)
    shapes = [jnp.shape(leaf) for leaf in jax.tree.leaves(fast_shapes)]
    if not shapes:
        return None
    treedef = jax.tree.structure(fast_shapes)
    rng = np.random.default_rng(0)
    draw = lambda scale: [(scale * rng.standard_normal(s)).astype(dtype) for s in shapes]  # noqa: E731
    as_tree = lambda arrays: jax.tree.unflatten(treedef, [jnp.asarray(a) for a in arrays])  # noqa: E731
    params = as_tree(draw(1.0))
    state = transformation.init(params)
    if jax.tree.leaves(state):
        return None
    rate = None
    for i, scale in enumerate(_PROBE_SCALES):
        grads = draw(scale)
        if i == 0:
            grads[0].flat[0] = 1.0  # the rate is read off this entry: -update / 1
        updates, new_state = transformation.update(as_tree(grads), state, params)
        if jax.tree.leaves(new_state) or jax.tree.structure(updates) != treedef:
            return None
        updates = [np.asarray(u, np.float64) for u in jax.tree.leaves(updates)]
        if rate is None:
            rate = -float(updates[0].flat[0])
            if not (rate > 0 and math.isfinite(rate)):
                return None
        for g, u in zip(grads, updates, strict=True):
            # -rate * g is exact in float64; the update may round it once in the default dtype.
            want = -rate * g.astype(np.float64)
            if u.shape != g.shape or not np.allclose(u, want, rtol=4 * np.finfo(dtype).eps, atol=0):
                return None
    return rate


def check_inner_steps(inner_steps: int, *, who: str) -> int:
    """``inner_steps`` as an int if it is a whole number >= 1; a ValueError naming it otherwise."""
    return positive_int("inner_steps", inner_steps, f"{who}'s inner steps on the support set")


def check_backend(backend: str, *, who: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`; a ValueError naming it otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"{who}: backend={backend!r}; pass 'xla' (the default), 'pallas' (the fused Pallas "
                         "kernel, jaxmeta.kernels) or 'auto' (the kernel where it applies on a GPU).")
    return backend


def no_kernel(backend: str, *, who: str, why: str) -> None:
    """For an algorithm without a kernel path: ``"xla"`` and ``"auto"`` (which then
    means XLA) pass, ``"pallas"`` raises a ValueError naming ``backend`` and ``why``."""
    if check_backend(backend, who=who) == "pallas":
        raise ValueError(f"{who}: backend='pallas' does not apply: {why}. Pass backend='xla'.")


def refuse(*, who: str, why: str, **options: Any) -> None:
    """Raises one ValueError naming those of ``options`` that are set (not None):
    options that do not apply to an algorithm default to None, and ``why`` says why."""
    given = [f"{name}={value!r}" for name, value in options.items() if value is not None]
    if given:
        raise ValueError(f"{who}: {', '.join(given)} does not apply: {why}. Leave it unset.")
