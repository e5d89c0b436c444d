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
    kernel_adapter,
    masked_loss,
    query_loss,
    split_fast,
    support_loss,
)
from jaxmeta.inner import dense_outputs, dense_weights, inner_adapt, inner_adapt_dense
from jaxmeta.losses import LossFn, get_loss
from jaxmeta.models import Model, combine, mask_where, partition, path_names

DEFAULT_INNER_OPTIMIZER = optax.sgd(0.03)
DEFAULT_INNER_STEPS = 5


def maml_family(
    model: Model,
    *,
    inner_optimizer: Callable[[Any], optax.GradientTransformation],
    inner_steps: int,
    outer_optimizer: optax.GradientTransformation,
    loss: str | LossFn,
    first_order: bool,
    remat: bool,
    chunk_size: int | None,
    is_fast: Callable | None,
    init_hyper: Callable[[Any], Any] = lambda params: (),
    inner_lr: float | None = None,
    backend: str = "xla",
) -> MetaLearner:
    """MAML with the inner optimizer made from the meta-learned ``hyper``.

    ``inner_optimizer(hyper)`` builds the inner transformation inside the traced
    step, so meta-learned hyper-parameters (Meta-SGD's learning rates) receive
    gradients like any parameter. :func:`maml`, :func:`jaxmeta.algorithms.anil` and
    :func:`jaxmeta.algorithms.metasgd` are this with different arguments.
    ``inner_lr``: the inner optimizer is plain SGD at this rate; a model with a
    fast dense layer on its features (:meth:`jaxmeta.models.Model.dense_fast`)
    then adapts it in closed form (:func:`jaxmeta.inner.inner_adapt_dense`).
    ``backend``: see :func:`maml`.
    """
    if inner_steps < 1:
        raise ValueError(f"inner_steps={inner_steps}: meta-learning needs at least one inner step.")
    loss_fn = get_loss(loss)
    is_fast = model.is_fast if is_fast is None else is_fast
    inner_model, embed = embed_stage(model, is_fast)
    kernel = kernel_adapter(model, is_fast, loss_fn, inner_lr=inner_lr, inner_steps=inner_steps, backend=backend,
                            who="maml")

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
    is_dense = lambda path: path[: len(model.dense)] == tuple(model.dense)  # noqa: E731

    def adapt(meta, task, *, first_order=False, remat=False):
        fast, slow = split_fast(meta[0], is_fast)
        task = embed(slow, task)
        layer, rest = partition(fast, mask_where(fast, is_dense))
        named = {path_names(p)[-1]: x for p, x in jax.tree_util.tree_leaves_with_path(layer)}
        support = lambda z, r: masked_loss(  # noqa: E731
            loss_fn, model.after_dense(combine(r, slow), z), task.support_y, task.support_mask)
        result = inner_adapt_dense(support, task.support_x, named["w"], named["b"], rest, learning_rate=inner_lr,
                                   steps=inner_steps, first_order=first_order, remat=remat)
        return result, layer, named, slow, task

    def query(meta, task, *, first_order=False, remat=False):
        result, _, named, slow, task = adapt(meta, task, first_order=first_order, remat=remat)
        z = dense_outputs(task.query_x, task.support_x, named["w"], named["b"], result.total,
                          learning_rate=inner_lr, first_order=first_order)
        return model.after_dense(combine(result.rest, slow), z), result.losses, task

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


def inner_sgd(inner_optimizer: optax.GradientTransformation | float) -> tuple[optax.GradientTransformation,
                                                                              float | None]:
    """``(transformation, rate)``: a number is plain SGD at that rate (``rate`` is the
    number, which unlocks the closed-form layer and the Pallas kernel); any optax
    transformation passes through with ``rate`` None."""
    if isinstance(inner_optimizer, int | float):
        if not inner_optimizer > 0:
            raise ValueError(f"inner_optimizer={inner_optimizer}: pass a positive SGD rate or an optax transformation.")
        return optax.sgd(float(inner_optimizer)), float(inner_optimizer)
    return inner_optimizer, None


def maml(
    model: Model,
    *,
    inner_optimizer: optax.GradientTransformation | float = DEFAULT_INNER_OPTIMIZER,
    inner_steps: int = DEFAULT_INNER_STEPS,
    outer_optimizer: optax.GradientTransformation = optax.adam(1e-3),
    loss: str | LossFn = "mse",
    first_order: bool = False,
    remat: bool = False,
    chunk_size: int | None = None,
    is_fast: Callable | None = None,
    backend: str = "xla",
) -> MetaLearner:
    """Model-agnostic meta-learning, second order unless ``first_order``.

    Args:
      model: the model; its ``is_fast`` leaves are adapted per user.
      inner_optimizer: optax transformation of the inner loop (plain SGD, lr 0.03,
        by default); its state starts fresh for every user. For Adam in second
        order, pass ``eps_root > 0`` (see :func:`jaxmeta.inner.inner_adapt`). A
        number is plain SGD at that rate, which lets a model with a fast dense
        layer on its features (MeLU, :func:`jaxmeta.models.embedding_mlp`) adapt
        that layer in closed form (:func:`jaxmeta.inner.inner_adapt_dense`; the
        same result, several times faster).
      inner_steps: inner steps ``K`` on the support set.
      outer_optimizer: optax transformation of the meta-parameters.
      loss: ``"mse"`` (ratings), ``"bce"`` (clicks, model outputs logits) or an
        elementwise callable ``loss(predictions, targets)``.
      first_order: drop second-order terms (first-order MAML).
      remat: recompute each inner step in the backward pass to bound memory.
      chunk_size: process the users of a batch this many at a time.
      is_fast: override the model's fast-weight predicate.
      backend: ``"xla"`` (default) or ``"pallas"``: adapt users with the fused
        Pallas kernel (:mod:`jaxmeta.kernels`; Triton on a GPU, interpret mode
        elsewhere) in ``adapt``, ``predict``, ``evaluate`` and, when
        ``first_order``, the training step (the second-order step stays on XLA).
        It needs a model that declares its MLP on features
        (:attr:`jaxmeta.models.Model.mlp`: MeLU, ``embedding_mlp``) with exactly
        that MLP fast, ``inner_optimizer`` a number and ``loss="mse"``, and raises
        otherwise. ``"auto"``: the kernel where it applies and the default
        backend is a GPU, XLA otherwise.

    Returns:
      A :class:`jaxmeta.algorithms.MetaLearner`.

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
    inner_optimizer, inner_lr = inner_sgd(inner_optimizer)
    return maml_family(
        model,
        inner_optimizer=lambda hyper: inner_optimizer,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        outer_optimizer=outer_optimizer,
        loss=loss,
        first_order=first_order,
        remat=remat,
        chunk_size=chunk_size,
        is_fast=is_fast,
        backend=backend,
    )


def fomaml(model: Model, **kwargs) -> MetaLearner:
    """First-order MAML: :func:`maml` with ``first_order=True`` (same arguments)."""
    if "first_order" in kwargs:
        raise TypeError("fomaml is always first order: call maml(..., first_order=...) instead.")
    return maml(model, first_order=True, **kwargs)
