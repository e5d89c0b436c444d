"""jaxmeta: meta-learning for recommender systems in JAX.

Every user is a task: a few gradient steps on a user's few ratings (the support
set) give a personal model, judged on held-back ratings (the query set). Tasks are
batched with ``jax.vmap``, inner loops run in ``jax.lax.scan``, and an outer step
is one ``jax.jit``-compiled function.
"""

from jaxmeta import algorithms as algorithms
from jaxmeta import data as data
from jaxmeta import decoding as decoding
from jaxmeta import evaluation as evaluation
from jaxmeta import losses as losses
from jaxmeta import metrics as metrics
from jaxmeta import models as models
from jaxmeta import text as text
from jaxmeta.algorithms import MetaLearner as MetaLearner
from jaxmeta.algorithms import MetaState as MetaState
from jaxmeta.inner import inner_adapt as inner_adapt
from jaxmeta.tasks import RaggedTasks as RaggedTasks
from jaxmeta.tasks import TaskBatch as TaskBatch
from jaxmeta.tasks import bucket_by_support as bucket_by_support
from jaxmeta.tasks import epoch_batches as epoch_batches
from jaxmeta.tasks import pad_tasks as pad_tasks
from jaxmeta.tasks import padded_fraction as padded_fraction

__version__ = "0.1.0"

__all__ = (
    "MetaLearner",
    "MetaState",
    "RaggedTasks",
    "TaskBatch",
    "algorithms",
    "bucket_by_support",
    "data",
    "decoding",
    "epoch_batches",
    "evaluation",
    "inner_adapt",
    "losses",
    "metrics",
    "models",
    "pad_tasks",
    "padded_fraction",
    "text",
)
