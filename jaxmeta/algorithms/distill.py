"""Distillation: a student meta-learner trained to match a teacher's adapted predictions.

Each outer step, the teacher adapts on the batch's support sets and predicts
its query rows (``teacher.predict``, under ``stop_gradient``), and the student
takes its own step with each real query target replaced by a mix of the true
rating and the teacher's prediction::

    target = (1 - alpha) * y + alpha * t

For squared error this is the mix of the two losses, up to a term that does not
depend on the student. With ``p`` the student's adapted prediction:

    (1 - alpha) * (p - y)**2 + alpha * (p - t)**2  ==  (p - target)**2 + alpha * (1 - alpha) * (y - t)**2

so the student's meta-gradient is exactly that of
``(1 - alpha) * MSE(y) + alpha * MSE(teacher)``, and its reported ``"loss"`` is
that mix less the mean of ``alpha * (1 - alpha) * (y - t)**2``. Binary
cross-entropy on logits is linear in its target, so there the teacher's logits
are turned into probabilities (``sigmoid``) and the mix of targets *is* the mix
of the two losses, with no remaining term. Other losses have no such identity:
:func:`distill` refuses them rather than mix targets that would not mean the
mix of losses.

The student's functions are the student's own: ``init`` (unless
``warm_start``), ``adapt``, ``predict``, ``evaluate``, ``apply_adapted`` and
``is_fast``; only ``step`` changes. The teacher's prediction and the student's
step are one ``jax.jit``-compiled function, ``vmap``-ped over users by the
engine in both learners; the teacher's state is an argument of it, not a
constant compiled in. A step costs the teacher's adaptation of the batch on
top of the student's step; evaluation and serving are the student's alone.

Two uses, both through :func:`distill`:

* **amortised adaptation**: the student is :func:`jaxmeta.algorithms.amortised`
  on the teacher's model (optionally started from the teacher's weights,
  :func:`warm_start`): a new user then costs one forward pass of the set encoder
  instead of the teacher's inner loop;
* **compression**: the student is any meta-learner on a smaller model (say,
  half the hidden width).

Padding: padded query rows keep their targets as they are (``jnp.where`` on the
query mask), so whatever the teacher predicts there changes nothing; the
student's step masks them as always, and padding users are the engine's.

References:
  Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
  NIPS Deep Learning Workshop 2014.
  Requeima, Gordon, Bronskill, Nowozin, Turner, "Fast and Flexible Multi-Task
  Classification Using Conditional Neural Adaptive Processes", NeurIPS 2019
  (amortised adaptation by FiLM parameters predicted from the support set).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxmeta.algorithms._core import MetaLearner, MetaState, Metrics
from jaxmeta.algorithms._defaults import DEFAULT_LOSS
from jaxmeta.models import path_names
from jaxmeta.tasks import TaskBatch

__all__ = ("TEACHER_TARGETS", "distill", "warm_start")

TEACHER_TARGETS: dict[str, Callable[[jax.Array], jax.Array]] = {"mse": lambda t: t, "bce": jax.nn.sigmoid}
"""The losses :func:`distill` mixes targets for, and how a teacher's prediction becomes a target
(``"bce"``: its logits become probabilities)."""


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise ValueError(f"distill: alpha={alpha!r}: pass a number in [0, 1], the teacher's weight in the query "
                         "targets (0: the true ratings alone, 1: the teacher's predictions alone; default 0.5).")
    return float(alpha)


def warm_start(student_state: MetaState, teacher_state: MetaState) -> MetaState:
    """``student_state`` with each model parameter that the teacher has at the same path, with
    the same shape and dtype, replaced by the teacher's (the others left as they are).

    Only ``params`` change: the student's ``hyper`` (an encoder, FiLM maps, inner
    rates) and its outer optimizer's state are kept. Optax's usual transformations
    (Adam and its moments, clipping) start from a state that does not depend on
    the parameters' values, so that state is still the one the student's ``init``
    would give.

    Example:
      >>> import jax
      >>> from jaxmeta.algorithms import amortised, maml
      >>> from jaxmeta.models import embedding_mlp
      >>> model = embedding_mlp([3, 5], embed_dim=2, hidden=(4,))
      >>> teacher = maml(model).init(jax.random.key(1))
      >>> student = warm_start(amortised(model).init(jax.random.key(2)), teacher)
      >>> all(bool((a == b).all()) for a, b in zip(jax.tree.leaves(student.params), jax.tree.leaves(teacher.params)))
      True
    """
    theirs = {path_names(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(teacher_state.params)}

    def take(path, mine):
        leaf = theirs.get(path_names(path))
        fits = leaf is not None and jnp.shape(leaf) == jnp.shape(mine) and jnp.result_type(leaf) == jnp.result_type(mine)
        return leaf if fits else mine

    return student_state._replace(params=jax.tree_util.tree_map_with_path(take, student_state.params))


_warm_start = warm_start  # for distill, whose option of that name hides the function


def distill(
    student: MetaLearner,
    teacher: MetaLearner,
    teacher_state: MetaState,
    *,
    alpha: float = 0.5,
    loss: str = DEFAULT_LOSS,
    warm_start: bool = False,
) -> MetaLearner:
    """``student``, trained towards ``teacher``'s adapted predictions as well as the true ratings.

    Args:
      student: the meta-learner to train (e.g. ``amortised(model)``, or ``maml``
        on a smaller model).
      teacher: a trained meta-learner whose model reads the same task batches.
      teacher_state: the teacher's state (e.g. restored from its best checkpoint);
        it is not trained.
      alpha: the teacher's weight in the query targets, in [0, 1] (module
        docstring): 0 trains on the true ratings alone (the student's own step),
        1 on the teacher's predictions alone.
      loss: the loss the student was built with: ``"mse"`` (the default, as the
        factories') or ``"bce"`` (the teacher's logits mixed as probabilities).
      warm_start: ``init`` starts the student's model parameters from the
        teacher's where they match in path, shape and dtype (:func:`warm_start`).

    Returns:
      A :class:`jaxmeta.algorithms.MetaLearner`: the student's, but for ``step``
      (and ``init`` with ``warm_start``).

    Raises:
      ValueError: ``alpha`` outside [0, 1], or a ``loss`` other than ``"mse"`` and
        ``"bce"`` (naming it).

    Example:
      >>> import jax
      >>> from jaxmeta.algorithms import amortised, maml
      >>> from jaxmeta.data import synthetic
      >>> from jaxmeta.models import embedding_mlp
      >>> from jaxmeta.tasks import pad_tasks
      >>> data = synthetic.generate(num_train_users=8, num_new_users=2, seed=0)
      >>> model = embedding_mlp(data.vocab_sizes, embed_dim=2, hidden=(4,))
      >>> teacher = maml(model, inner_steps=2)
      >>> learner = distill(amortised(model, encoder_width=8, task_dim=4), teacher,
      ...                   teacher.init(jax.random.key(0)), alpha=0.7, warm_start=True)
      >>> state, metrics = learner.step(learner.init(jax.random.key(1)), pad_tasks(data.train))
      >>> int(state.step), sorted(metrics)
      (1, ['inner_loss', 'loss', 'tasks'])
    """
    alpha = _check_alpha(alpha)
    if loss not in TEACHER_TARGETS:
        raise ValueError(f"distill: loss={loss!r}: mixing targets equals mixing losses for {sorted(TEACHER_TARGETS)} "
                         "only; pass the one the student was built with (its loss= option), or distil a student "
                         "built with one of them.")
    as_target = TEACHER_TARGETS[loss]

    @jax.jit
    def distilled_step(state: MetaState, teacher_state: MetaState, alpha: jax.Array,
                       batch: TaskBatch) -> tuple[MetaState, Metrics]:
        taught = as_target(jax.lax.stop_gradient(teacher.predict(teacher_state, batch)))
        y = batch.query_y
        alpha = alpha.astype(y.dtype)
        mixed = jnp.where(batch.query_mask, (1 - alpha) * y + alpha * taught.astype(y.dtype), y)
        return student.step(state, batch._replace(query_y=mixed))

    def step(state: MetaState, batch: TaskBatch) -> tuple[MetaState, Metrics]:
        # alpha is an argument, not a constant: every alpha compiles to the same program
        return distilled_step(state, teacher_state, alpha, batch)

    def warm_init(key: jax.Array) -> MetaState:
        return _warm_start(student.init(key), teacher_state)

    return student._replace(step=step, init=warm_init if warm_start else student.init)
