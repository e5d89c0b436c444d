"""What every algorithm shares: the state, the learner interface and the outer step.

An algorithm is described by two per-task functions, written for ONE user:

* ``objective(meta, task) -> (value, aux)``: a scalar whose gradient with respect
  to ``meta = (params, hyper)`` is this task's meta-gradient (for MAML, the query
  loss after adaptation; for Reptile and implicit MAML a surrogate whose gradient
  is their update), and ``aux``, a dict of scalar metrics (``"loss"``: the value
  of the task's actual objective; ``"inner_loss"``: the inner loss before the
  first inner step);
* ``adapt_task(meta, task) -> (fast, inner_losses)``: the user's adapted fast
  weights (``None`` at slow leaves) from the support set alone.

:func:`build` turns them into a :class:`MetaLearner` whose functions are
compiled once per batch shape and ``vmap`` the per-task code over the users of a
batch (optionally in chunks, to bound memory). The meta-gradient is the mean of
the per-task gradients over the batch's real users (:func:`jaxmeta.tasks.task_mask`);
it is taken of the batch-summed objective rather than per task, so that per-user
copies of the gradient of shared tables (embeddings) are never materialised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmeta.algorithms._defaults import check_backend
from jaxmeta.losses import LossFn, masked_mean, squared_error
from jaxmeta.models import Model, combine, mask_where, partition
from jaxmeta.tasks import TaskBatch, task_mask

Params = Any
Meta = tuple[Params, Any]  # (model params, hyper)
Metrics = dict[str, jax.Array]


class MetaState(NamedTuple):
    """Everything an algorithm learns and carries between outer steps."""

    params: Params  # model parameters: the meta-learned fast-weight initialisation and the slow weights
    hyper: Any  # other meta-learned values (Meta-SGD's inner learning rates); () when none
    opt_state: optax.OptState  # outer optimizer state over (params, hyper)
    step: jax.Array  # int32 []: outer steps taken


class MetaLearner(NamedTuple):
    """The pure functions of one algorithm; all but ``init`` are ``jax.jit``-compiled.

    Attributes:
      init: ``init(key) -> MetaState``.
      step: ``step(state, batch) -> (state, metrics)``: one outer (meta-training)
        step; ``metrics`` has ``"loss"`` (the objective's value), for algorithms
        with an inner loop ``"inner_loss"`` (means over real users), and
        ``"tasks"`` (how many real users).
      adapt: ``adapt(state, batch) -> fast``: per-user fast weights adapted on the
        support sets, leaves ``[tasks, ...]`` (``None`` at slow leaves).
      evaluate: ``evaluate(state, batch) -> metrics``: mean query loss over real
        users before (``"query_loss_before"``) and after (``"query_loss_after"``)
        adaptation, and ``"tasks"``.
      predict: ``predict(state, batch) -> predictions``: query predictions after
        adaptation, float ``[tasks, query]``.
      is_fast: the predicate on parameter paths that this learner adapts.
      apply_adapted: ``apply_adapted(state, fast, x) -> predictions``: the model
        with each user's fast weights of ``adapt`` (leaves ``[tasks, ...]``) and
        the state's slow weights, on each user's rows ``x`` (leaves ``[tasks,
        rows, ...]``), float ``[tasks, rows]``: adapt once, then score any number
        of item chunks (serving).
    """

    init: Callable[[jax.Array], MetaState]
    step: Callable[[MetaState, TaskBatch], tuple[MetaState, Metrics]]
    adapt: Callable[[MetaState, TaskBatch], Params]
    evaluate: Callable[[MetaState, TaskBatch], Metrics]
    predict: Callable[[MetaState, TaskBatch], jax.Array]
    is_fast: Callable[[tuple[str, ...]], bool]
    apply_adapted: Callable[[MetaState, Params, Any], jax.Array]


def masked_loss(loss_fn: LossFn, predictions: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked mean of ``loss_fn`` over one task's rows.

    Padded predictions and targets are zeroed before the loss, not only masked
    after it: a NaN target in a padded row would otherwise reach the gradient
    (as ``0 * d loss / d prediction = 0 * nan``).
    """
    return masked_mean(loss_fn(jnp.where(mask, predictions, 0), jnp.where(mask, targets, 0)), mask)


def zero_padded_rows(x, mask: jax.Array):
    """``x`` (a pytree of ``[rows, ...]`` leaves) with the rows where ``mask`` is False zeroed."""
    return jax.tree.map(lambda a: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, 0), x)


