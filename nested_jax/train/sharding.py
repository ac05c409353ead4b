"""Device mesh and shardings: batch along ``data``, parameters and optimizer state along ``fsdp``.

The mesh has two axes, ``("data", "fsdp")``. A batch ``[B, T]`` is split along ``data`` (so every
per-sample fast memory a model builds from it, its in-context state, is split the same way by the
compiler's sharding propagation). Every parameter and optimizer-state leaf is split along
``fsdp`` on its largest dimension that ``fsdp`` divides (replicated when none does, e.g. scalars).
On one device all of this is a no-op. Multi-host: `initialize_distributed` before anything
else, then each host feeds its own slice of the batch (`global_batch`).
"""

from __future__ import annotations

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
]


def initialize_distributed() -> None:
    """``jax.distributed.initialize()`` (cluster settings from the environment); idempotent."""
    if jax.process_count() == 1 and not getattr(initialize_distributed, "_done", False):
        jax.distributed.initialize()
        initialize_distributed._done = True


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
    """Leading (batch) axis along ``data``."""
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """This host's rows of the batch -> the global array sharded along ``data``."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local)
