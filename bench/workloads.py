"""The benchmark workloads W1-W3: MeLU-shaped users, built with jaxmeta's public API.

W1 ``melu``: 8 categorical fields (MeLU's ML-1M vocabularies), a 32-wide embedding
per field, ``256 -> 64 -> 64 -> 1`` with ReLUs; the three dense layers are the fast
weights, the embedding tables slow. A user has 20 support and 10 query ratings;
5 inner steps of plain SGD; the outer step is Adam on the second-order MAML
gradient (``melu``), the first-order one (``melu-fo``), or no outer step at all
(``melu-adapt``: adaptation and query prediction, the serving path).

W2 ``ragged``: W1 with support sizes uniform in 3..100 (query 10), batched by
:func:`jaxmeta.tasks.bucket_by_support`. W3 ``scale``: W1 at growing batch sizes.

``adapt`` (beyond BENCH.md's three): a new user's adaptation and query prediction
on W1's users and network, two ways in the same run: ``gradient`` (MAML's 5 inner
SGD steps, as ``melu-adapt``) and ``amortised`` (no inner step: the set encoder
of :func:`jaxmeta.algorithms.conditioned` with ``inner_steps=0`` FiLM-modulates
the weights in one forward pass, the student of amortised distillation), with ``none`` (no
adaptation: the embeddings and the query pass alone) as the floor any adaptation of this network
pays.

Batches are drawn straight as :class:`jaxmeta.tasks.TaskBatch` arrays (ids uniform
in each field's vocabulary, ratings uniform in 1..5): the figures measure the
engine, not the data pipeline.
"""

from __future__ import annotations

import numpy as np
import optax

from jaxmeta import algorithms
from jaxmeta.algorithms import MetaLearner
from jaxmeta.data.features import FieldSpec
from jaxmeta.models import Model, melu
from jaxmeta.reproduce import SMALL_EMBED, SMALL_ENCODER, SMALL_HIDDEN
from jaxmeta.tasks import TaskBatch

# MeLU's ML-1M fields and their numbers of values (W1).
FIELDS = (("gender", 2), ("age", 7), ("occupation", 21), ("zip", 3402),
          ("rate", 6), ("genre", 25), ("director", 2186), ("actor", 8030))
EMBED_DIM = 32
HIDDEN = (64, 64)
SUPPORT, QUERY = 20, 10
INNER_STEPS, INNER_LR, OUTER_LR = 5, 0.03, 1e-3
RAGGED_SUPPORT = (3, 100)  # W2: support sizes uniform in this closed range

WORKLOADS = {"melu": ("melu", "melu-fo", "melu-adapt"), "ragged": ("melu",), "scale": ("melu",),
             "adapt": ("melu",)}
ADAPTATIONS = ("gradient", "amortised", "amortised-small", "none")  # what the adapt workload times, in this order
KERNEL_VARIANTS = ("melu-fo", "melu-adapt")  # the W1 variants the Pallas kernel backend runs
BACKENDS = ("xla", "pallas")


def model() -> Model:
    """W1's network: MeLU with one embedding table per field (no OOV row: ids lie in ``[0, values)``)."""
    spec = [FieldSpec(name, "categorical", size, 1) for name, size in FIELDS]
    return melu(spec, embed_dim=EMBED_DIM, hidden=HIDDEN, output_bias=3.0)


def learner(variant: str, *, chunk_size: int | None = None, backend: str = "xla") -> MetaLearner:
    """The meta-learner of a W1 variant: MAML (``melu``, ``melu-adapt``) or first-order MAML (``melu-fo``).

    ``backend``: ``"xla"`` or ``"pallas"`` (the fused adaptation kernel of
    :mod:`jaxmeta.kernels`), see :func:`jaxmeta.algorithms.maml`. The kernel runs
    ``melu-adapt`` and ``melu-fo``; the second-order step of ``melu`` has no kernel.
    """
    if variant not in WORKLOADS["melu"]:
        raise ValueError(f"variant={variant!r}: pass one of {WORKLOADS['melu']}.")
    if backend != "xla" and variant not in KERNEL_VARIANTS:
        raise ValueError(f"variant={variant!r} with backend={backend!r}: the kernel has no second-order step; "
                         f"pass backend='xla', or one of the variants {KERNEL_VARIANTS}.")
    return algorithms.maml(model(), inner_optimizer=INNER_LR, inner_steps=INNER_STEPS,
                           outer_optimizer=optax.adam(OUTER_LR), first_order=variant == "melu-fo",
                           chunk_size=chunk_size, backend=backend)


def adapter(adaptation: str, *, chunk_size: int | None = None) -> MetaLearner:
    """The learner of one ``adapt`` measurement: W1's MAML (``gradient``), its amortised student
    (``amortised``: :func:`jaxmeta.algorithms.conditioned` with no inner step), or no adaptation
    (``none``, the floor)."""
    if adaptation == "gradient":
        return learner("melu-adapt", chunk_size=chunk_size)
    if adaptation == "amortised":
        return algorithms.conditioned(model(), inner_optimizer=INNER_LR, inner_steps=0,
                                      outer_optimizer=optax.adam(OUTER_LR), chunk_size=chunk_size)
    if adaptation == "amortised-small":  # amortised and compressed: jaxmeta.reproduce's student of that name
        small = melu([FieldSpec(name, "categorical", size, 1) for name, size in FIELDS], embed_dim=SMALL_EMBED,
                     hidden=SMALL_HIDDEN, output_bias=3.0)
        return algorithms.conditioned(small, inner_optimizer=INNER_LR, inner_steps=0, **SMALL_ENCODER,
                                      outer_optimizer=optax.adam(OUTER_LR), chunk_size=chunk_size)
    if adaptation == "none":  # the floor of any adaptation: the embeddings and the query pass, nothing else
        return algorithms.no_adaptation(model(), outer_optimizer=optax.adam(OUTER_LR), chunk_size=chunk_size)
    raise ValueError(f"adaptation={adaptation!r}: pass one of {ADAPTATIONS}.")


def batch(rng: np.random.Generator, num_tasks: int, support: int | np.ndarray = SUPPORT, query: int = QUERY, *,
          width: int | None = None, num_real: int | None = None) -> TaskBatch:
    """``num_tasks`` random users.

    Args:
      rng: the source of ids and ratings.
      num_tasks: task slots.
      support: support rows of every user, or one number per real user.
      query: query rows of every real user.
      width: padded support size (default: the largest support size).
      num_real: users with rows; the slots after them are padding users (no rows).
    """
    num_real = num_tasks if num_real is None else num_real
    sizes = np.zeros(num_tasks, np.int64)
    sizes[:num_real] = np.broadcast_to(np.asarray(support, dtype=np.int64), (num_real,))
    width = int(sizes.max()) if width is None else width

    def rows(n: int) -> dict[str, np.ndarray]:
        return {name: rng.integers(0, size, (num_tasks, n), dtype=np.int32) for name, size in FIELDS}

    def ratings(n: int) -> np.ndarray:
        return rng.integers(1, 6, (num_tasks, n)).astype(np.float32)

    return TaskBatch(rows(width), ratings(width), np.arange(width)[None, :] < sizes[:, None],
                     rows(query), ratings(query), np.arange(num_tasks)[:, None].repeat(query, 1) < num_real)


def ragged_sizes(rng: np.random.Generator, num_users: int) -> np.ndarray:
    """W2's support sizes, uniform in :data:`RAGGED_SUPPORT`."""
    lo, hi = RAGGED_SUPPORT
    return rng.integers(lo, hi + 1, num_users)
