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

import optax

from jaxmeta.algorithms._core import MetaLearner, build, query_loss, split_fast, support_loss
from jaxmeta.inner import inner_adapt
from jaxmeta.losses import LossFn, get_loss
from jaxmeta.models import Model, combine

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
) -> MetaLearner:
    """MAML with the inner optimizer made from the meta-learned ``hyper``.

    ``inner_optimizer(hyper)`` builds the inner transformation inside the traced
    step, so meta-learned hyper-parameters (Meta-SGD's learning rates) receive
    gradients like any parameter. :func:`maml`, :func:`jaxmeta.algorithms.anil` and
    :func:`jaxmeta.algorithms.metasgd` are this with different arguments.
    """
    if inner_steps < 1:
        raise ValueError(f"inner_steps={inner_steps}: meta-learning needs at least one inner step.")
    loss_fn = get_loss(loss)
    is_fast = model.is_fast if is_fast is None else is_fast

    def adapt(meta, task, *, first_order=False, remat=False):
        params, hyper = meta
        fast, slow = split_fast(params, is_fast)
        adapted, losses = inner_adapt(
            lambda f: support_loss(model, loss_fn, combine(f, slow), task),
            fast,
            optimizer=inner_optimizer(hyper),
            steps=inner_steps,
            first_order=first_order,
            remat=remat,
        )
        return (adapted, slow), losses

    def objective(meta, task):
        (adapted, slow), losses = adapt(meta, task, first_order=first_order, remat=remat)
        value = query_loss(model, loss_fn, combine(adapted, slow), task)
        return value, {"loss": value, "inner_loss": losses[0]}

    def adapt_task(meta, task):
        (adapted, _), losses = adapt(meta, task)
        return adapted, losses

    return build(
        model,
        loss_fn=loss_fn,
        objective=objective,
        adapt_task=adapt_task,
        is_fast=is_fast,
        outer_optimizer=outer_optimizer,
        chunk_size=chunk_size,
        init_hyper=init_hyper,
    )


def maml(
    model: Model,
    *,
    inner_optimizer: optax.GradientTransformation = DEFAULT_INNER_OPTIMIZER,
    inner_steps: int = DEFAULT_INNER_STEPS,
    outer_optimizer: optax.GradientTransformation = optax.adam(1e-3),
    loss: str | LossFn = "mse",
    first_order: bool = False,
    remat: bool = False,
    chunk_size: int | None = None,
    is_fast: Callable | None = None,
) -> MetaLearner:
    """Model-agnostic meta-learning, second order unless ``first_order``.

    Args:
      model: the model; its ``is_fast`` leaves are adapted per user.
      inner_optimizer: optax transformation of the inner loop (plain SGD, lr 0.03,
        by default); its state starts fresh for every user. For Adam in second
        order, pass ``eps_root > 0`` (see :func:`jaxmeta.inner.inner_adapt`).
      inner_steps: inner steps ``K`` on the support set.
      outer_optimizer: optax transformation of the meta-parameters.
      loss: ``"mse"`` (ratings), ``"bce"`` (clicks, model outputs logits) or an
        elementwise callable ``loss(predictions, targets)``.
      first_order: drop second-order terms (first-order MAML).
      remat: recompute each inner step in the backward pass to bound memory.
      chunk_size: process the users of a batch this many at a time.
      is_fast: override the model's fast-weight predicate.

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
    return maml_family(
        model,
        inner_optimizer=lambda hyper: inner_optimizer,
        inner_steps=inner_steps,
        outer_optimizer=outer_optimizer,
        loss=loss,
        first_order=first_order,
        remat=remat,
        chunk_size=chunk_size,
        is_fast=is_fast,
    )


def fomaml(model: Model, **kwargs) -> MetaLearner:
    """First-order MAML: :func:`maml` with ``first_order=True`` (same arguments)."""
    if "first_order" in kwargs:
        raise TypeError("fomaml is always first order: call maml(..., first_order=...) instead.")
    return maml(model, first_order=True, **kwargs)
