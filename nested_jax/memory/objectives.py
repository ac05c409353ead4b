"""Inner objectives ("attentional bias") of associative memories (paper §2.1-§2.2, Miras).

An objective scores a memory's prediction ``pred = M(k)`` against a value ``v``; the memory learns by
descending it. What the update rules need is the *surprise* ``u = dL/dpred`` (paper §1 notation).

* `DotProduct` — ``L = -<pred, v>``: Hebbian learning, gives linear attention (Eq. in §2.2.3).
* `L2` — ``L = 1/2 ||pred - v||^2``: the delta rule, gives DeltaNet (§2.2.4).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["DotProduct", "L2", "Objective", "check_objective"]


@dataclasses.dataclass(frozen=True)
class DotProduct:
    """Hebbian objective ``L(pred, v) = -<pred, v>``; surprise ``-v`` (state independent)."""

    def loss(self, pred: jax.Array, target: jax.Array) -> jax.Array:
        """Per-example loss, summed over the last axis."""
        return -jnp.sum(pred * target, axis=-1)

    def error(self, pred: jax.Array, target: jax.Array) -> jax.Array:
        """``dL/dpred``, same shape as ``pred``."""
        del pred
        return -target


@dataclasses.dataclass(frozen=True)
class L2:
    """Regression objective ``L(pred, v) = 1/2 ||pred - v||^2``; surprise ``pred - v``."""

    def loss(self, pred: jax.Array, target: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum(jnp.square(pred - target), axis=-1)

    def error(self, pred: jax.Array, target: jax.Array) -> jax.Array:
        return pred - target


Objective = DotProduct | L2


def check_objective(objective, where: str = "objective") -> Objective:
    """``objective`` if it is one of the objectives above; else a clear error (strings such as
    ``"l2"`` are not objectives: pass ``L2()`` or ``DotProduct()``)."""
    if not isinstance(objective, DotProduct | L2):
        raise TypeError(
            f"{where} must be an objective from nested_jax.memory, L2() or DotProduct(); got "
            f"{objective!r}."
        )
    return objective
