"""nested_jax: Nested Learning (Behrouz et al., NeurIPS 2025) in JAX.

Sub-packages:
  levels    learning levels, the multi-frequency runner and the chunk engine (paper §2.3, §4.1)
  memory    associative memories: objectives, update rules (GD, momentum, DGD), linear / MLP /
            non-parametric memories with chunk-parallel forms and token-by-token twins (§2, §3.5)
  optim     optimizers as memories, as Optax transformations: momentum, delta / preconditioned
            momentum, Adam, DMGD, Newton-Schulz, M3, read_memory (§3)
  models    language models on the memories: Transformer++, Titans, self-modifying Titans, the
            Continuum Memory System and Hope (§5-§8)
  train     the training system: configs, data, checkpoints, the training loop
  transfer  knowledge transfer between levels and Neural Learning Modules (§4)
"""

from importlib.metadata import PackageNotFoundError, version

from nested_jax import memory, models, optim, train, transfer
from nested_jax.levels import (
    ChunkScan,
    Level,
    LevelsResult,
    fire,
    firing_schedule,
    run_levels,
    run_levels_reference,
    scan_chunks,
)

try:
    __version__ = version("nested_jax")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "unknown"

__all__ = [
    "ChunkScan",
    "Level",
    "LevelsResult",
    "fire",
    "firing_schedule",
    "memory",
    "models",
    "optim",
    "run_levels",
    "run_levels_reference",
    "scan_chunks",
    "train",
    "transfer",
]
