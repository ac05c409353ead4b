"""Training: data (tokenizers, corpora, grain pipeline), configs, train state and steps, the
loop with checkpoints (orbax), sharding (``data`` / ``fsdp`` mesh) and generation.

Where things are:
  data.py        tokenizers, offline corpora, the split by document, the grain pipeline
  config.py      TrainConfig / DataConfig / OptimConfig, named runs, ``key=value`` overrides
  optimizers.py  the outer optimizers by name (OPTIMIZERS) and the learning-rate schedule
  step.py        TrainState, jitted train / eval steps
  checkpoint.py  orbax v1 checkpoints: keep N, atomic, fall back past a corrupt step
  sharding.py    the (data, fsdp) mesh and shardings; multi-host initialisation
  loop.py        Run, train (resumable, NaN-guarded), evaluate, generate
"""

from nested_jax.train.checkpoint import CheckpointMismatchError, Checkpoints
from nested_jax.train.config import (
    ConfigError,
    DataConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    get_train_config,
    list_train_configs,
)
from nested_jax.train.data import DataError
from nested_jax.train.loop import (
    NonFiniteLossError,
    Run,
    RunResult,
    evaluate,
    generate,
    load_run,
    read_metrics,
    sample,
    train,
)
from nested_jax.train.optimizers import OPTIMIZERS, make_optimizer
from nested_jax.train.step import TrainState, train_step

__all__ = [
    "OPTIMIZERS",
    "CheckpointMismatchError",
    "Checkpoints",
    "ConfigError",
    "DataConfig",
    "DataError",
    "NonFiniteLossError",
    "OptimConfig",
    "Run",
    "RunResult",
    "TrainConfig",
    "TrainState",
    "apply_overrides",
    "evaluate",
    "generate",
    "get_train_config",
    "list_train_configs",
    "load_run",
    "make_optimizer",
    "read_metrics",
    "sample",
    "train",
    "train_step",
]
