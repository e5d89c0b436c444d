"""Many devices and hosts: users sharded over a device mesh, tables sharded by rows, ``jax.distributed``.

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
* :func:`initialize`: starts ``jax.distributed`` for a job of several processes
  (hosts), from flags or the environment; then :func:`make_mesh` spans the
  devices of every process, :func:`process_rows` says which task slots of a
  batch this process fills, :func:`global_batch` joins the processes' slots
  into one batch, and :func:`to_host` gathers a state back to every process.

Example:
  >>> import jax
  >>> mesh = make_mesh()
  >>> mesh.axis_names, mesh.devices.size == len(jax.devices())
  (('users',), True)
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmeta.models import path_names
from jaxmeta.tasks import TaskBatch

USERS = "users"

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
"""The environment variables :func:`initialize` reads when it is not given the values."""

__all__ = ("ENV", "USERS", "all_finite", "global_batch", "initialize", "is_multiprocess", "make_mesh", "process_rows",
           "shard_batch", "shard_state", "to_host")


def make_mesh(devices: Sequence[jax.Device] | None = None, *, axis: str = USERS) -> Mesh:
    """A one-dimensional mesh named ``axis`` over ``devices`` (default: every device of every process),
    ordered by process, so that each process holds one contiguous block of a batch's users."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("make_mesh got no devices: pass at least one jax.Device, or None for all of them.")
    devices = sorted(devices, key=lambda d: d.process_index)  # stable: keeps each process's own order
    return Mesh(np.asarray(devices), (axis,))


def _check_split(num_tasks: int, devices: int) -> None:
    if num_tasks % devices:
        raise ValueError(f"a batch of {num_tasks} users does not split over {devices} devices: pass a batch "
                         f"size that is a multiple of {devices}.")


def shard_batch(batch: TaskBatch, mesh: Mesh, *, axis: str = USERS) -> TaskBatch:
    """``batch`` on ``mesh``, its users split evenly along ``axis``.

    Raises:
      ValueError: the number of task slots is not a multiple of the devices on ``axis``.
    """
    _check_split(batch.num_tasks, mesh.shape[axis])
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


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Starts ``jax.distributed`` for a job of several processes; call it before any other JAX call.

    Each argument left ``None`` is read from its environment variable (:data:`ENV`:
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). With
    none of the three set anywhere, nothing starts and a single-process job runs
    as before. When all three are left to JAX, on a cluster it detects (Slurm,
    Open MPI, Kubernetes, ...) call ``jax.distributed.initialize()`` yourself. On
    CPUs the processes exchange data through gloo collectives.

    Args:
      coordinator: ``host:port`` of process 0, which every process reaches.
      num_processes: how many processes the job has.
      process_id: this process's number, ``0 .. num_processes - 1``.

    Returns:
      True if ``jax.distributed`` was started.

    Raises:
      ValueError: only some of the three are known, or they are out of range.
    """
    values = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    for (name, value), var in zip(values.items(), ENV):
        if value is None and os.environ.get(var):
            values[name] = os.environ[var]
    if all(v is None for v in values.values()):
        return False
    missing = [name for name, v in values.items() if v is None]
    if missing:
        raise ValueError(f"a multi-process job needs the coordinator address, the number of processes and this "
                         f"process's id; {', '.join(missing)} is missing: pass it (--coordinator HOST:PORT, "
                         f"--num-processes N, --process-id I) or set {', '.join(ENV)}.")
    try:
        count, index = int(values["num_processes"]), int(values["process_id"])
    except ValueError:
        raise ValueError(f"num_processes={values['num_processes']!r}, process_id={values['process_id']!r}: "
                         "pass whole numbers.") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"num_processes={count}, process_id={index}: pass num_processes >= 1 and a process_id "
                         f"in 0..{count - 1}.")
    if ":" not in str(values["coordinator"]):
        raise ValueError(f"coordinator={values['coordinator']!r}: pass host:port of process 0, e.g. 10.0.0.1:1234.")
    # Collectives between processes on CPUs (a no-op setting for GPU and TPU backends).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(str(values["coordinator"]), num_processes=count, process_id=index)
    return True


def is_multiprocess(mesh: Mesh | None) -> bool:
    """Whether ``mesh`` spans devices of other processes (hosts) too."""
    return mesh is not None and any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def process_rows(mesh: Mesh, num_tasks: int, *, axis: str = USERS) -> slice:
    """The task slots of a batch of ``num_tasks`` that this process's devices hold, under :func:`shard_batch`'s
    sharding: the rows this process loads and pads (all of them on a one-process mesh)."""
    _check_split(num_tasks, mesh.shape[axis])
    held = NamedSharding(mesh, P(axis)).addressable_devices_indices_map((num_tasks,)).values()
    spans = sorted({(s[0].start or 0, num_tasks if s[0].stop is None else s[0].stop) for s in held})
    if any(a[1] != b[0] for a, b in itertools.pairwise(spans)):
        raise ValueError(f"this process's devices hold the slots {spans} of the batch, which are not contiguous: "
                         "order the mesh's devices by process (make_mesh does).")
    return slice(spans[0][0], spans[-1][1])


def global_batch(local: TaskBatch, mesh: Mesh, num_tasks: int, *, axis: str = USERS) -> TaskBatch:
    """The batch of ``num_tasks`` users whose slots :func:`process_rows` are ``local`` (this process's part),
    sharded as :func:`shard_batch` shards a whole one. Every process calls it with its own part."""
    sharding = NamedSharding(mesh, P(axis))
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a, (num_tasks, *a.shape[1:])),
                        local)


def to_host(tree: Any) -> Any:
    """``tree``'s arrays as numpy arrays on every process (gathered from the processes that hold them)."""

    def get(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return np.asarray(a)
        if a.is_fully_replicated:
            return np.asarray(a.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree.map(get, tree)


@jax.jit
def _finite(leaves: list[jax.Array]) -> jax.Array:
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


def all_finite(tree: Any) -> bool:
    """Whether every float leaf of ``tree`` is finite (also for arrays spread over several processes)."""
    leaves = [a for a in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(a), jnp.inexact)]
    return bool(_finite(leaves)) if leaves else True
