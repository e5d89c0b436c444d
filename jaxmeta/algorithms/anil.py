"""ANIL: almost no inner loop — adapt only the output head per user.

Everything below the head (the body and the embeddings) is meta-learned only,
which makes the inner loop and its second-order gradient cheap.

References:
  Raghu, Raghu, Bengio, Vinyals, "Rapid Learning or Feature Reuse? Towards
  Understanding the Effectiveness of MAML", ICLR 2020.
"""

from __future__ import annotations

from collections.abc import Callable

import optax

from jaxmeta.algorithms._core import MetaLearner
from jaxmeta.algorithms._defaults import (
    DEFAULT_BACKEND,
    DEFAULT_INNER_OPTIMIZER,
    DEFAULT_INNER_STEPS,
    DEFAULT_LOSS,
    DEFAULT_OUTER_OPTIMIZER,
    InnerOptimizer,
    refuse,
)
from jaxmeta.algorithms.maml import sgd_maml
from jaxmeta.losses import LossFn
from jaxmeta.models import Model


def anil(
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
    """:func:`jaxmeta.algorithms.maml` adapting the model's head (``model.is_head``) only.

    A head that is the model's first dense layer on its features (a model
    without hidden layers) is adapted in closed form under plain SGD, as in MAML.

    Args:
      is_fast: does not apply (ANIL adapts ``model.is_head``); raises a
        ValueError if set. Build the Model with the ``is_head`` you want, or
        call ``maml(..., is_fast=...)``.
      Others as in :func:`jaxmeta.algorithms.maml`.

    Raises:
      ValueError: the model has no ``is_head``, ``is_fast`` is set, or as
        :func:`jaxmeta.algorithms.maml`.

    Example:
      >>> from jaxmeta.models import embedding_mlp
      >>> learner = anil(embedding_mlp([3, 5]), inner_optimizer=0.1)
      >>> learner.is_fast(("layers", "2", "w")), learner.is_fast(("layers", "0", "w"))
      (True, False)
    """
    if model.is_head is None:
        raise ValueError("anil needs a model with is_head set: build the Model with is_head=<path predicate>.")
    refuse(who="anil", why="anil adapts the model's head (Model.is_head); build the Model with the is_head you "
           "want, or call maml(..., is_fast=...)", is_fast=is_fast)
    return sgd_maml(model, who="anil", inner_optimizer=inner_optimizer, inner_steps=inner_steps,
                    outer_optimizer=outer_optimizer, loss=loss, first_order=first_order, remat=remat,
                    chunk_size=chunk_size, is_fast=model.is_head, backend=backend)
