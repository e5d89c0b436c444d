"""Task-conditioned meta-learning: a set encoder modulates the initialisation per user, then MAML.

Per user (one task):

1. **Set encoder** (DeepSets). Each support row ``i`` becomes
   ``u_i = [features_i, y_i]``: its features (the model's own input stage
   ``Model.stage.embed`` where it has one, so the encoder reads, and trains,
   the model's embeddings; otherwise the input leaves, flattened to float) and
   its rating. A per-row MLP ``phi`` (two ReLU layers of ``encoder_width``), a
   mean over the real support rows, and an MLP ``rho`` (one ReLU layer, then
   linear) give the task vector ``z = rho(mean_i phi(u_i))`` of ``task_dim``.
   A user without support rows has ``z = 0``.
2. **FiLM modulation** of the fast weights: every fast leaf ``theta`` gets a
   scale and a shift per output unit (its last dimension; one value for a
   scalar leaf), linear in ``z``:
   ``theta_task = theta * (1 + z @ S) + z @ B``. ``S`` and ``B`` have no bias
   (a task-independent one would only re-parametrise ``theta``) and start at
   zero, so at initialisation the algorithm *is* MAML, and ``z = 0`` (no
   support rows) leaves the meta-learned weights as they are.
3. **MAML** from ``theta_task``: ``inner_steps`` steps of the inner optimizer
   on the support loss (second order unless ``first_order``). ``inner_steps=0``
   is pure amortised conditioning: the encoder alone adapts the model
   (:func:`amortised`, a new user costing one forward pass).

The meta-gradient of the query loss reaches the initialisation and the slow
weights (as in MAML), the FiLM maps and the encoder, and through the encoder the
embedding tables again. Encoder and FiLM weights are meta-learned values kept in
``MetaState.hyper`` (as Meta-SGD's rates), trained by the same outer optimizer::

    hyper = {"encoder": {"rows": [{"w": [features + 1, width], "b": [width]},
                                  {"w": [width, width], "b": [width]}],        # phi
                         "task": [{"w": [width, width], "b": [width]},
                                  {"w": [width, task_dim], "b": [task_dim]}]},  # rho
             "film": {"scale": <fast weights' tree>, "shift": <same>}}          # leaves [task_dim, last] or [task_dim]

The encoder's weights are drawn from ``fold_in(key, 1)`` of ``init``'s key, so
``init(key).params`` are the model's ``init(key)``, the same as MAML's.

Padding: padded support rows are zeroed (``jnp.where``) before the encoder and
left out of its mean by ``jnp.where``, so nothing non-finite in them reaches a
value or a gradient; losses are the engine's masked ones
(:mod:`jaxmeta.algorithms._core`); padding users are the engine's. The inner
loop is the generic one (:func:`jaxmeta.inner.inner_adapt`): MAML's closed form
for a fast dense layer and the fused kernel start from the shared weights, not
from per-user modulated ones.

References:
  Dong, Yuan, Zhou, Lian, Li, Lin, "MAMO: Memory-Augmented Meta-Optimization for
  Cold-start Recommendation", KDD 2020 (task memories that personalise the
  initialisation of the fast weights).
  Lin, Yang, Sun, Zhu, Liu, Wu, "Task-adaptive Neural Process for User Cold-Start
  Recommendation", WWW 2021 (TaNP: a set encoder over the support ratings and
  FiLM-style modulation of the decoder).
  Feng, Sun, Zhang, Xie, Xu, "CMML: Contextual Modulation Meta Learning for
  Cold-Start Recommendation", CIKM 2021 (context encoder, modulation, then a few
  gradient steps).
  Perez, Strub, de Vries, Dumoulin, Courville, "FiLM: Visual Reasoning with a
  General Conditioning Layer", AAAI 2018.
  Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of
  Deep Networks", ICML 2017.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxmeta._checks import positive_int
from jaxmeta.algorithms._core import (
    MetaLearner,
    MetaState,
    build,
    embed_stage,
    fast_shapes,
    has_rows,
    query_loss,
    split_fast,
    support_loss,
    zero_padded_rows,
)
from jaxmeta.algorithms._defaults import (
    DEFAULT_BACKEND,
    DEFAULT_INNER_OPTIMIZER,
    DEFAULT_INNER_STEPS,
    DEFAULT_LOSS,
    DEFAULT_OUTER_OPTIMIZER,
    InnerOptimizer,
    inner_optimizer_of,
    no_kernel,
    refuse,
)
from jaxmeta.inner import inner_adapt
from jaxmeta.losses import LossFn, get_loss
from jaxmeta.models import Model, combine, path_names

_ENCODER_STREAM = 1  # init draws the encoder from fold_in(key, 1), the model from key itself


def _dense(key: jax.Array, fan_in: int, fan_out: int, dtype) -> dict[str, jax.Array]:
    return {"w": jax.random.normal(key, (fan_in, fan_out), dtype) * jnp.sqrt(2.0 / fan_in).astype(dtype),
            "b": jnp.zeros((fan_out,), dtype)}


def init_encoder(key: jax.Array, *, feature_dim: int, width: int, task_dim: int, dtype) -> dict:
    """The set encoder's weights (He-normal, zero biases): ``{"rows": phi, "task": rho}``."""
    k = jax.random.split(key, 4)
    return {"rows": [_dense(k[0], feature_dim + 1, width, dtype), _dense(k[1], width, width, dtype)],
            "task": [_dense(k[2], width, width, dtype), _dense(k[3], width, task_dim, dtype)]}


