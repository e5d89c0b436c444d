"""Users sharded over a device mesh, embedding tables sharded by rows, with ``jax.sharding``.

The engine's compiled functions are plain ``jax.jit`` functions of the state and
the batch, so placing those two on a mesh is all it takes: XLA's partitioner runs
each user's inner loop on the device that holds the user, and the meta-gradient,
the sum over the batch's users, becomes a sum over devices. The same code runs
on one CPU (a mesh of one device) and on many devices.

* :func:`make_mesh`: a one-axis mesh, ``"users"``, over the given devices (all by
  default).
* :func:`shard_batch`: a :class:`jaxmeta.tasks.TaskBatch` split along its users.
* :func:`shard_state`: a :class:`jaxmeta.algorithms.MetaState` replicated, except
  the parameter tables chosen by a path predicate (and their optimizer moments),
  which are split by rows along the same axis: a catalogue too large for one
  device lives in pieces, and lookups and their gradients work on the pieces.

Example:
  >>> import jax
  >>> mesh = make_mesh()
  >>> mesh.axis_names, mesh.devices.size == len(jax.devices())
  (('users',), True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmeta.models import path_names
from jaxmeta.tasks import TaskBatch

USERS = "users"

__all__ = ("USERS", "make_mesh", "shard_batch", "shard_state")


def make_mesh(devices: Sequence[jax.Device] | None = None, *, axis: str = USERS) -> Mesh:
    """A one-dimensional mesh named ``axis`` over ``devices`` (default: every device)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("make_mesh got no devices: pass at least one jax.Device, or None for all of them.")
    return Mesh(np.asarray(devices), (axis,))


def shard_batch(batch: TaskBatch, mesh: Mesh, *, axis: str = USERS) -> TaskBatch:
    """``batch`` on ``mesh``, its users split evenly along ``axis``.

    Raises:
      ValueError: the number of task slots is not a multiple of the devices on ``axis``.
    """
    size = mesh.shape[axis]
    if batch.num_tasks % size:
        raise ValueError(f"a batch of {batch.num_tasks} users does not split over {size} devices: pass a batch "
                         f"size that is a multiple of {size}.")
    return jax.device_put(batch, NamedSharding(mesh, P(axis)))


def shard_state(state: Any, mesh: Mesh, *, row_sharded: Callable[[tuple[str, ...]], bool] = lambda path: False,
                axis: str = USERS) -> Any:
    """``state`` on ``mesh``: replicated, but for row-sharded tables.

    Args:
      state: a :class:`jaxmeta.algorithms.MetaState` (any pytree with a
        ``params`` field).
      mesh: the mesh.
      row_sharded: path predicate on the parameters (e.g. ``lambda path:
        path[0] == "embeddings"``): those leaves, and the optimizer-state leaves
        that mirror them (Adam's moments), are split by rows along ``axis``.
      axis: the mesh axis to split the rows along.

    Raises:
      ValueError: a row-sharded table's rows are not a multiple of the devices.
    """
    size = mesh.shape[axis]
    tables = [path_names(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.params)
              if row_sharded(path_names(p))]

    def place(path, leaf):
        names = path_names(path)
        if np.ndim(leaf) and any(names[-len(t):] == t for t in tables):
            if np.shape(leaf)[0] % size:
                raise ValueError(f"table {'/'.join(names)} has {np.shape(leaf)[0]} rows, which do not split over "
                                 f"{size} devices: give it a multiple of {size} rows (unused rows are never read).")
            return jax.device_put(leaf, NamedSharding(mesh, P(axis)))
        return jax.device_put(leaf, NamedSharding(mesh, P()))

    return jax.tree_util.tree_map_with_path(place, state)
