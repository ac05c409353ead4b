"""Associative memories (paper §2, §3.5, §5.1-§5.3).

Where things are:
  objectives.py     DotProduct (Hebbian) and L2 (delta) inner objectives
  rules.py          GD, Momentum, DGD (Delta Gradient Descent, closed form) — token-level form
  chunkwise.py      the chunk-parallel form of those rules (one kernel for all of them)
  linear.py         LinearMemory: linear attention / DeltaNet / implicit delta rule
  mlp.py            MLPMemory: residual 2-layer MLP memory (Titans' deep memory)
  nonparametric.py  SoftmaxMemory: causal softmax attention, full or sliding window
  swiglu.py         SwiGLUMemory: a SwiGLU MLP learning from external errors (a CMS level)
  base.py           AbstractMemory: sequence drivers (chunked and token-by-token reference),
                    Rates (learning rate, retention, momentum as one value)
"""

from nested_jax.memory.base import (
    AbstractMemory,
    Rates,
    StreamState,
    advance_stream,
    first_order_update,
)
from nested_jax.memory.chunkwise import unit_lower_inverse
from nested_jax.memory.linear import LinearMemory, LinearParams, LinearState
from nested_jax.memory.mlp import MLPMemory, MLPParams, MLPState, stable_step_norm
from nested_jax.memory.nonparametric import SoftmaxMemory, SoftmaxParams, SoftmaxState
from nested_jax.memory.objectives import L2, DotProduct, Objective, check_objective
from nested_jax.memory.rules import DGD, GD, Momentum, dgd_rate, nlms_rate, rule_step
from nested_jax.memory.swiglu import SwiGLUMemory

__all__ = [
    "DGD",
    "GD",
    "L2",
    "AbstractMemory",
    "DotProduct",
    "LinearMemory",
    "LinearParams",
    "LinearState",
    "MLPMemory",
    "MLPParams",
    "MLPState",
    "Momentum",
    "Objective",
    "Rates",
    "SoftmaxMemory",
    "SoftmaxParams",
    "SoftmaxState",
    "StreamState",
    "SwiGLUMemory",
    "dgd_rate",
    "advance_stream",
    "check_objective",
    "first_order_update",
    "nlms_rate",
    "rule_step",
    "stable_step_norm",
    "unit_lower_inverse",
]
