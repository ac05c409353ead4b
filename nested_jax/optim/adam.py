"""Adam as the optimal associative memory (paper §3.7, Appendix B).

The momentum memory ``m`` minimises ``sum_i ||m * g_i - P||^2 + lambda ||m||^2`` element-wise; its
optimum is ``m* = P * M / (H + lambda)`` with ``M = b1 sum_i g_i`` and ``H = b2 sum_i g_i^2``. With
``P = sqrt(H / b2)`` and ``lambda -> 0`` the step is ``M / (sqrt(b2) (sqrt(H) + eps))``: Adam.

Two variants:

* ``variant="ema"`` (default): exponential moving averages with bias correction; equals
  ``optax.scale_by_adam`` (and, with the learning rate, ``optax.adam``).
* ``variant="literal"``: the undecayed accumulators of Appendix B,
  ``M += b1 g``, ``H += b2 g^2``, direction ``M / (sqrt(b2) * (sqrt(H) + eps))``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from nested_jax.optim.base import (
    cast_like,
    f32,
    register_reader,
    write_gradient_memory,
    zeros_f32,
)

__all__ = ["AdamMemoryState", "adam_memory", "scale_by_adam_memory"]


class AdamMemoryState(NamedTuple):
    """``m``: first-moment memory; ``v``: second-moment memory (float32); ``count``: steps."""

    count: chex.Array
    m: optax.Updates
    v: optax.Updates


class AdamReading(NamedTuple):
    """What `read_memory` returns for Adam: the raw first- and second-moment
    memories and the preconditioner's answer to the probe, ``probe / sqrt(v)`` (up to Adam's
    constant factors: bias correction for ``"ema"``, ``1/sqrt(b2)`` for ``"literal"``)."""

    momentum: optax.Updates
    second_moment: optax.Updates
    preconditioned_probe: optax.Updates | None


def _read(state: AdamMemoryState, probe) -> AdamReading:
    answer = None
    if probe is not None:
        answer = jax.tree.map(lambda p, v: p / jnp.sqrt(v + 1e-30), f32(probe), state.v)
    return AdamReading(state.m, state.v, answer)


def scale_by_adam_memory(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    variant: Literal["ema", "literal"] = "ema",
) -> optax.GradientTransformationExtraArgs:
    """Adam's direction from its two memories (see module docstring)."""
    if variant not in ("ema", "literal"):
        raise ValueError(f"variant must be 'ema' or 'literal', got {variant!r}.")

    def init_fn(params):
        return AdamMemoryState(jnp.zeros([], jnp.int32), zeros_f32(params), zeros_f32(params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        g = f32(updates)
        count = optax.safe_increment(state.count)
        g2 = jax.tree.map(lambda g: g * g, g)
        if variant == "ema":  # both moments are the one gradient memory (optim.base)
            m = write_gradient_memory(state.m, g, b1, 1 - b1)
            v = write_gradient_memory(state.v, g2, b2, 1 - b2)
            # bias correction in float32 (optax's helper mixes float ** int32, which strict
            # dtype promotion rejects)
            t = count.astype(jnp.float32)
            c1, c2 = 1 - b1**t, 1 - b2**t
            d = jax.tree.map(lambda a, b: (a / c1) / (jnp.sqrt(b / c2) + eps), m, v)
        else:
            m = write_gradient_memory(state.m, g, 1.0, b1)
            v = write_gradient_memory(state.v, g2, 1.0, b2)
            d = jax.tree.map(lambda a, b: a / (jnp.sqrt(b2) * (jnp.sqrt(b) + eps)), m, v)
        return cast_like(d, updates), AdamMemoryState(count, m, v)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adam_memory(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    variant: Literal["ema", "literal"] = "ema",
) -> optax.GradientTransformationExtraArgs:
    """Adam-as-memory optimizer; ``variant="ema"`` equals ``optax.adam``."""
    return optax.chain(
        scale_by_adam_memory(b1, b2, eps, variant=variant),
        optax.scale_by_learning_rate(learning_rate),
    )


register_reader(AdamMemoryState, _read)
