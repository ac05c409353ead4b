"""Newton-Schulz orthogonalisation as an output nonlinearity (paper §3.2, §3.4 "Muon" row).

``W <- W - lr * NS_T(m)``: with ``m`` the momentum memory, this is Muon. The paper reads one NS step
as one GD step on ``L(O; g) = 1/2 ||O - g||^2 + 1/4 ||O^T O - I||^2``-type objectives: from
``O_0 = g`` with step ``1/4`` the gradient step on ``1/2||O - g||^2 + 1/2||O^T O - I||^2`` gives the
cubic iteration ``1.5 g - 0.5 g g^T g`` (`orthogonality_gd_step`, tested equal).

Coefficients: Muon's quintic ``(3.4445, -4.7750, 2.0315)`` by default, the cubic ``(1.5, -0.5, 0)``
as ``coeffs="cubic"``. The input is first divided by its Frobenius norm; tall matrices are
transposed so the Gram matrix is the small one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nested_jax.optim.base import cast_like, f32

__all__ = [
    "CUBIC",
    "QUINTIC",
    "newton_schulz",
    "ns_coefficients",
    "orthogonality_gd_step",
    "scale_by_newton_schulz",
]

QUINTIC = (3.4445, -4.7750, 2.0315)
CUBIC = (1.5, -0.5, 0.0)


def ns_coefficients(coeffs) -> tuple[float, float, float]:
    """The ``(a, b, c)`` of a Newton-Schulz iteration: ``"quintic"``, ``"cubic"`` or 3 numbers
    (checked; a clear error otherwise)."""
    if isinstance(coeffs, str):
        table = {"quintic": QUINTIC, "cubic": CUBIC}
        if coeffs not in table:
            raise ValueError(f"coeffs must be 'quintic', 'cubic' or 3 numbers, got {coeffs!r}.")
        return table[coeffs]
    if len(coeffs) != 3:
        raise ValueError(f"coeffs must have 3 entries (a, b, c), got {coeffs!r}.")
    return tuple(coeffs)


def newton_schulz(x: jax.Array, steps: int = 5, coeffs="quintic", eps: float = 1e-8) -> jax.Array:
    """Approximate the orthogonal polar factor of a matrix ``x: [m, n]`` (float32 inside).

    Each step: ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``.
    """
    if x.ndim != 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {x.shape}.")
    a, b, c = ns_coefficients(coeffs)
    y = x.astype(jnp.float32)
    tall = y.shape[0] > y.shape[1]
    if tall:
        y = y.T
    y = y / (jnp.linalg.norm(y) + eps)
    for _ in range(steps):
        gram = y @ y.T
        y = a * y + (b * gram + c * gram @ gram) @ y
    return (y.T if tall else y).astype(x.dtype)


def orthogonality_gd_step(g: jax.Array, zeta: float = 0.25) -> jax.Array:
    """One GD step from ``O = g`` on ``1/2||O - g||^2 + 1/2||O^T O - I||^2`` (paper §3.2)."""
    o = g
    eye = jnp.eye(g.shape[1], dtype=g.dtype)
    grad = (o - g) + 2.0 * o @ (o.T @ o - eye)
    return o - zeta * grad


class NewtonSchulzState(NamedTuple):
    """Stateless (the orthogonalisation has no memory of its own)."""


def scale_by_newton_schulz(
    steps: int = 5, coeffs="quintic", eps: float = 1e-8
) -> optax.GradientTransformationExtraArgs:
    """Orthogonalise every 2-D update leaf; other leaves pass through unchanged."""
    ns_coefficients(coeffs)

    def init_fn(params):
        del params
        return NewtonSchulzState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        out = jax.tree.map(
            lambda u: newton_schulz(u, steps, coeffs, eps) if jnp.ndim(u) == 2 else u,
            f32(updates),
        )
        return cast_like(out, updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
