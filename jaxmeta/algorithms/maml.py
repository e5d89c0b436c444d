"""MAML and first-order MAML.

Per user: adapt the fast weights with ``K`` inner steps on the support loss,
then score the adapted model on the query set. The meta-gradient of the query
loss flows back through the inner loop to the fast-weight initialisation and to
the slow weights (the shared embeddings), with all second-order terms; the
first-order variant drops them (each inner gradient is a constant).

References:
  Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of
  Deep Networks", ICML 2017.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from jaxmeta.algorithms._core import (
    MetaLearner,
    build,
    embed_stage,
    fast_shapes,
    has_rows,
    kernel_adapter,
    masked_loss,
    query_loss,
    split_fast,
    support_loss,
)
from jaxmeta.algorithms._defaults import (
    DEFAULT_BACKEND,
    DEFAULT_INNER_OPTIMIZER,
    DEFAULT_INNER_STEPS,
    DEFAULT_LOSS,
    DEFAULT_OUTER_OPTIMIZER,
    InnerOptimizer,
    check_inner_steps,
    inner_optimizer_of,
    refuse,
)
from jaxmeta.inner import dense_outputs, dense_weights, inner_adapt, inner_adapt_dense
from jaxmeta.losses import LossFn, get_loss
from jaxmeta.models import Model, combine, mask_where, partition, path_names


def maml_family(
    model: Model,
    *,
    who: str,
    inner_optimizer: Callable[[Any], optax.GradientTransformation],
    inner_lr: float | None,
    inner_steps: int,
    outer_optimizer: optax.GradientTransformation,
    loss: str | LossFn,
    first_order: bool,
    remat: bool,
    chunk_size: int | None,
    is_fast: Callable,
    backend: str,
    init_hyper: Callable[[Any], Any] = lambda params: (),
) -> MetaLearner:
    """MAML with the inner optimizer made from the meta-learned ``hyper``.

    ``inner_optimizer(hyper)`` builds the inner transformation inside the traced
    step, so meta-learned hyper-parameters (Meta-SGD's learning rates) receive
    gradients like any parameter. :func:`maml`, :func:`fomaml`,
    :func:`jaxmeta.algorithms.anil` and :func:`jaxmeta.algorithms.metasgd` are
    this with different arguments. ``inner_lr``: the inner optimizer is plain SGD
    at this rate (:func:`jaxmeta.algorithms._defaults.inner_optimizer_of`); a
    model with a fast dense layer on its features
    (:meth:`jaxmeta.models.Model.dense_fast`) then adapts it in closed form
    (:func:`jaxmeta.inner.inner_adapt_dense`), and ``backend`` may run the
    fused kernel. ``who`` names the algorithm in errors.

    A user without support rows is not adapted: the inner loop leaves its fast
    weights as they are (``active`` of :func:`jaxmeta.inner.inner_adapt`), so
    its predictions, loss and meta-gradient are those of the unadapted model.
    """
    inner_steps = check_inner_steps(inner_steps, who=who)
    loss_fn = get_loss(loss)
    inner_model, embed = embed_stage(model, is_fast)
    kernel = kernel_adapter(model, is_fast, loss_fn, inner_lr=inner_lr, inner_steps=inner_steps, backend=backend,
                            who=who)

    def adapt(meta, task, *, first_order=False, remat=False):
        params, hyper = meta
        fast, slow = split_fast(params, is_fast)
        task = embed(slow, task)
        adapted, losses = inner_adapt(
            lambda f: support_loss(inner_model, loss_fn, combine(f, slow), task),
            fast,
            optimizer=inner_optimizer(hyper),
            steps=inner_steps,
            first_order=first_order,
            remat=remat,
            active=has_rows(task.support_mask),
        )
        return adapted, slow, task, losses

    def objective(meta, task):
        adapted, slow, task, losses = adapt(meta, task, first_order=first_order, remat=remat)
        value = query_loss(inner_model, loss_fn, combine(adapted, slow), task)
        return value, {"loss": value, "inner_loss": losses[0]}

    def adapt_task(meta, task):
        adapted, _, _, losses = adapt(meta, task)
        return adapted, losses

    if inner_lr is not None and model.dense_fast(is_fast):
        tasks = _dense_maml(model, embed, inner_lr=inner_lr, inner_steps=inner_steps, loss_fn=loss_fn,
                            first_order=first_order, remat=remat, is_fast=is_fast)
    else:
        tasks = {"objective": objective, "adapt_task": adapt_task}
    if kernel is not None:
        tasks |= _kernel_maml(kernel, embed, loss_fn=loss_fn, first_order=first_order, is_fast=is_fast)
    return build(model, loss_fn=loss_fn, is_fast=is_fast, outer_optimizer=outer_optimizer, chunk_size=chunk_size,
                 init_hyper=init_hyper, **tasks)


def _kernel_maml(kernel: Callable, embed: Callable, *, loss_fn: LossFn, first_order: bool,
                 is_fast: Callable) -> dict[str, Callable]:
    """The per-task functions that run on the fused Pallas kernel (:func:`kernel_adapter`):
    adaptation and prediction always; the objective in first order only (the kernel's
    VJP is first order: the second-order step stays on XLA)."""

    def run(meta, task, with_weights):
        fast, slow = split_fast(meta[0], is_fast)
        task = embed(slow, task)
        return kernel(fast, task.support_x, task.support_y, task.support_mask, task.query_x,
                      with_weights=with_weights), task

    def adapt_task(meta, task):
        (adapted, _, losses), _ = run(meta, task, True)
        return adapted, losses

    tasks = {"adapt_task": adapt_task, "predict_task": lambda meta, task: run(meta, task, False)[0][1]}
    if first_order:

        def objective(meta, task):
            (_, predictions, losses), task = run(meta, task, False)
            value = masked_loss(loss_fn, predictions, task.query_y, task.query_mask)
            return value, {"loss": value, "inner_loss": losses[0]}

        tasks["objective"] = objective
    return tasks


def _dense_maml(model: Model, embed: Callable, *, inner_lr: float, inner_steps: int, loss_fn: LossFn,
                first_order: bool, remat: bool, is_fast: Callable) -> dict[str, Callable]:
    """The per-task functions of :func:`maml_family` for plain SGD on a model whose first
    fast layer is dense on its features: that layer is adapted in closed form (the
    same function, far less work)."""
    is_dense = lambda path: path[: len(model.stage.dense)] == tuple(model.stage.dense)  # noqa: E731

    def adapt(meta, task, *, first_order=False, remat=False):
        fast, slow = split_fast(meta[0], is_fast)
        task = embed(slow, task)
        layer, rest = partition(fast, mask_where(fast, is_dense))
        named = {path_names(p)[-1]: x for p, x in jax.tree_util.tree_leaves_with_path(layer)}
        support = lambda z, r: masked_loss(  # noqa: E731
            loss_fn, model.stage.after_dense(combine(r, slow), z), task.support_y, task.support_mask)
        result = inner_adapt_dense(support, task.support_x, named["w"], named["b"], rest, learning_rate=inner_lr,
                                   steps=inner_steps, first_order=first_order, remat=remat)
        return result, layer, named, slow, task

    def query(meta, task, *, first_order=False, remat=False):
        result, _, named, slow, task = adapt(meta, task, first_order=first_order, remat=remat)
        z = dense_outputs(task.query_x, task.support_x, named["w"], named["b"], result.total,
                          learning_rate=inner_lr, first_order=first_order)
        return model.stage.after_dense(combine(result.rest, slow), z), result.losses, task

    def objective(meta, task):
        predictions, losses, task = query(meta, task, first_order=first_order, remat=remat)
        value = masked_loss(loss_fn, predictions, task.query_y, task.query_mask)
        return value, {"loss": value, "inner_loss": losses[0]}

    def adapt_task(meta, task):
        result, layer, named, _, task = adapt(meta, task)
        weights = dict(zip(("w", "b"), dense_weights(task.support_x, named["w"], named["b"], result.total,
                                                    learning_rate=inner_lr)))
        layer = jax.tree_util.tree_map_with_path(lambda p, _: weights[path_names(p)[-1]], layer)
        return combine(layer, result.rest), result.losses

    return {"objective": objective, "adapt_task": adapt_task, "predict_task": lambda meta, task: query(meta, task)[0]}


def sgd_maml(
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
    is_fast: Callable,
    backend: str,
) -> MetaLearner:
    """:func:`maml_family` with one inner optimizer for every user (MAML, FOMAML, ANIL)."""
    inner = inner_optimizer_of(inner_optimizer, fast_shapes(model, is_fast), who=who)
    return maml_family(model, who=who, inner_optimizer=lambda hyper: inner.optimizer, inner_lr=inner.rate,
                       inner_steps=inner_steps, outer_optimizer=outer_optimizer, loss=loss, first_order=first_order,
                       remat=remat, chunk_size=chunk_size, is_fast=is_fast, backend=backend)


def maml(
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
) -> MetaLearner:
    """Model-agnostic meta-learning, second order unless ``first_order``.

    Padding: padded rows and padding users change no result (the engine's
    masked losses, :mod:`jaxmeta.algorithms._core`); a real user without
    support rows is not adapted, and is predicted by the meta-learned model as
    it is.

    Args:
      model: the model; its ``is_fast`` leaves are adapted per user.
      inner_optimizer: the inner loop's optax transformation, or a number: plain
        SGD at that rate (default 0.03). Its state starts fresh for every user.
        Plain SGD, given either way, lets a model with a fast dense layer on its
        features (MeLU, :func:`jaxmeta.models.embedding_mlp`) adapt that layer
        in closed form (:func:`jaxmeta.inner.inner_adapt_dense`; the same
        result, several times faster). For Adam in second order, pass
        ``eps_root > 0`` (see :func:`jaxmeta.inner.inner_adapt`).
      inner_steps: inner steps ``K`` on the support set (default 5).
      outer_optimizer: optax transformation of the meta-parameters (default
        ``optax.adam(1e-3)``).
      loss: ``"mse"`` (ratings, the default), ``"mae"`` or ``"huber"`` (ratings),
        ``"bce"`` (clicks, model outputs logits) or an elementwise callable
        ``loss(predictions, targets)``.
      first_order: drop second-order terms (first-order MAML).
      remat: recompute each inner step in the backward pass to bound memory.
      chunk_size: process the users of a batch this many at a time (default: all).
      is_fast: override the model's fast-weight predicate.
      backend: ``"xla"`` (default) or ``"pallas"``: adapt users with the fused
        Pallas kernel (:mod:`jaxmeta.kernels`; Triton on a GPU, interpret mode
        elsewhere) in ``adapt``, ``predict``, ``evaluate`` and, when
        ``first_order``, the training step (the second-order step stays on XLA).
        It needs a model that declares its MLP on features
        (:attr:`jaxmeta.models.Stage.mlp`: MeLU, ``embedding_mlp``) with exactly
        that MLP fast, plain SGD and ``loss="mse"``, and raises otherwise.
        ``"auto"``: the kernel where it applies and the default backend is a
        GPU, XLA otherwise.

    Returns:
      A :class:`jaxmeta.algorithms.MetaLearner`.

    Raises:
      ValueError: an option with a bad value (naming it), or ``backend="pallas"``
        where the kernel does not apply.

    Example:
      >>> import jax
      >>> from jaxmeta.data import synthetic
      >>> from jaxmeta.models import embedding_mlp
      >>> from jaxmeta.tasks import pad_tasks
      >>> data = synthetic.generate(num_train_users=8, num_new_users=2, seed=0)
      >>> learner = maml(embedding_mlp(data.vocab_sizes), inner_steps=2)
      >>> state = learner.init(jax.random.key(0))
      >>> state, metrics = learner.step(state, pad_tasks(data.train))
      >>> sorted(metrics), int(metrics["tasks"])
      (['inner_loss', 'loss', 'tasks'], 8)
    """
    return sgd_maml(model, who="maml", inner_optimizer=inner_optimizer, inner_steps=inner_steps,
                    outer_optimizer=outer_optimizer, loss=loss, first_order=first_order, remat=remat,
                    chunk_size=chunk_size, is_fast=model.is_fast if is_fast is None else is_fast, backend=backend)


def fomaml(
    model: Model,
    *,
    inner_optimizer: InnerOptimizer = DEFAULT_INNER_OPTIMIZER,
    inner_steps: int = DEFAULT_INNER_STEPS,
    outer_optimizer: optax.GradientTransformation = DEFAULT_OUTER_OPTIMIZER,
    loss: str | LossFn = DEFAULT_LOSS,
    first_order: None = None,
    remat: bool = False,
    chunk_size: int | None = None,
    is_fast: Callable | None = None,
    backend: str = DEFAULT_BACKEND,
) -> MetaLearner:
    """First-order MAML: :func:`maml` with ``first_order=True``.

    Args:
      first_order: does not apply (fomaml is always first order); raises a
        ValueError if set. Call ``maml(..., first_order=...)`` to choose.
      Others as in :func:`maml`.

    Example:
      >>> from jaxmeta.models import embedding_mlp
      >>> learner = fomaml(embedding_mlp([3, 5]), inner_optimizer=0.1, inner_steps=2)
    """
    refuse(who="fomaml", why="fomaml is always first order; call maml(..., first_order=...) to choose",
           first_order=first_order)
    return sgd_maml(model, who="fomaml", inner_optimizer=inner_optimizer, inner_steps=inner_steps,
                    outer_optimizer=outer_optimizer, loss=loss, first_order=True, remat=remat,
                    chunk_size=chunk_size, is_fast=model.is_fast if is_fast is None else is_fast, backend=backend)
