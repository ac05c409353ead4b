"""Momentum as an associative memory (paper §2.2 item 2, §3.2, §3.4; decisions D17-D18).

GD with momentum is a 2-level system: the inner level is a value-less memory ``m`` that compresses
the gradients, the outer level moves the weights with it. The memory's objective picks the rule:

* ``objective=DotProduct()`` (``min_m -<m, g>``): ``m <- decay * m + g`` — heavy-ball momentum; with
  ``optax.scale_by_learning_rate`` this is exactly ``optax.sgd(lr, momentum=decay)``.
* ``objective=L2()`` — **delta momentum** (paper Eq. 49 / NeurIPS Eq. 22, settled in
  ``docs/decisions.md``): ``m <- decay * m - beta * g_hat <g_hat, m> + g`` with ``g_hat = g/||g||``
  per parameter leaf (flattened). The gradient-dependent decay removes the part of the memory along
  the new gradient before writing it, i.e. it forgets selectively.

Updates follow Optax's sign convention: the transform returns the direction ``m``; the alias
chains ``scale_by_learning_rate`` (``-lr * m``).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax.numpy as jnp
import optax

from nested_jax.memory import L2, DotProduct, Objective, check_objective
from nested_jax.optim.base import (
    cast_like,
    f32,
    register_reader,
    write_gradient_memory,
    zeros_f32,
)

__all__ = [
    "MomentumMemoryState",
    "delta_momentum",
    "momentum_memory",
    "scale_by_delta_momentum",
    "scale_by_momentum_memory",
]


class MomentumMemoryState(NamedTuple):
    """``count``: steps taken; ``m``: the momentum memory (float32, params' structure)."""

    count: chex.Array
    m: optax.Updates


def scale_by_momentum_memory(
    decay: float = 0.9,
    *,
    objective: Objective = DotProduct(),
    beta: float = 0.5,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
    """Momentum memory; returns the direction ``m`` (see module docstring).

    Args:
      decay: retention ``alpha`` of the memory.
      objective: ``DotProduct()`` (heavy ball) or ``L2()`` (delta momentum).
      beta: strength of the delta rule's ``g_hat g_hat^T`` decay (``L2()`` only), in ``[0, 1]``.
      eps: guards ``||g||`` when normalising the gradient.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state `MomentumMemoryState`.
    """
    check_objective(objective)

    def init_fn(params):
        return MomentumMemoryState(jnp.zeros([], jnp.int32), zeros_f32(params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        m = write_gradient_memory(
            state.m, f32(updates), decay, objective=objective, beta=beta, eps=eps
        )
        count = optax.safe_increment(state.count)
        return cast_like(m, updates), MomentumMemoryState(count, m)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_delta_momentum(
    decay: float = 0.9, beta: float = 0.5, eps: float = 1e-12
) -> optax.GradientTransformationExtraArgs:
    """Delta momentum: `scale_by_momentum_memory` with the L2 objective."""
    return scale_by_momentum_memory(decay, objective=L2(), beta=beta, eps=eps)


def momentum_memory(
    learning_rate: optax.ScalarOrSchedule,
    decay: float = 0.9,
    *,
    objective: Objective = DotProduct(),
    beta: float = 0.5,
) -> optax.GradientTransformationExtraArgs:
    """Momentum-as-memory optimizer: ``params <- params - lr * m``."""
    return optax.chain(
        scale_by_momentum_memory(decay, objective=objective, beta=beta),
        optax.scale_by_learning_rate(learning_rate),
    )


def delta_momentum(
    learning_rate: optax.ScalarOrSchedule, decay: float = 0.9, beta: float = 0.5
) -> optax.GradientTransformationExtraArgs:
    """Delta-momentum optimizer (paper §3.4): ``params <- params - lr * m``."""
    return momentum_memory(learning_rate, decay, objective=L2(), beta=beta)


register_reader(MomentumMemoryState, lambda state, probe: state.m)