def init_film(fast: Any, task_dim: int) -> dict:
    """Zero FiLM maps for the fast weights ``fast`` (``None`` holes kept): a
    ``[task_dim, last]`` matrix per leaf of shape ``[..., last]``, ``[task_dim]`` per scalar."""

    def zeros(p):
        return jnp.zeros((task_dim,) + jnp.shape(p)[-1:], p.dtype)

    return {"scale": jax.tree.map(zeros, fast), "shift": jax.tree.map(zeros, fast)}


def task_vector(encoder: dict, features: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """One user's task vector ``z`` ``[task_dim]`` from the support rows.

    Args:
      encoder: the encoder's weights (:func:`init_encoder`).
      features: float ``[support, feature_dim]``; padded rows may hold anything
        finite (zero them first, as :func:`jaxmeta.algorithms._core.zero_padded_rows`).
      y: float ``[support]``; padded entries may hold anything, NaN included.
      mask: bool ``[support]``: the real rows.

    Returns:
      ``rho(mean of phi([features, y]) over the real rows)``; zeros when no row is real.
    """
    h = jnp.concatenate([features, jnp.where(mask, y, 0).astype(features.dtype)[:, None]], axis=1)
    for layer in encoder["rows"]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"][None, :])
    count = jnp.sum(mask)
    pooled = jnp.sum(jnp.where(mask[:, None], h, 0), axis=0) / jnp.maximum(count, 1).astype(h.dtype)
    hidden, last = encoder["task"]
    z = jax.nn.relu(pooled @ hidden["w"] + hidden["b"]) @ last["w"] + last["b"]
    return jnp.where(count > 0, z, 0)


def modulate(fast: Any, film: dict, z: jax.Array) -> Any:
    """FiLM: ``theta * (1 + z @ scale) + z @ shift`` for each fast leaf, the scale and
    shift broadcast over all but its last dimension (``None`` holes kept)."""

    def leaf(theta, scale, shift):
        def unit(m):  # z @ m, one value per output unit, broadcast over theta's other dimensions
            return jnp.reshape(z @ m, (1,) * (theta.ndim - 1) + jnp.shape(m)[1:])

        return theta * (1 + unit(scale)) + unit(shift)

    return jax.tree.map(leaf, fast, film["scale"], film["shift"])


def _feature_width(model: Model) -> int | None:
    """The width of one row's features, read off the input width of the model's first dense
    layer on them (``Stage.dense`` or the first layer of ``Stage.mlp``); None if it declares neither."""
    stage = model.stage
    if stage is None or (stage.dense is None and stage.mlp is None):
        return None
    first = (*stage.dense, "w") if stage.dense is not None else (*stage.mlp, "0", "w")
    for path, leaf in jax.tree_util.tree_leaves_with_path(model.param_shapes()):
        if path_names(path) == first:
            return int(leaf.shape[0])
    return None


def _check_inner_steps(inner_steps: Any, who: str) -> int:
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, numbers.Integral) or inner_steps < 0:
        raise ValueError(f"{who}: inner_steps={inner_steps!r}: pass a whole number >= 0 (0: the encoder's "
                         "conditioning alone, no gradient steps).")
    return int(inner_steps)


