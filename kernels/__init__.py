"""Pallas kernels, each with a pure ``jax.numpy`` reference of the same function.

Installed and imported as ``jaxmeta.kernels`` (the folder ``jaxmeta/kernels`` is a
link to this one), never as a top-level ``kernels`` module.
"""

from .adapt import FusedAdapted as FusedAdapted
from .adapt import fused_adapt as fused_adapt
from .adapt import fused_adapt_task as fused_adapt_task
from .reference import fused_adapt_reference as fused_adapt_reference

__all__ = ("FusedAdapted", "fused_adapt", "fused_adapt_reference", "fused_adapt_task")