def rows_loss(model: Model, loss_fn: LossFn, params: Params, x, y, mask) -> jax.Array:
    """Masked mean loss of ``model`` over one task's rows; padded inputs are zeroed
    too, so that nothing non-finite in a padded row reaches a value or gradient."""
    return masked_loss(loss_fn, model.apply(params, zero_padded_rows(x, mask)), y, mask)


def support_loss(model: Model, loss_fn: LossFn, params: Params, task: TaskBatch) -> jax.Array:
    """:func:`rows_loss` over one task's support rows."""
    return rows_loss(model, loss_fn, params, task.support_x, task.support_y, task.support_mask)


def query_loss(model: Model, loss_fn: LossFn, params: Params, task: TaskBatch) -> jax.Array:
    """:func:`rows_loss` over one task's query rows."""
    return rows_loss(model, loss_fn, params, task.query_x, task.query_y, task.query_mask)


def embed_stage(model: Model, is_fast: Callable) -> tuple[Model, Callable[[Params, TaskBatch], TaskBatch]]:
    """``(inner_model, embed)``: how an algorithm runs a task's inner loop.

    When the model has an input stage that reads only slow weights
    (:meth:`jaxmeta.models.Model.staged`), ``embed(params, task)`` replaces the
    task's inputs by their features, computed once (padded rows zeroed first,
    as :func:`rows_loss` does), and ``inner_model`` applies the rest of the
    model to them: the inner steps then never repeat the embedding lookups, and
    the meta-gradient reaches the tables once per user rather than once per
    inner step. Otherwise ``embed`` returns the task unchanged and
    ``inner_model`` is ``model``.
    """
    if not model.staged(is_fast):
        return model, lambda params, task: task

    def embed(params: Params, task: TaskBatch) -> TaskBatch:
        features = lambda x, mask: model.stage.embed(params, zero_padded_rows(x, mask))  # noqa: E731
        return task._replace(support_x=features(task.support_x, task.support_mask),
                             query_x=features(task.query_x, task.query_mask))

    return model._replace(apply=model.stage.apply_embedded, stage=None), embed


def split_fast(params: Params, is_fast: Callable) -> tuple[Params, Params]:
    """``(fast, slow)`` parts of ``params`` under the path predicate ``is_fast``."""
    return partition(params, mask_where(params, is_fast))


def frozen(outer_optimizer: optax.GradientTransformation, is_frozen: Callable) -> optax.GradientTransformation:
    """``outer_optimizer`` with the model parameters at the paths ``is_frozen`` held where they start.

    Their meta-gradients are zeroed before ``outer_optimizer`` sees them (so they
    count in no clip by global norm or moment), and their updates after it (so no
    decoupled weight decay moves them either); the rest of ``(params, hyper)`` is
    updated as before. For parameters set from a classic fit (hybrid MeLU's item
    rows from ALS) that meta-training should build on, not move.

    Example:
      >>> import jax.numpy as jnp
      >>> opt = frozen(optax.sgd(1.0), lambda path: path[0] == "items")
      >>> meta = ({"items": jnp.ones(2), "user": jnp.ones(2)}, None)
      >>> updates, _ = opt.update(meta, opt.init(meta), meta)  # gradients equal to the parameters
      >>> params = optax.apply_updates(meta[0], updates[0])
      >>> params["items"].tolist(), params["user"].tolist()
      ([1.0, 1.0], [0.0, 0.0])
    """
    def mask(meta):
        params, hyper = meta
        return mask_where(params, is_frozen), jax.tree.map(lambda _: False, hyper)

    return optax.chain(optax.masked(optax.set_to_zero(), mask), outer_optimizer,
                       optax.masked(optax.set_to_zero(), mask))