def conditioned(
    model: Model,
    *,
    inner_optimizer: InnerOptimizer = DEFAULT_INNER_OPTIMIZER,
    inner_steps: int = DEFAULT_INNER_STEPS,
    outer_optimizer: optax.GradientTransformation = DEFAULT_OUTER_OPTIMIZER,
    loss: str | LossFn = DEFAULT_LOSS,
    first_order: bool = False,
    remat: bool = False,
    chunk_size: int | None = None,
    is_fast: Callable | None = None,
    backend: str = DEFAULT_BACKEND,
    feature_dim: int | None = None,
    encoder_width: int = 64,
    task_dim: int = 32,
) -> MetaLearner:
    """Task-conditioned MAML: a set encoder of the support ratings FiLM-modulates the
    fast weights per user, then ``inner_steps`` MAML steps (see the module docstring).

    Padding: padded rows and padding users change no result; a real user without
    support rows has ``z = 0``, so is neither modulated nor adapted, and is
    predicted by the meta-learned model as it is (as in MAML).

    Args:
      model: the model; its ``is_fast`` leaves are modulated and adapted per user.
      inner_optimizer: the inner loop's optax transformation, or a number: plain
        SGD at that rate (default 0.03).
      inner_steps: inner steps on the support set (default 5); 0: the encoder's
        modulation alone.
      outer_optimizer: optax transformation of the model's parameters, the
        encoder and the FiLM maps (default ``optax.adam(1e-3)``).
      loss: ``"mse"``, ``"mae"``, ``"huber"``, ``"bce"`` or an elementwise callable.
      first_order: drop the second-order terms of the inner loop (the gradient
        still flows through the modulation to the encoder).
      remat: recompute each inner step in the backward pass to bound memory.
      chunk_size: process the users of a batch this many at a time (default: all).
      is_fast: override the model's fast-weight predicate.
      backend: ``"xla"`` (default) or ``"auto"`` (XLA); ``"pallas"`` raises a
        ValueError: the per-user modulated weights have no fused kernel.
      feature_dim: the width of one support row's features, flattened: of
        ``model.stage.embed`` where the model has a stage, of the input row
        otherwise. Default: read off the model's first dense layer on its
        features (``Stage.dense`` or ``Stage.mlp``: MeLU, ``embedding_mlp``);
        other models must pass it.
      encoder_width: width of the encoder's hidden layers (default 64).
      task_dim: width of the task vector ``z`` (default 32).

    Returns:
      A :class:`jaxmeta.algorithms.MetaLearner`; its state's ``hyper`` holds the
      encoder and the FiLM maps.

    Raises:
      ValueError: an option with a bad value (naming it), a model whose feature
        width cannot be read without ``feature_dim``, or (when the step is first
        traced) rows whose feature width is not ``feature_dim``.

    Example:
      >>> import jax
      >>> from jaxmeta.models import embedding_mlp
      >>> learner = conditioned(embedding_mlp([3, 5], embed_dim=2, hidden=(4,)), task_dim=8)
      >>> state = learner.init(jax.random.key(0))
      >>> state.hyper["encoder"]["rows"][0]["w"].shape  # a row's features (2 fields x 2) and its rating
      (5, 64)
      >>> film = state.hyper["film"]  # zero at first: the algorithm starts as MAML
      >>> film["scale"]["layers"][0]["w"].shape, float(abs(film["shift"]["layers"][0]["w"]).max())
      ((8, 4), 0.0)
    """
    return _conditioned(model, who="conditioned", inner_optimizer=inner_optimizer, inner_steps=inner_steps,
                        outer_optimizer=outer_optimizer, loss=loss, first_order=first_order, remat=remat,
                        chunk_size=chunk_size, is_fast=is_fast, backend=backend, feature_dim=feature_dim,
                        encoder_width=encoder_width, task_dim=task_dim)


