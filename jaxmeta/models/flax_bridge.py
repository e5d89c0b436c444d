"""Flax models as jaxmeta models: NNX through ``nnx.split``/``nnx.merge``, and Linen.

The engine only ever sees plain pytrees of arrays: NNX parameters cross the
boundary as the pure nested dict of ``nnx.to_pure_dict``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import linen, nnx

from jaxmeta.models._model import Model, Path, _all_fast


def from_nnx(
    make_module: Callable[[nnx.Rngs], nnx.Module],
    *,
    is_fast: Callable[[Path], bool] = _all_fast,
    is_head: Callable[[Path], bool] | None = None,
) -> Model:
    """Wraps an NNX module constructor.

    Args:
      make_module: ``make_module(rngs) -> module``; the module's ``__call__`` maps the
        rows of one task to predictions ``[rows]``. Only ``nnx.Param`` variables are
        parameters; a module with other state (batch statistics, dropout RNGs) is
        rejected, since per-user adaptation needs a pure function.
      is_fast, is_head: predicates on parameter paths such as ``("head", "kernel")``.

    Example:
      >>> class Net(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.body = nnx.Linear(3, 8, rngs=rngs)
      ...         self.head = nnx.Linear(8, 1, rngs=rngs)
      ...     def __call__(self, x):
      ...         return self.head(nnx.relu(self.body(x)))[:, 0]
      >>> model = from_nnx(Net, is_fast=lambda p: p[0] == "head")
      >>> params = model.init(jax.random.key(0))
      >>> sorted(params), model.apply(params, jax.numpy.ones((5, 3))).shape
      (['body', 'head'], (5,))
    """
    abstract = nnx.eval_shape(lambda: make_module(nnx.Rngs(0)))
    graphdef, params_state, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(rest)[0]]
        raise ValueError(
            f"from_nnx: the module has non-Param state at {paths}; pass a module whose only "
            "variables are nnx.Param (per-user adaptation needs a pure function)."
        )
    treedef = jax.tree.structure(params_state)

    def init(key: jax.Array):
        _, state, _ = nnx.split(make_module(nnx.Rngs(key)), nnx.Param, ...)
        return nnx.to_pure_dict(state)

    def apply(params, x):
        leaves = jax.tree.leaves(params)
        if len(leaves) != treedef.num_leaves:
            raise ValueError(
                f"from_nnx: got {len(leaves)} parameter arrays, the module has {treedef.num_leaves}; "
                "pass the dict made by this model's init."
            )
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))(x)

    return Model(init=init, apply=apply, is_fast=is_fast, is_head=is_head)


def from_linen(
    module: linen.Module,
    example_x: Any,
    *,
    is_fast: Callable[[Path], bool] = _all_fast,
    is_head: Callable[[Path], bool] | None = None,
) -> Model:
    """Wraps a Linen module whose ``__call__(x)`` maps one task's rows to ``[rows]``.

    Args:
      module: the Linen module (no mutable collections).
      example_x: inputs of the right shape and dtype, used by ``module.init``.
      is_fast, is_head: predicates on paths of ``variables["params"]``,
        e.g. ``("Dense_1", "kernel")``.
    """

    def init(key: jax.Array):
        variables = module.init(key, example_x)
        extra = set(variables) - {"params"}
        if extra:
            raise ValueError(
                f"from_linen: the module has mutable collections {sorted(extra)}; pass a module "
                "whose only collection is 'params'."
            )
        return variables["params"]

    def apply(params, x):
        return module.apply({"params": params}, x)

    return Model(init=init, apply=apply, is_fast=is_fast, is_head=is_head)
