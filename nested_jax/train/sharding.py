"""Device mesh and shardings: batch over every device, parameters and optimizer state along ``fsdp``.

The mesh has two axes, ``("data", "fsdp")``. A batch ``[B, T]`` is split over both (``data`` x
``fsdp`` slices: every device computes its own rows, as fully sharded data parallelism does), so
every per-sample fast memory a model builds from it, its in-context state, is split the same way
by the compiler's sharding propagation. Every parameter and optimizer-state leaf is split along
``fsdp`` on its largest dimension that ``fsdp`` divides (replicated when none does, e.g. scalars):
``data`` holds replicas of the parameters, ``fsdp`` shards of them.
On one device all of this is a no-op. Multi-host: `initialize_distributed` before anything
else, then each host feeds its own slice of the batch (`global_batch`).

`initialize_distributed` takes the job's shape from the environment: on Cloud TPU, Slurm and
Open MPI JAX finds it itself; elsewhere (and for `nested_jax.train.launch`'s processes on one
machine) ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``NESTED_JAX_NUM_PROCESSES``
and ``NESTED_JAX_PROCESS_ID``; ``NESTED_JAX_DIST_TIMEOUT`` (seconds) bounds both the wait for
every process to join and how long a silent peer is tolerated before the job fails.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "make_mesh",
    "param_sharding",
    "batch_sharding",
    "replicated",
    "global_batch",
    "initialize_distributed",
    "DistributedError",
    "ENV_PROCESSES",
    "ENV_PROCESS_ID",
    "ENV_TIMEOUT",
]

log = logging.getLogger("nested_jax.train")

ENV_PROCESSES = "NESTED_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "NESTED_JAX_PROCESS_ID"
ENV_TIMEOUT = "NESTED_JAX_DIST_TIMEOUT"


class DistributedError(RuntimeError):
    """The processes of a multi-process job could not form it (or one of them was lost)."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"${name}={value!r} is not an integer.") from None


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int | None = None,
) -> None:
    """``jax.distributed.initialize`` with the job's shape from the arguments or the environment
    (see the module docstring); idempotent. Must run before anything starts JAX's backend.

    ``timeout_s`` (or ``$NESTED_JAX_DIST_TIMEOUT``; JAX's defaults otherwise: 300 s to join,
    100 s of silence): how long to wait for every process to join, and after how many seconds
    without a heartbeat a peer counts as dead, which ends every process of the job with an error
    instead of leaving them waiting in a collective. When the arguments cannot form a job, raises
    `DistributedError` saying what was tried; when a peer does not come or dies, JAX itself ends
    the process (SIGABRT) with its message, after this one's line saying what it waited for."""
    if jax.distributed.is_initialized():
        return
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    timeout_s = timeout_s if timeout_s is not None else _env_int(ENV_TIMEOUT)
    kw = {}
    if timeout_s is not None:
        if timeout_s < 1:
            raise DistributedError(f"the distributed timeout must be >= 1 s, got {timeout_s}.")
        kw = {"initialization_timeout": timeout_s, "heartbeat_timeout_seconds": timeout_s}
    # JAX ends the process itself (SIGABRT, "Terminating process because the JAX distributed
    # service detected fatal errors") when a peer does not join in time or stops answering: say
    # first what this process is waiting for
    log.info(
        "joining a job of %s processes as process %s through coordinator %s (%s)",
        num_processes or "?",
        "?" if process_id is None else process_id,
        coordinator or "auto-detected",
        f"waiting up to {timeout_s} s for the others" if timeout_s else "JAX's timeouts",
    )
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, **kw)
    except Exception as e:
        where = (
            f"process {process_id} of {num_processes} with coordinator {coordinator}"
            if coordinator
            else "no coordinator given and none detected (not on Cloud TPU, Slurm or Open MPI)"
        )
        raise DistributedError(
            f"could not form the multi-process job ({where}): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''} -- every process must start with the "
            f"same JAX_COORDINATOR_ADDRESS (process 0's host:port) and ${ENV_PROCESSES}, and its "
            f"own ${ENV_PROCESS_ID}; did every process start, and can they reach process 0?"
        ) from e


def make_mesh(data: int = 0, fsdp: int = 1, devices=None) -> Mesh:
    """A ``(data, fsdp)`` mesh over the first ``data * fsdp`` devices; ``data=0`` takes every
    device that ``fsdp`` leaves."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if fsdp < 1 or data < 0:
        raise ValueError(f"mesh (data={data}, fsdp={fsdp}) needs fsdp >= 1 and data >= 0.")
    if data == 0:
        if n % fsdp:
            raise ValueError(f"mesh fsdp={fsdp} does not divide the {n} visible devices.")
        data = n // fsdp
    if data * fsdp > n:
        raise ValueError(
            f"mesh (data={data}, fsdp={fsdp}) needs {data * fsdp} devices, but {n} are visible; "
            "set mesh=(0, fsdp) to use them all."
        )
    return Mesh(np.asarray(devices[: data * fsdp]).reshape(data, fsdp), ("data", "fsdp"))


def _leaf_spec(shape, fsdp: int) -> P:
    if fsdp == 1:
        return P()
    dims = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in dims:
        if shape[i] % fsdp == 0 and shape[i] >= fsdp:
            spec = [None] * len(shape)
            spec[i] = "fsdp"
            return P(*spec)
    return P()


def param_sharding(tree, mesh: Mesh):
    """A ``NamedSharding`` per leaf of ``tree`` (arrays or shape structs): FSDP along ``fsdp``."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda a: NamedSharding(mesh, _leaf_spec(np.shape(a), fsdp)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over every device of the mesh (``data`` x ``fsdp``)."""
    return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """This host's rows of the batch -> the global array sharded over the mesh (`batch_sharding`)."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local)