def _conditioned(
    model: Model,
    *,
    who: str,
    inner_optimizer: InnerOptimizer,
    inner_steps: int,
    outer_optimizer: optax.GradientTransformation,
    loss: str | LossFn,
    first_order: bool,
    remat: bool,
    chunk_size: int | None,
    is_fast: Callable | None,
    backend: str,
    feature_dim: int | None,
    encoder_width: int,
    task_dim: int,
) -> MetaLearner:
    """:func:`conditioned` and :func:`amortised`; ``who`` names the algorithm in errors."""
    is_fast = model.is_fast if is_fast is None else is_fast
    inner_steps = _check_inner_steps(inner_steps, who)
    inner = inner_optimizer_of(inner_optimizer, fast_shapes(model, is_fast), who=who)
    no_kernel(backend, who=who, why="its per-user modulated fast weights have no fused kernel")
    encoder_width = positive_int("encoder_width", encoder_width, f"{who}'s encoder width")
    task_dim = positive_int("task_dim", task_dim, f"{who}'s task vector width")
    if feature_dim is None:
        feature_dim = _feature_width(model)
        if feature_dim is None:
            raise ValueError(f"{who}: feature_dim=None, and this model declares no dense layer on its features "
                             "(Stage.dense or Stage.mlp) to read it from; pass feature_dim=<the width of one "
                             "support row's features: model.stage.embed's output, or the input row, flattened>.")
    feature_dim = positive_int("feature_dim", feature_dim, f"{who}'s width of one row's features")
    loss_fn = get_loss(loss)
    inner_model, embed = embed_stage(model, is_fast)

    def support_features(params, task, dtype) -> jax.Array:
        """``dtype [support, feature_dim]``: each support row's features, padded rows zeroed first."""
        x = zero_padded_rows(task.support_x, task.support_mask)
        if model.stage is not None:
            x = model.stage.embed(params, x)
        features = jnp.concatenate([jnp.reshape(a, (a.shape[0], -1)).astype(dtype) for a in jax.tree.leaves(x)],
                                   axis=1)
        if features.shape[1] != feature_dim:
            raise ValueError(f"{who}: a support row has {features.shape[1]} features, but the encoder was built "
                             f"for feature_dim={feature_dim}; pass feature_dim={features.shape[1]}.")
        return features

    def adapt(meta, task, *, first_order=False, remat=False):
        params, hyper = meta
        fast, slow = split_fast(params, is_fast)
        encoder = hyper["encoder"]
        features = support_features(params, task, encoder["rows"][0]["w"].dtype)
        start = modulate(fast, hyper["film"], task_vector(encoder, features, task.support_y, task.support_mask))
        task = embed(slow, task)

        def support(f):
            return support_loss(inner_model, loss_fn, combine(f, slow), task)

        adapted, losses = inner_adapt(support, start, optimizer=inner.optimizer, steps=inner_steps,
                                      first_order=first_order, remat=remat, active=has_rows(task.support_mask))
        return adapted, slow, task, losses, support

    def objective(meta, task):
        adapted, slow, task, losses, support = adapt(meta, task, first_order=first_order, remat=remat)
        value = query_loss(inner_model, loss_fn, combine(adapted, slow), task)
        before = losses[0] if inner_steps else support(adapted)  # the inner loss at the modulated start
        return value, {"loss": value, "inner_loss": before}

    def adapt_task(meta, task):
        adapted, _, _, losses, _ = adapt(meta, task)
        return adapted, losses

    learner = build(model, loss_fn=loss_fn, objective=objective, adapt_task=adapt_task, is_fast=is_fast,
                    outer_optimizer=outer_optimizer, chunk_size=chunk_size)

    def init(key: jax.Array) -> MetaState:
        params = model.init(key)
        fast, _ = split_fast(params, is_fast)
        dtype = jnp.result_type(*jax.tree.leaves(fast)) if jax.tree.leaves(fast) else jnp.result_type(float)
        hyper = {"encoder": init_encoder(jax.random.fold_in(key, _ENCODER_STREAM), feature_dim=feature_dim,
                                         width=encoder_width, task_dim=task_dim, dtype=dtype),
                 "film": init_film(fast, task_dim)}
        return MetaState(params, hyper, outer_optimizer.init((params, hyper)), jnp.zeros((), jnp.int32))

    return learner._replace(init=init)


