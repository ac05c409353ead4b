"""nested_jax: Nested Learning (Behrouz et al., NeurIPS 2025) in JAX.

Sub-packages:
  levels   learning levels and the multi-frequency runner (paper §2.3, §4.1)
  memory   associative memories: objectives, update rules (GD, momentum, DGD), linear / MLP /
           non-parametric memories with chunk-parallel forms and token-by-token twins (§2, §3.5)
  optim    optimizers as memories, as Optax transformations: momentum, delta / preconditioned
           momentum, Adam, DMGD, Newton-Schulz, M3, read_memory (§3)
  models   language models on the memories: Transformer++, Titans (§5-§6; in progress)
"""

from nested_jax import memory, models, optim
from nested_jax.levels import Level, LevelsResult, firing_schedule, run_levels, run_levels_reference

__version__ = "0.3.0"

__all__ = [
    "Level",
    "LevelsResult",
    "firing_schedule",
    "memory",
    "models",
    "optim",
    "run_levels",
    "run_levels_reference",
]
