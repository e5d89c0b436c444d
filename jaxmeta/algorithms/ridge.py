"""Meta-learned ridge head: each user's head solved in closed form, the prior meta-learned.

For a model whose prediction is affine in its head ``w`` (a last linear layer; the
user vector and bias of biased MF or :func:`jaxmeta.models.hybrid_melu`),
``f(x; w) = f(x; w0) + J(x) (w - w0)``, each user's head is the exact minimiser of

``sum_support (y - f(x; w))^2 + sum_j lambda_j (w_j - w0_j)^2``,

``w* = w0 + (J^T J + diag(lambda))^{-1} J^T (y - f(x; w0))``, with ``J`` the
Jacobian of the support predictions in ``w`` (``jax.jacfwd``; exact for a linear
head). This is classic MF's ridge fold-in of a new user, made a meta-learner: the
prior mean ``w0`` (the model's head at initialisation; ``w0 + A z`` with
``implicit=True``, below), the per-coordinate precisions ``lambda = exp(hyper)``
(``exp(hyper["log_reg"])`` with ``implicit=True``) and everything below the head (embeddings,
item vectors, the network) are meta-learned through the solve, on the query loss.
No inner learning rate or step count: the inner problem is solved, not
approximated. For a head that is not affine the same formula is one damped
Gauss-Newton step from ``w0``.

With ``implicit=True`` the prior mean is the user's own: ``w0 + A z`` with
``z = [mean of J's rows over the support - J's row at the null input; log(1 + n)]``
and ``A`` meta-learned (zero at start, so training starts from the fixed prior).
A model with rows of its own for this (:attr:`jaxmeta.models.Model.implicit`:
:func:`jaxmeta.models.hybrid_melu` with ``implicit_vectors=True``, SVD++'s free
item vectors ``y_j``) is read through them in place of ``J``'s rows.
For biased MF and hybrid MeLU a row of ``J`` is ``[1, q_i]``, so ``z`` is the mean
vector of the items the user rated, less the null item's, and how many:
*which* items they chose, not only how they rated them (the implicit feedback of
SVD++, tied to the item vectors; for a network's last layer a row of ``J`` is the
last hidden layer, which reads the user's features too). The null input is the
all-zero row a padded row is given (for MovieLens ids, which start at 1, an
unknown item; for a table whose ids start at 0, item 0); taking its row away
leaves every constant column of ``J`` (a bias) out of ``z``, so that ``A`` does
not duplicate ``w0`` there, and a user without ratings
(``z = 0``) keeps ``w0``, the prior trained for everyone. ``z`` is a sum over the
ratings too, so the incremental update stays exact. The right-hand side is moved to
the prior through ``J`` at ``w0``: exact for an affine head, for any other the
linearisation at ``w0`` evaluated at the prior.

A user without support rows keeps ``w0``; padded rows enter neither ``J`` nor the
residuals (they are zeroed before the model and masked after it).

References:
  Bertinetto, Henriques, Torr, Vedaldi, "Meta-learning with differentiable
  closed-form solvers" (R2-D2), ICLR 2019.
  Lee, Maji, Ravichandran, Soatto, "Meta-Learning with Differentiable Convex
  Optimization" (MetaOptNet), CVPR 2019.
  Koren, Bell, Volinsky, "Matrix Factorization Techniques for Recommender
  Systems", IEEE Computer 2009 (folding in a new user).
  Koren, "Factorization Meets the Neighborhood: a Multifaceted Collaborative
  Filtering Model" (SVD++), KDD 2008 (implicit feedback).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jaxmeta.algorithms._core import (
    MetaLearner,
    build,
    embed_stage,
    masked_loss,
    split_fast,
    zero_padded_rows,
)
from jaxmeta.algorithms._defaults import DEFAULT_LOSS, DEFAULT_OUTER_OPTIMIZER, refuse
from jaxmeta.losses import LossFn, binary_cross_entropy, get_loss
from jaxmeta.models import Model, combine

DEFAULT_REG = 1.0


def head_of(model: Model, is_fast: Callable | None, *, who: str) -> Callable:
    """The leaves solved in closed form: ``is_fast`` when given, else the model's head (``model.is_head``)."""
    if is_fast is not None:
        return is_fast
    if model.is_head is None:
        raise ValueError(f"{who} needs a head: build the Model with is_head=<path predicate>, or pass is_fast=.")
    return model.is_head