def amortised(
    model: Model,
    *,
    inner_optimizer: None = None,
    inner_steps: None = None,
    outer_optimizer: optax.GradientTransformation = DEFAULT_OUTER_OPTIMIZER,
    loss: str | LossFn = DEFAULT_LOSS,
    chunk_size: int | None = None,
    is_fast: Callable | None = None,
    backend: None = None,
    feature_dim: int | None = None,
    encoder_width: int = 64,
    task_dim: int = 32,
) -> MetaLearner:
    """Amortised adaptation: :func:`conditioned` with ``inner_steps=0``.

    A user is adapted by one forward pass, with no inner loop: the set encoder
    reads the support rows into the task vector ``z`` and FiLM turns the
    meta-learned fast weights into the user's (steps 1 and 2 of the module
    docstring). Serving a new user costs that forward pass alone, which makes it
    the student of choice for distilling a gradient-based teacher
    (:func:`jaxmeta.algorithms.distill`).

    Padding: as :func:`conditioned`; a real user without support rows has
    ``z = 0`` and is predicted by the meta-learned model as it is.

    Args:
      inner_optimizer, inner_steps, backend: do not apply (there is no inner
        loop, hence no inner optimizer or kernel); each raises a ValueError if
        set. Call ``conditioned(..., inner_steps=K)`` for gradient steps after
        the encoder.
      Others as in :func:`conditioned`.

    Returns:
      A :class:`jaxmeta.algorithms.MetaLearner`; its state's ``hyper`` holds the
      encoder and the FiLM maps.

    Raises:
      ValueError: an option that does not apply, or one with a bad value (naming it).

    Example:
      >>> import jax
      >>> from jaxmeta.models import embedding_mlp
      >>> learner = amortised(embedding_mlp([3, 5], embed_dim=2, hidden=(4,)), task_dim=8)
      >>> sorted(learner.init(jax.random.key(0)).hyper)
      ['encoder', 'film']

    References:
      Requeima, Gordon, Bronskill, Nowozin, Turner, "Fast and Flexible Multi-Task
      Classification Using Conditional Neural Adaptive Processes", NeurIPS 2019
      (CNAPs: FiLM parameters of a shared network predicted from the support set).
      Garnelo, Rosenbaum, Maddison, Ramalho, Saxton, Shanahan, Teh, Rezende, Eslami,
      "Conditional Neural Processes", ICML 2018.
    """
    refuse(who="amortised", why="amortised adapts a user by one forward pass of its set encoder, with no inner "
                                "loop; call conditioned(..., inner_steps=K) for gradient steps after the encoder",
           inner_optimizer=inner_optimizer, inner_steps=inner_steps, backend=backend)
    return _conditioned(model, who="amortised", inner_optimizer=DEFAULT_INNER_OPTIMIZER, inner_steps=0,
                        outer_optimizer=outer_optimizer, loss=loss, first_order=False, remat=False,
                        chunk_size=chunk_size, is_fast=is_fast, backend=DEFAULT_BACKEND, feature_dim=feature_dim,
                        encoder_width=encoder_width, task_dim=task_dim)
