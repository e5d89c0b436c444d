"""Meta-learning algorithms and baselines, each a factory returning a MetaLearner.

Every factory takes the same keywords with the same defaults (inner_optimizer=0.03,
plain SGD; inner_steps=5; outer_optimizer=optax.adam(1e-3); loss="mse";
chunk_size=None; is_fast=None; backend="xla"), defined in one place,
:mod:`jaxmeta.algorithms._defaults`; an option that does not apply to an algorithm
raises a ValueError naming it.
"""

from jaxmeta.algorithms._core import MetaLearner as MetaLearner
from jaxmeta.algorithms._core import MetaState as MetaState
from jaxmeta.algorithms._core import frozen as frozen  # an outer optimizer that holds some parameters still
from jaxmeta.algorithms._core import build as build  # the engine, for new algorithms (examples/custom_algorithm.py)
from jaxmeta.algorithms._core import query_loss as query_loss
from jaxmeta.algorithms._core import split_fast as split_fast
from jaxmeta.algorithms._core import support_loss as support_loss
from jaxmeta.algorithms._core import tree_vdot as tree_vdot
from jaxmeta.algorithms._defaults import BACKENDS as BACKENDS  # the inner loop's backends: xla, pallas, auto
from jaxmeta.algorithms.anil import anil as anil
from jaxmeta.algorithms.baselines import finetune as finetune
from jaxmeta.algorithms.baselines import no_adaptation as no_adaptation
from jaxmeta.algorithms.conditioned import amortised as amortised
from jaxmeta.algorithms.conditioned import conditioned as conditioned
from jaxmeta.algorithms.distill import distill as distill
from jaxmeta.algorithms.distill import warm_start as warm_start
from jaxmeta.algorithms.imaml import imaml as imaml
from jaxmeta.algorithms.maml import fomaml as fomaml
from jaxmeta.algorithms.maml import maml as maml
from jaxmeta.algorithms.metasgd import metasgd as metasgd
from jaxmeta.algorithms.multitask import multitask as multitask
from jaxmeta.algorithms.reptile import reptile as reptile
from jaxmeta.algorithms.ridge import ridge as ridge

META_LEARNERS = {
    "maml": maml,
    "fomaml": fomaml,
    "reptile": reptile,
    "anil": anil,
    "metasgd": metasgd,
    "imaml": imaml,
    "ridge": ridge,
    "conditioned": conditioned,
    "amortised": amortised,
    "multitask": multitask,
}
"""The meta-learning algorithms by name (the baselines are not among them)."""

CLOSED_FORM = ("ridge", "amortised", "multitask")
"""The meta-learners without an inner loop of gradient steps (ridge and multitask solve the head in closed form;
amortised replaces the inner loop by one forward pass of a set encoder): no ``inner_optimizer``, ``inner_steps`` or
``backend`` to pass."""

BASELINES = {"no_adaptation": no_adaptation, "finetune": finetune}
"""The baselines by name."""

__all__ = (
    "BACKENDS",
    "BASELINES",
    "CLOSED_FORM",
    "META_LEARNERS",
    "MetaLearner",
    "MetaState",
    "amortised",
    "anil",
    "build",
    "conditioned",
    "distill",
    "finetune",
    "fomaml",
    "imaml",
    "maml",
    "metasgd",
    "multitask",
    "no_adaptation",
    "query_loss",
    "reptile",
    "ridge",
    "split_fast",
    "support_loss",
    "tree_vdot",
    "warm_start",
)
