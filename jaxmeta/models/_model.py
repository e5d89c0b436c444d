"""The model interface: pure ``init``/``apply`` plus which parameters are fast.

A model is a pair of pure functions over a pytree of parameters. Which leaves
are *fast* (adapted per user in the inner loop) and which are *slow* (meta-learned
only, e.g. shared embedding tables) is a predicate over each leaf's path, so it
works for plain dicts and for Flax parameter trees alike.

Fast and slow parts are carried as two pytrees of the same structure as the
parameters, with ``None`` where a leaf belongs to the other part (the convention
of ``equinox.partition``); :func:`combine` puts them back together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

Params = Any
Path = tuple[str, ...]


def _all_fast(path: Path) -> bool:
    del path
    return True


class Model(NamedTuple):
    """A pure model.

    Attributes:
      init: ``init(key) -> params``.
      apply: ``apply(params, x) -> predictions``: ``x`` holds the rows of one task
        (leaves ``[rows, ...]``), predictions are ``[rows]`` (ratings, or logits for
        clicks). Batch over tasks with ``jax.vmap``.
      is_fast: ``is_fast(path) -> bool`` for a leaf path such as
        ``("layers", "0", "w")``: True for the weights adapted per user.
      is_head: like ``is_fast``, True for the output head only (what ANIL adapts);
        ``None`` if the model has no designated head.
      embed: optional input stage, ``embed(params, x) -> features`` (leaves
        ``[rows, ...]``), reading only the leaves where ``is_embedding`` holds,
        such that ``apply(params, x) == apply_embedded(params, embed(params, x))``.
        When none of those leaves is fast, the algorithms embed each task's rows
        once, before the inner loop, instead of at every inner step (the lookups
        and their gradients are then taken once per user).
      apply_embedded: the rest of ``apply``, from the features; set with ``embed``.
      is_embedding: path predicate of the leaves ``embed`` reads; set with ``embed``.
      dense: optional, with ``embed``: the path of a dense layer ``{"w": [in, out],
        "b": [out]}`` that ``apply_embedded`` applies first to the features, such
        that ``apply_embedded(params, h) == after_dense(params, h @ w + b)``. When
        it is fast and the inner optimizer is plain SGD given as a number, MAML
        adapts it in closed form (:func:`jaxmeta.inner.inner_adapt_dense`).
      after_dense: the rest of ``apply_embedded``, from the dense layer's
        pre-activation; set with ``dense``.
      mlp: optional, with ``embed``: the path of a list of dense layers
        ``[{"w": [in, out], "b": [out]}, ...]`` that ``apply_embedded`` is, on the
        features: ReLU between layers, none after the last, whose width is 1
        (``apply_embedded(params, h) == jaxmeta.models.melu.apply_layers(layers, h)[:, 0]``).
        It lets ``backend="pallas"`` adapt them with the fused kernel
        (:mod:`jaxmeta.kernels`).
    """

    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, Any], jax.Array]
    is_fast: Callable[[Path], bool] = _all_fast
    is_head: Callable[[Path], bool] | None = None
    embed: Callable[[Params, Any], Any] | None = None
    apply_embedded: Callable[[Params, Any], jax.Array] | None = None
    is_embedding: Callable[[Path], bool] | None = None
    dense: Path | None = None
    after_dense: Callable[[Params, jax.Array], jax.Array] | None = None
    mlp: Path | None = None

    def staged(self, is_fast: Callable[[Path], bool] | None = None) -> bool:
        """Whether the input stage can run once per task: the model has one and,
        under ``is_fast`` (default: the model's), none of its leaves is fast."""
        if self.embed is None:
            return False
        if self.apply_embedded is None or self.is_embedding is None:
            raise ValueError("Model.embed is set without apply_embedded and is_embedding: set all three or none.")
        is_fast = self.is_fast if is_fast is None else is_fast
        shapes = jax.eval_shape(self.init, jax.random.key(0))
        both = mask_where(shapes, lambda path: bool(is_fast(path)) and bool(self.is_embedding(path)))
        return not any(jax.tree.leaves(both))

    def dense_fast(self, is_fast: Callable[[Path], bool] | None = None) -> bool:
        """Whether the first dense layer on the features can be adapted in closed
        form: the model is :meth:`staged` and declares ``dense``, whose ``w`` and
        ``b`` are fast under ``is_fast``."""
        if not self.staged(is_fast) or self.dense is None:
            return False
        if self.after_dense is None:
            raise ValueError("Model.dense is set without after_dense: set both or neither.")
        is_fast = self.is_fast if is_fast is None else is_fast
        return all(bool(is_fast((*self.dense, leaf))) for leaf in ("w", "b"))


def path_names(path) -> Path:
    """A jax key path as a tuple of strings: dict keys, attribute names, indices."""
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
        else:
            names.append(str(key))
    return tuple(names)


def mask_where(params: Params, predicate: Callable[[Path], bool]) -> Params:
    """A pytree of Python bools: ``predicate`` of each leaf's path."""
    return jax.tree_util.tree_map_with_path(lambda p, _: bool(predicate(path_names(p))), params)


def partition(params: Params, mask: Params) -> tuple[Params, Params]:
    """Splits ``params`` into (leaves where ``mask`` is True, the others), ``None`` elsewhere."""
    chosen = jax.tree.map(lambda m, p: p if m else None, mask, params)
    rest = jax.tree.map(lambda m, p: None if m else p, mask, params)
    return chosen, rest


def combine(*trees: Params) -> Params:
    """Inverse of :func:`partition`: the first non-``None`` leaf at each position.

    Example:
      >>> params = {"a": 1.0, "b": 2.0}
      >>> fast, slow = partition(params, {"a": True, "b": False})
      >>> fast, combine(fast, slow) == params
      ({'a': 1.0, 'b': None}, True)
    """
    pick = lambda *leaves: next((x for x in leaves if x is not None), None)  # noqa: E731
    return jax.tree.map(pick, *trees, is_leaf=lambda x: x is None)
