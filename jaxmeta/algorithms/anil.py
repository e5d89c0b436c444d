"""ANIL: almost no inner loop — adapt only the output head per user.

Everything below the head (the body and the embeddings) is meta-learned only,
which makes the inner loop and its second-order gradient cheap.

References:
  Raghu, Raghu, Bengio, Vinyals, "Rapid Learning or Feature Reuse? Towards
  Understanding the Effectiveness of MAML", ICLR 2020.
"""

from __future__ import annotations

from jaxmeta.algorithms._core import MetaLearner
from jaxmeta.algorithms.maml import maml
from jaxmeta.models import Model


def anil(model: Model, **kwargs) -> MetaLearner:
    """:func:`jaxmeta.algorithms.maml` adapting the model's head (``model.is_head``) only.

    Takes the keyword arguments of ``maml`` except ``is_fast``.
    """
    if model.is_head is None:
        raise ValueError("anil needs a model with is_head set: build the Model with is_head=<path predicate>.")
    if "is_fast" in kwargs:
        raise TypeError("anil adapts model.is_head: set is_head on the Model instead of passing is_fast.")
    return maml(model, is_fast=model.is_head, **kwargs)