def ridge_sums(predict: Callable[[jax.Array], jax.Array], w0: jax.Array, y: jax.Array,
               mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(J^T J, J^T (y - predict(w0)), predict(w0))`` over the rows on ``mask``: the sufficient
    statistics of :func:`ridge_head`'s solve, with ``J`` the Jacobian of ``predict`` at ``w0``. Rows
    off ``mask`` enter neither. For ``predict`` affine in ``w`` they are sums over rows, so the
    statistics of a user's ratings are those of their parts added (an exact incremental update)."""
    gram, rhs, before, _ = ridge_sums_and_rows(predict, w0, y, mask)
    return gram, rhs, before


def ridge_sums_and_rows(predict: Callable[[jax.Array], jax.Array], w0: jax.Array, y: jax.Array,
                        mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """:func:`ridge_sums`' three and ``J``'s rows summed over ``mask`` (what :func:`implicit_features` reads)."""
    before = predict(w0)
    jac = jnp.where(mask[:, None], jax.jacfwd(predict)(w0), 0)
    residual = jnp.where(mask, y - before, 0)
    return jac.T @ jac, jac.T @ residual, before, jnp.sum(jac, axis=0)


def implicit_features(jac_sum: jax.Array, count: jax.Array, null: jax.Array) -> jax.Array:
    """``z = [jac_sum / count - null; log(1 + count)]`` (``[head size + 1]``; zero for a user without
    ratings): what ``implicit=True`` moves a user's prior mean by, ``w0 + A z``, from the sum of ``J``'s rows
    over their ``count`` ratings and ``J``'s row at the null input (:func:`null_jacobian`)."""
    count = jnp.asarray(count, jac_sum.dtype)
    return jnp.concatenate([(jac_sum - count * null) / jnp.maximum(count, 1), jnp.log1p(count)[None]])


def null_row(x: Any) -> Any:
    """One row of zeros shaped as a row of ``x`` (a pytree of ``[rows, ...]`` leaves): the input a padded row
    is given."""
    return jax.tree.map(lambda a: jnp.zeros((1, *a.shape[1:]), a.dtype), x)


def null_jacobian(predict_row: Callable[[jax.Array], jax.Array], w0: jax.Array) -> jax.Array:
    """``J``'s row at the null input (``[head size]``), from ``predict_row(w)``, the prediction (``[1]``) for
    :func:`null_row`."""
    return jax.jacfwd(predict_row)(w0)[0]


def implicit_sums(implicit: Callable[[Any, Any], jax.Array], params: Any, x: Any, mask: jax.Array,
                  width: int) -> tuple[jax.Array, jax.Array]:
    """``(sum over mask, null row)``: a model's own implicit rows (:attr:`jaxmeta.models.Model.implicit`,
    ``implicit(params, x) -> [rows, width]``, ``width`` the number of solved coordinates) summed over the
    rows on ``mask`` (the others are zeroed first, as :func:`ridge_sums` does), and its row at
    :func:`null_row`. They take the place of :func:`ridge_sums_and_rows`' sum of ``J``'s rows and
    :func:`null_jacobian` in :func:`implicit_features`.

    Raises:
      ValueError: rows not ``[rows, width]``.
    """
    rows = implicit(params, zero_padded_rows(x, mask))
    if rows.shape != (mask.shape[0], width):
        raise ValueError(f"ridge: the model's implicit rows have shape {rows.shape} for {mask.shape[0]} rows, and "
                         f"ridge solves {width} coordinates (the model's head, or is_fast's leaves); Model.implicit "
                         f"must give [rows, {width}] in the order of those coordinates.")
    return jnp.sum(jnp.where(mask[:, None], rows, 0), axis=0), implicit(params, null_row(x))[0]


def precision_of(hyper: Any) -> jax.Array:
    """The per-coordinate ridge precisions held in a ``ridge`` learner's ``MetaState.hyper``."""
    return jnp.exp(hyper["log_reg"] if isinstance(hyper, Mapping) else hyper)


def prior_of(w0: jax.Array, hyper: Any, jac_sum: jax.Array, count: jax.Array, null: jax.Array) -> jax.Array:
    """A user's prior mean: ``w0``, or with ``implicit=True`` (``hyper["implicit"]``, ``A``) ``w0 + A z``
    (:func:`implicit_features`)."""
    if isinstance(hyper, Mapping) and "implicit" in hyper:
        return w0 + hyper["implicit"] @ implicit_features(jac_sum, count, null)
    return w0


def solve_with_prior(w0: jax.Array, hyper: Any, gram: jax.Array, rhs: jax.Array, jac_sum: jax.Array,
                     count: jax.Array, null: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(head, prior)``: a ``ridge`` learner's head from the sums of a user's ratings
    (:func:`ridge_sums_and_rows` at ``w0``: ``J^T J``, ``J^T r``, ``J``'s rows summed; their count) and
    ``J``'s row at the null input, solved around the prior :func:`prior_of`, the right-hand side moved to it
    through ``J`` at ``w0`` (exact for an affine head: ``J^T (y - f(w0) - J d) = rhs - J^T J d``)."""
    prior = prior_of(w0, hyper, jac_sum, count, null)
    return ridge_solve(prior, gram, rhs - gram @ (prior - w0), precision_of(hyper)), prior


def ridge_solve(w0: jax.Array, gram: jax.Array, rhs: jax.Array, precision: jax.Array | float) -> jax.Array:
    """The head ``w0 + (gram + diag(precision))^{-1} rhs`` from :func:`ridge_sums`' statistics."""
    ridge = jnp.diag(jnp.broadcast_to(jnp.asarray(precision, w0.dtype), w0.shape))
    return w0 + jnp.linalg.solve(gram + ridge, rhs)


def ridge_head(predict: Callable[[jax.Array], jax.Array], w0: jax.Array, y: jax.Array, mask: jax.Array,
               precision: jax.Array | float) -> tuple[jax.Array, jax.Array]:
    """``(w, predict(w0))``: the head ``w`` (flat, ``[head size]``) minimising
    ``sum_mask (y - predict(w))^2 + sum_j precision_j (w_j - w0_j)^2`` for ``predict`` affine in ``w``
    (one damped Gauss-Newton step from ``w0`` otherwise); ``precision`` is one number or one per
    coordinate. Rows off ``mask`` enter neither the Jacobian nor the residuals; with none left,
    ``w`` is ``w0``."""
    gram, rhs, before = ridge_sums(predict, w0, y, mask)
    return ridge_solve(w0, gram, rhs, precision), before


def ridge(
    model: Model,
    *,
    inner_optimizer: None = None,
    inner_steps: None = None,
    outer_optimizer: optax.GradientTransformation = DEFAULT_OUTER_OPTIMIZER,
    loss: str | LossFn = DEFAULT_LOSS,
    chunk_size: int | None = None,
    is_fast: Callable | None = None,
    backend: None = None,
    init_reg: float = DEFAULT_REG,
    implicit: bool = False,
) -> MetaLearner:
    """Each user's head by ridge regression on the support set, the prior and the body meta-learned.

    Args:
      model: the model; its head (``model.is_head``, or ``is_fast``) should enter
        the prediction linearly.
      inner_optimizer, inner_steps, backend: do not apply (the inner problem is
        solved in closed form); each raises a ValueError if set.
      outer_optimizer: optax transformation of ``(params, hyper)``; ``hyper`` is
        the log of the per-coordinate ridge precisions, shape ``[head size]`` (with
        ``implicit=True``, a dict; see ``implicit``).
      loss: the query loss the prior and body are meta-learned on: ``"mse"``
        (the default), ``"mae"``, ``"huber"`` or an elementwise callable of
        ratings; the support fit itself is always least squares (ridge
        regression), and the support losses reported are in ``loss``.
      chunk_size: users per chunk inside the compiled functions.
      is_fast: the solved leaves (default ``model.is_head``).
      init_reg: the initial precision of every coordinate (> 0).
      implicit: each user's prior mean moved by which items they rated and how many,
        ``w0 + A z`` (module docstring); ``hyper`` is then ``{"log_reg": [head size],
        "implicit": A [head size, head size + 1]}``, ``A`` zero at start. When the
        model has implicit rows of its own (``model.implicit``), they replace ``J``'s.

    Raises:
      ValueError: an option that does not apply, ``loss="bce"`` (a least-squares fit of clicks),
        a model without a head (and no ``is_fast``), ``init_reg <= 0``, or ``implicit`` not a bool;
        when traced, a model's implicit rows not ``[rows, head size]``.

    Example:
      >>> import jax
      >>> from jaxmeta.data import synthetic
      >>> from jaxmeta.models import embedding_mlp
      >>> from jaxmeta.tasks import pad_tasks
      >>> data = synthetic.generate(num_train_users=8, num_new_users=2, seed=0)
      >>> learner = ridge(embedding_mlp(data.vocab_sizes))
      >>> state = learner.init(jax.random.key(0))
      >>> state.hyper.shape  # one log-precision per head coordinate (the last layer: 32 weights, 1 bias)
      (33,)
      >>> state, metrics = learner.step(state, pad_tasks(data.train))
      >>> sorted(metrics)
      ['inner_loss', 'loss', 'tasks']
    """
    refuse(who="ridge", why="ridge solves each user's head in closed form (no inner optimizer, steps or kernel)",
           inner_optimizer=inner_optimizer, inner_steps=inner_steps, backend=backend)
    loss_fn = get_loss(loss)
    if loss_fn is binary_cross_entropy:
        raise ValueError(f"ridge: loss={loss!r}; ridge fits the support ratings by least squares, a regression: "
                         "pass loss='mse', 'mae' or 'huber'.")
    if not isinstance(implicit, bool):
        raise ValueError(f"ridge: implicit={implicit!r}; pass True or False.")
    if not init_reg > 0:
        raise ValueError(f"ridge: init_reg={init_reg!r}; pass a positive precision, e.g. {DEFAULT_REG}.")
    is_fast = head_of(model, is_fast, who="ridge")
    inner_model, embed = embed_stage(model, is_fast)

    def init_hyper(params):
        flat, _ = ravel_pytree(split_fast(params, is_fast)[0])
        log_reg = jnp.full(flat.shape, jnp.log(init_reg), flat.dtype)
        if not implicit:
            return log_reg
        return {"log_reg": log_reg, "implicit": jnp.zeros((flat.size, flat.size + 1), flat.dtype)}

    def solve(meta, task):
        """``(fast, slow, embedded task, support losses before and after)``."""
        params, hyper = meta
        fast, slow = split_fast(params, is_fast)
        raw = task
        task = embed(slow, task)
        w0, unravel = ravel_pytree(fast)
        mask = task.support_mask
        x = zero_padded_rows(task.support_x, mask)

        def predict(w):
            return inner_model.apply(combine(unravel(w), slow), x)

        gram, rhs, before, jac_sum = ridge_sums_and_rows(predict, w0, task.support_y, mask)
        reference = jnp.zeros_like(w0)  # read only with implicit=True
        if implicit and model.implicit is not None:  # the model's own rows, from the raw input
            jac_sum, reference = implicit_sums(model.implicit, params, raw.support_x, mask, w0.size)
        elif implicit:  # the raw input of a padded row, embedded as a task's rows are
            null, one = null_row(raw.support_x), jnp.ones((1,), bool)
            null = embed(slow, raw._replace(support_x=null, query_x=null, support_mask=one, query_mask=one))
            reference = null_jacobian(lambda w: inner_model.apply(combine(unravel(w), slow), null.support_x), w0)
        w, prior = solve_with_prior(w0, hyper, gram, rhs, jac_sum, jnp.sum(mask), reference)
        if implicit:  # the support before adaptation: at the user's own prior
            before = predict(prior)
        losses = jnp.stack([masked_loss(loss_fn, before, task.support_y, mask),
                            masked_loss(loss_fn, predict(w), task.support_y, mask)])
        return unravel(w), slow, task, losses

    def predict_task(meta, task):
        fast, slow, task, _ = solve(meta, task)
        return inner_model.apply(combine(fast, slow), zero_padded_rows(task.query_x, task.query_mask))

    def objective(meta, task):
        fast, slow, task, losses = solve(meta, task)
        predictions = inner_model.apply(combine(fast, slow), zero_padded_rows(task.query_x, task.query_mask))
        value = masked_loss(loss_fn, predictions, task.query_y, task.query_mask)
        return value, {"loss": value, "inner_loss": losses[0]}

    def adapt_task(meta, task):
        fast, _, _, losses = solve(meta, task)
        return fast, losses

    return build(model, loss_fn=loss_fn, objective=objective, adapt_task=adapt_task, is_fast=is_fast,
                 outer_optimizer=outer_optimizer, chunk_size=chunk_size, init_hyper=init_hyper,
                 predict_task=predict_task)