def fast_shapes(model: Model, is_fast: Callable) -> Params:
    """The shapes of the fast part of ``model``'s parameters (``None`` at slow leaves)."""
    return split_fast(model.param_shapes(), is_fast)[0]


def has_rows(mask: jax.Array) -> jax.Array:
    """bool ``[]``: whether one task's ``mask`` (``[rows]``) keeps any row; False
    for a user without support rows, whom the inner loop leaves unadapted
    (``active`` of :func:`jaxmeta.inner.inner_adapt`)."""
    return jnp.any(mask)


def _at(tree, path):
    for key in path:
        tree = tree[int(key)] if isinstance(tree, list | tuple) else tree[key]
    return tree


def _replace_at(tree, path, value):
    if not path:
        return value
    key, rest = path[0], path[1:]
    if isinstance(tree, list | tuple):
        items = list(tree)
        items[int(key)] = _replace_at(items[int(key)], rest, value)
        return type(tree)(items)
    return {**tree, key: _replace_at(tree[key], rest, value)}


def kernel_adapter(model: Model, is_fast: Callable, loss_fn: LossFn, *, inner_lr: float | None, inner_steps: int,
                   backend: str, who: str) -> Callable | None:
    """How an algorithm's inner loop runs: ``None`` for XLA, or ``run`` for the fused
    Pallas kernel (:func:`jaxmeta.kernels.fused_adapt_task`).

    ``run(fast, support_x, support_y, support_mask, query_x, *, with_weights)`` takes
    one embedded task and returns ``(adapted fast weights or None, query predictions,
    inner losses)``. The kernel applies when the model declares its MLP on features
    (:attr:`jaxmeta.models.Stage.mlp`), is staged under ``is_fast``, its fast weights
    are exactly that MLP's layers, the inner optimizer is plain SGD (``inner_lr``,
    from :func:`jaxmeta.algorithms._defaults.inner_optimizer_of`) and the loss is
    mean squared error. ``backend="pallas"`` asks for it (interpret mode without a
    GPU) and raises where it does not apply; ``"auto"`` takes it where it applies
    on a GPU, XLA otherwise; ``"xla"`` never.
    """
    if check_backend(backend, who=who) == "xla":
        return None
    why = []
    mlp = None if model.stage is None else model.stage.mlp
    if mlp is None:
        why.append("the model declares no MLP on features (Stage.mlp; melu and embedding_mlp do)")
    elif not model.staged(is_fast):
        why.append("the model has no input stage that stays slow (Model.stage, its tables not fast)")
    else:
        shapes = model.param_shapes()
        in_mlp = mask_where(shapes, lambda path: path[: len(mlp)] == tuple(mlp))
        if jax.tree.leaves(in_mlp) != jax.tree.leaves(mask_where(shapes, lambda path: bool(is_fast(path)))):
            why.append("its fast weights are not exactly the layers of Stage.mlp (pass is_fast=None)")
        elif len(_at(shapes, mlp)) < 2:
            why.append("its MLP has no hidden layer")
    if inner_lr is None:
        why.append("the inner optimizer is not plain SGD (pass a number, e.g. inner_optimizer=0.03, or optax.sgd)")
    if loss_fn is not squared_error:
        why.append("the loss is not 'mse'")
    if why or (backend == "auto" and jax.default_backend() != "gpu"):
        if backend == "pallas":
            raise ValueError(f"{who}(backend='pallas'): the fused kernel does not apply: {'; '.join(why)}. "
                             "Fix that, or pass backend='xla'.")
        return None
    from jaxmeta.kernels import fused_adapt_task

    def run(fast, support_x, support_y, support_mask, query_x, *, with_weights: bool = True):
        out = fused_adapt_task(support_x, support_y, support_mask, query_x, _at(fast, mlp), lr=inner_lr,
                               steps=inner_steps, with_weights=with_weights)
        adapted = _replace_at(fast, mlp, out.layers) if with_weights else None
        return adapted, out.predictions, out.losses

    return run


