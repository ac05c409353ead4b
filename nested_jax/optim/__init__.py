"""Optimizers as associative memories, as Optax transformations (paper §3).

Where things are:
  momentum.py       momentum as a memory; delta momentum (L2 objective)
  preconditioned.py preconditioned momentum (identity, diagonal second moment, random features)
  adam.py           Adam as the optimal associative memory (EMA == optax.adam, literal)
  newton_schulz.py  Newton-Schulz output nonlinearity (Muon's direction), cubic/quintic
  m3.py             M3, Multi-scale Momentum Muon (Algorithm 1), non-matrix leaves to AdamW
  dmgd.py           DMGD, deep momentum: an MLP memory per parameter leaf, meta-learnable init
  learned.py        a learned optimizer: updates generated from (g, m) by a meta-learned rule
  base.py           write_gradient_memory: the one momentum memory all of them write;
                    read_memory: look inside any of these optimizers' memories
"""

from nested_jax.optim.adam import AdamMemoryState, AdamReading, adam_memory, scale_by_adam_memory
from nested_jax.optim.base import read_memory, register_reader, write_gradient_memory
from nested_jax.optim.dmgd import DMGDState, dmgd, dmgd_memory, init_dmgd_memory, scale_by_dmgd
from nested_jax.optim.learned import (
    LearnedRuleState,
    init_learned_rule,
    learned_optimizer,
    meta_train_learned_optimizer,
    scale_by_learned_rule,
)
from nested_jax.optim.m3 import M3Reading, M3State, m3, scale_by_m3
from nested_jax.optim.momentum import (
    MomentumMemoryState,
    delta_momentum,
    momentum_memory,
    scale_by_delta_momentum,
    scale_by_momentum_memory,
)
from nested_jax.optim.newton_schulz import (
    CUBIC,
    QUINTIC,
    newton_schulz,
    orthogonality_gd_step,
    scale_by_newton_schulz,
)
from nested_jax.optim.preconditioned import (
    PreconditionedMomentumState,
    preconditioned_momentum,
    scale_by_preconditioned_momentum,
)

__all__ = [
    "CUBIC",
    "QUINTIC",
    "AdamMemoryState",
    "AdamReading",
    "DMGDState",
    "LearnedRuleState",
    "M3Reading",
    "M3State",
    "MomentumMemoryState",
    "PreconditionedMomentumState",
    "adam_memory",
    "delta_momentum",
    "dmgd",
    "dmgd_memory",
    "init_dmgd_memory",
    "init_learned_rule",
    "learned_optimizer",
    "m3",
    "meta_train_learned_optimizer",
    "momentum_memory",
    "newton_schulz",
    "orthogonality_gd_step",
    "preconditioned_momentum",
    "read_memory",
    "register_reader",
    "write_gradient_memory",
    "scale_by_adam_memory",
    "scale_by_delta_momentum",
    "scale_by_dmgd",
    "scale_by_learned_rule",
    "scale_by_m3",
    "scale_by_momentum_memory",
    "scale_by_newton_schulz",
    "scale_by_preconditioned_momentum",
]
