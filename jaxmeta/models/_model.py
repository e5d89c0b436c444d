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

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

Params = Any
Path = tuple[str, ...]


def _all_fast(path: Path) -> bool:
    del path
    return True


class Stage(NamedTuple):
    """A model's input stage, which the algorithms may run once per task before the inner loop.

    Attributes:
      embed: ``embed(params, x) -> features`` (leaves ``[rows, ...]``), reading
        only the leaves where ``is_embedding`` holds, such that
        ``apply(params, x) == apply_embedded(params, embed(params, x))``. When
        none of those leaves is fast, the algorithms embed each task's rows once,
        before the inner loop, instead of at every inner step (the lookups and
        their gradients are then taken once per user).
      apply_embedded: the rest of ``apply``, from the features.
      is_embedding: path predicate of the leaves ``embed`` reads.
      dense: optional, the path of a dense layer ``{"w": [in, out], "b": [out]}``
        that ``apply_embedded`` applies first to the features, such that
        ``apply_embedded(params, h) == after_dense(params, h @ w + b)``. When it
        is fast and the inner optimizer is plain SGD, MAML adapts it in closed
        form (:func:`jaxmeta.inner.inner_adapt_dense`).
      after_dense: the rest of ``apply_embedded``, from the dense layer's
        pre-activation; set exactly when ``dense`` is.
      mlp: optional, the path of a list of dense layers ``[{"w": [in, out], "b":
        [out]}, ...]`` that ``apply_embedded`` is, on the features: ReLU between
        layers, none after the last, whose width is 1 (``apply_embedded(params, h)
        == jaxmeta.models.melu.apply_layers(layers, h)[:, 0]``). It lets
        ``backend="pallas"`` adapt them with the fused kernel (:mod:`jaxmeta.kernels`).
    """

    embed: Callable[[Params, Any], Any]
    apply_embedded: Callable[[Params, Any], jax.Array]
    is_embedding: Callable[[Path], bool]
    dense: Path | None = None
    after_dense: Callable[[Params, jax.Array], jax.Array] | None = None
    mlp: Path | None = None


@dataclasses.dataclass(frozen=True)
class Model:
    """A pure model, checked when it is built.

    Attributes:
      init: ``init(key) -> params``.
      apply: ``apply(params, x) -> predictions``: ``x`` holds the rows of one task
        (leaves ``[rows, ...]``), predictions are ``[rows]`` (ratings, or logits for
        clicks). Batch over tasks with ``jax.vmap``.
      is_fast: ``is_fast(path) -> bool`` for a leaf path such as
        ``("layers", "0", "w")``: True for the weights adapted per user.
      is_head: like ``is_fast``, True for the output head only (what ANIL adapts);
        ``None`` if the model has no designated head.
      stage: optional :class:`Stage`: the input stage that the algorithms may run
        once per task, and the layers after it that they may adapt faster.
      implicit: optional ``implicit(params, x) -> [rows, head size]``: what each row
        says of its user by having been rated at all, whatever the rating (SVD++'s
        free item vectors ``y_j``), in the coordinates of the head ``is_head`` picks
        (or of the leaves a learner's ``is_fast`` picks, when it is given one).
        :func:`jaxmeta.algorithms.ridge` with ``implicit=True`` moves a user's prior
        by these rows when the model has them, by ``J``'s rows otherwise.

    Raises:
      ValueError: a stage without one of ``embed``, ``apply_embedded`` and
        ``is_embedding``, ``dense`` without ``after_dense`` (or the reverse), or a
        path that is not a tuple of strings.
      TypeError: a function field that is not callable, or a ``stage`` that is
        not a :class:`Stage`.

    Example:
      >>> import jax.numpy as jnp
      >>> model = Model(init=lambda key: {"w": jnp.ones(2)}, apply=lambda p, x: x @ p["w"])
      >>> model.apply(model.init(None), jnp.ones((3, 2))).tolist(), model.staged()
      ([2.0, 2.0, 2.0], False)
    """

    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, Any], jax.Array]
    is_fast: Callable[[Path], bool] = _all_fast
    is_head: Callable[[Path], bool] | None = None
    stage: Stage | None = None
    implicit: Callable[[Params, Any], jax.Array] | None = None

    def __post_init__(self):
        for name in ("init", "apply", "is_fast"):
            if not callable(getattr(self, name)):
                raise TypeError(f"Model.{name}={getattr(self, name)!r}: pass a function.")
        if self.is_head is not None and not callable(self.is_head):
            raise TypeError(f"Model.is_head={self.is_head!r}: pass a path predicate, or None.")
        if self.implicit is not None and not callable(self.implicit):
            raise TypeError(f"Model.implicit={self.implicit!r}: pass a function of (params, x), or None.")
        if self.stage is None:
            return
        if not isinstance(self.stage, Stage):
            raise TypeError(f"Model.stage={self.stage!r}: pass a jaxmeta.models.Stage, or None.")
        for name in ("embed", "apply_embedded", "is_embedding"):
            if getattr(self.stage, name) is None:
                raise ValueError(f"Stage.{name} is None: an input stage needs embed, apply_embedded and "
                                 "is_embedding; set all three, or pass stage=None.")
        if (self.stage.dense is None) != (self.stage.after_dense is None):
            missing = "after_dense" if self.stage.after_dense is None else "dense"
            raise ValueError(f"Stage.{missing} is None while "
                             f"{'dense' if missing == 'after_dense' else 'after_dense'} is set: set both or neither.")
        for name in ("dense", "mlp"):
            path = getattr(self.stage, name)
            if path is not None and not (isinstance(path, tuple) and all(isinstance(k, str) for k in path)):
                raise ValueError(f"Stage.{name}={path!r}: pass a parameter path as a tuple of strings, "
                                 "e.g. ('layers', '0').")

    def _replace(self, **changes) -> Model:
        """A copy with ``changes`` (as ``NamedTuple._replace``), checked again."""
        return dataclasses.replace(self, **changes)

    def param_shapes(self) -> Params:
        """``jax.eval_shape`` of ``init``: the parameters' structure, shapes and dtypes,
        traced once per ``init`` function rather than at every call."""
        return _param_shapes(self.init, jax.dtypes.canonicalize_dtype(float))

    def staged(self, is_fast: Callable[[Path], bool] | None = None) -> bool:
        """Whether the input stage can run once per task: the model has one and,
        under ``is_fast`` (default: the model's), none of its leaves is fast."""
        if self.stage is None:
            return False
        is_fast = self.is_fast if is_fast is None else is_fast
        both = mask_where(self.param_shapes(), lambda path: bool(is_fast(path)) and bool(self.stage.is_embedding(path)))
        return not any(jax.tree.leaves(both))

    def dense_fast(self, is_fast: Callable[[Path], bool] | None = None) -> bool:
        """Whether the first dense layer on the features can be adapted in closed
        form: the model is :meth:`staged` and its stage declares ``dense``, whose
        ``w`` and ``b`` are fast under ``is_fast``."""
        if not self.staged(is_fast) or self.stage.dense is None:
            return False
        is_fast = self.is_fast if is_fast is None else is_fast
        return all(bool(is_fast((*self.stage.dense, leaf))) for leaf in ("w", "b"))


@functools.lru_cache(maxsize=256)
def _param_shapes(init: Callable[[jax.Array], Params], default_float) -> Params:
    del default_float  # in the key only: a model's dtypes may follow jax_enable_x64
    return jax.eval_shape(init, jax.random.key(0))


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