def all_rows(task: TaskBatch):
    """One task's support and query rows together: ``(x, y, mask)``."""
    join = lambda a, b: jnp.concatenate([a, b], axis=0)  # noqa: E731
    return (
        jax.tree.map(join, task.support_x, task.query_x),
        join(task.support_y, task.query_y),
        join(task.support_mask, task.query_mask),
    )


def tree_vdot(a, b) -> jax.Array:
    """Sum of elementwise products over all (non-``None``) leaves."""
    return sum((jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), 0.0)


def _chunks(batch: TaskBatch, chunk_size: int) -> TaskBatch:
    """Pads the task axis to a multiple of ``chunk_size`` with empty tasks, then folds
    it into ``[num_chunks, chunk_size, ...]``."""
    n = batch.num_tasks
    padded = -(-n // chunk_size) * chunk_size

    def fold(a):
        a = jnp.pad(a, [(0, padded - n)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape((padded // chunk_size, chunk_size) + a.shape[1:])

    return jax.tree.map(fold, batch)


def _unfold(tree, n: int):
    """Inverse of the task folding of :func:`_chunks`: the first ``n`` tasks (all
    of them, padding included, for ``n = -1``)."""
    return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[: None if n < 0 else n], tree)


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: pass a positive number of users per chunk, or None.")


def map_tasks(fn: Callable[[TaskBatch], Any], batch: TaskBatch, chunk_size: int | None = None):
    """``jax.vmap(fn)(batch)``, computed ``chunk_size`` tasks at a time when given."""
    _check_chunk_size(chunk_size)
    if chunk_size is None or chunk_size >= batch.num_tasks:
        return jax.vmap(fn)(batch)
    return _unfold(jax.lax.map(jax.vmap(fn), _chunks(batch, chunk_size)), batch.num_tasks)


def _fill_padding_tasks(batch: TaskBatch, valid: jax.Array) -> TaskBatch:
    """Gives each padding task (``valid`` False) the rows of the first real task.

    Their objective is masked out with a zero cotangent, but a zero cotangent
    times an infinite local derivative is NaN: an all-masked task has an exactly
    zero support gradient, where inner optimizers such as global-norm clipping
    have no derivative. Real rows keep every such derivative finite. (A real
    user without support rows is kept finite by the inner loop itself: see
    ``active`` in :func:`jaxmeta.inner.inner_adapt`.)
    """
    source = jnp.where(valid, jnp.arange(valid.shape[0]), jnp.argmax(valid))
    return jax.tree.map(lambda a: a[source], batch)


def mean_task_grad(
    objective: Callable[[Meta, TaskBatch], tuple[jax.Array, Metrics]],
    meta: Meta,
    batch: TaskBatch,
    chunk_size: int | None = None,
) -> tuple[Meta, Metrics]:
    """Mean over real tasks of ``grad objective``, and the mean of its metrics.

    With ``chunk_size``, gradients are accumulated chunk by chunk in a ``scan``, so
    the backward pass holds the intermediates of one chunk only. A batch with no
    real task gives zero gradients.
    """
    _check_chunk_size(chunk_size)
    n = batch.num_tasks
    chunked = chunk_size is not None and chunk_size < n
    if chunked:
        batch = _unfold(_chunks(batch, chunk_size), -1)  # pad the task axis to whole chunks
    valid = task_mask(batch)
    batch = _fill_padding_tasks(batch, valid)

    def chunk_grad(chunk: TaskBatch, chunk_valid: jax.Array):
        def total(m):
            values, aux = jax.vmap(objective, in_axes=(None, 0))(m, chunk)
            return jnp.sum(jnp.where(chunk_valid, values, 0)), aux

        (_, aux), grads = jax.value_and_grad(total, has_aux=True)(meta)
        return grads, aux

    if not chunked:
        grads, aux = chunk_grad(batch, valid)
    else:

        def body(acc, chunk_and_valid):
            grads, aux = chunk_grad(*chunk_and_valid)
            return jax.tree.map(jnp.add, acc, grads), aux

        fold = lambda a: a.reshape((-1, chunk_size) + a.shape[1:])  # noqa: E731
        zeros = jax.tree.map(jnp.zeros_like, meta)
        grads, aux = jax.lax.scan(body, zeros, jax.tree.map(fold, (batch, valid)))
        aux = _unfold(aux, -1)
    count = valid.sum()
    grads = jax.tree.map(lambda g: jnp.where(count > 0, g / jnp.maximum(count, 1).astype(g.dtype), 0), grads)
    metrics = {k: masked_mean(v, valid) for k, v in aux.items()}
    metrics["tasks"] = count
    return grads, metrics


def build(
    model: Model,
    *,
    loss_fn: LossFn,
    objective: Callable[[Meta, TaskBatch], tuple[jax.Array, Metrics]],
    adapt_task: Callable[[Meta, TaskBatch], tuple[Params, jax.Array]],
    is_fast: Callable,
    outer_optimizer: optax.GradientTransformation,
    chunk_size: int | None = None,
    init_hyper: Callable[[Params], Any] = lambda params: (),
    predict_task: Callable[[Meta, TaskBatch], jax.Array] | None = None,
) -> MetaLearner:
    """Assembles a :class:`MetaLearner` from an algorithm's per-task functions.

    Args:
      model: the model.
      loss_fn: elementwise loss, used by ``evaluate``.
      objective: per-task meta-objective, see the module docstring.
      adapt_task: per-task adaptation, see the module docstring.
      is_fast: path predicate of the adapted weights.
      outer_optimizer: optax transformation of ``(params, hyper)``.
      chunk_size: users per chunk inside the compiled functions (``None``: all).
      init_hyper: ``init_hyper(params) -> hyper``.
      predict_task: ``predict_task(meta, task) -> [query]``, the task's query
        predictions after adaptation, for ``predict`` and ``evaluate``; default:
        the model applied with the weights of ``adapt_task``.
    """
    _check_chunk_size(chunk_size)

    def init(key: jax.Array) -> MetaState:
        params = model.init(key)
        hyper = init_hyper(params)
        return MetaState(params, hyper, outer_optimizer.init((params, hyper)), jnp.zeros((), jnp.int32))

    @jax.jit
    def step(state: MetaState, batch: TaskBatch):
        meta = (state.params, state.hyper)
        grads, metrics = mean_task_grad(objective, meta, batch, chunk_size)
        updates, opt_state = outer_optimizer.update(grads, state.opt_state, meta)
        params, hyper = optax.apply_updates(meta, updates)
        return MetaState(params, hyper, opt_state, state.step + 1), metrics

    @jax.jit
    def adapt(state: MetaState, batch: TaskBatch):
        meta = (state.params, state.hyper)
        return map_tasks(lambda task: adapt_task(meta, task)[0], batch, chunk_size)

    def adapted_predictions(state: MetaState, task: TaskBatch) -> jax.Array:
        meta = (state.params, state.hyper)
        if predict_task is not None:
            return predict_task(meta, task)
        fast, _ = adapt_task(meta, task)
        return model.apply(combine(fast, split_fast(state.params, is_fast)[1]), task.query_x)

    @jax.jit
    def evaluate(state: MetaState, batch: TaskBatch) -> Metrics:
        def one(task):
            after = masked_loss(loss_fn, adapted_predictions(state, task), task.query_y, task.query_mask)
            return {"query_loss_before": query_loss(model, loss_fn, state.params, task), "query_loss_after": after}

        per_task = map_tasks(one, batch, chunk_size)
        valid = task_mask(batch)
        return {k: masked_mean(v, valid) for k, v in per_task.items()} | {"tasks": valid.sum()}

    @jax.jit
    def predict(state: MetaState, batch: TaskBatch) -> jax.Array:
        return map_tasks(lambda task: adapted_predictions(state, task), batch, chunk_size)

    @jax.jit
    def apply_adapted(state: MetaState, fast: Params, x: Any) -> jax.Array:
        slow = split_fast(state.params, is_fast)[1]
        return jax.vmap(lambda f, rows: model.apply(combine(f, slow), rows))(fast, x)

    return MetaLearner(init, step, adapt, evaluate, predict, is_fast, apply_adapted)
