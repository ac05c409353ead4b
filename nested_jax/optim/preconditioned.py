"""Preconditioned momentum: a momentum memory with a more expressive value (paper §3.2, §3.4 row
"more expressive association": ``min_m <m g^T, P>``, i.e. ``m <- decay * m + P(g)``).

The preconditioner ``P`` is pluggable:

* ``"identity"``: ``P(g) = g`` — heavy-ball momentum;
* ``"diagonal"``: ``P(g) = g / (sqrt(v) + eps)`` with ``v`` an EMA of ``g^2`` (rate ``b2``,
  bias-corrected) — the diagonal second-moment preconditioner of Adam/RMSProp (§3.7);
* ``"random_features"``: ``P(g) = R^T tanh(R g) / k`` row-wise, with a fixed Gaussian
  ``R: [k, d]`` per leaf (``d`` = the leaf's last axis): a fixed non-linear feature map of the
  gradient (§3.4 "higher-order feature maps"). ``R`` is drawn from ``seed`` at ``init`` and kept in
  the state, so a restored state continues exactly.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from nested_jax.optim.base import (
    as_rows,
    cast_like,
    f32,
    register_reader,
    write_gradient_memory,
    zeros_f32,
)

__all__ = [
    "PreconditionedMomentumState",
    "preconditioned_momentum",
    "scale_by_preconditioned_momentum",
]

PRECONDITIONERS = ("identity", "diagonal", "random_features")


class PreconditionedMomentumState(NamedTuple):
    """``m``: momentum memory; ``v``: second moment (``"diagonal"``, else ``()``); ``features``:
    one ``R`` per leaf (``"random_features"``, else ``()``); ``count``."""

    count: chex.Array
    m: optax.Updates
    v: optax.Updates
    features: tuple


def scale_by_preconditioned_momentum(
    decay: float = 0.9,
    *,
    preconditioner: Literal["identity", "diagonal", "random_features"] = "identity",
    b2: float = 0.999,
    eps: float = 1e-8,
    num_features: int = 64,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """``m <- decay * m + P(g)``; returns ``m`` (see module docstring)."""
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(
            f"preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}."
        )
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ValueError(f"num_features must be a positive int, got {num_features!r}.")

    def init_fn(params):
        zeros = lambda: zeros_f32(params)
        v = zeros() if preconditioner == "diagonal" else ()
        features = ()
        if preconditioner == "random_features":
            leaves = jax.tree.leaves(params)
            keys = jax.random.split(jax.random.key(seed), max(1, len(leaves)))
            features = tuple(
                jax.random.normal(k, (num_features, as_rows(jnp.asarray(p)).shape[-1]))
                for k, p in zip(keys, leaves, strict=False)
            )
        return PreconditionedMomentumState(jnp.zeros([], jnp.int32), zeros(), v, features)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        g = f32(updates)
        count = optax.safe_increment(state.count)
        v = state.v
        if preconditioner == "identity":
            pg = g
        elif preconditioner == "diagonal":
            v = write_gradient_memory(state.v, jax.tree.map(lambda g: g * g, g), b2, 1 - b2)
            c2 = 1 - b2 ** count.astype(jnp.float32)
            pg = jax.tree.map(lambda g, v: g / (jnp.sqrt(v / c2) + eps), g, v)
        else:
            leaves, treedef = jax.tree.flatten(g)
            out = []
            for r, x in zip(state.features, leaves, strict=True):
                rows = as_rows(x)
                out.append((jnp.tanh(rows @ r.T) @ r / r.shape[0]).reshape(x.shape))
            pg = jax.tree.unflatten(treedef, out)
        m = write_gradient_memory(state.m, pg, decay)
        return cast_like(m, updates), PreconditionedMomentumState(count, m, v, state.features)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def preconditioned_momentum(
    learning_rate: optax.ScalarOrSchedule,
    decay: float = 0.9,
    *,
    preconditioner: Literal["identity", "diagonal", "random_features"] = "identity",
    b2: float = 0.999,
    eps: float = 1e-8,
    num_features: int = 64,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Preconditioned-momentum optimizer: ``params <- params - lr * m``."""
    return optax.chain(
        scale_by_preconditioned_momentum(
            decay,
            preconditioner=preconditioner,
            b2=b2,
            eps=eps,
            num_features=num_features,
            seed=seed,
        ),
        optax.scale_by_learning_rate(learning_rate),
    )


register_reader(PreconditionedMomentumState, lambda state, probe: state.m)
