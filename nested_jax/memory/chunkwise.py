"""Chunk-parallel form of the rank-one memory recurrences (DESIGN §6; paper §5.3, Titans/TTT dual form).

Inside one chunk of ``C`` tokens every inner gradient is taken at the chunk-boundary weights ``W_0``,
so token ``s`` contributes the rank-one term ``e_s x_s^T`` (error ``e_s``, layer input ``x_s``, both
fixed for the chunk). The per-token weights then follow

    S_t = beta_t S_{t-1} + e_t x_t^T                         (momentum rules; else S_t := e_t x_t^T)
    W_t = alpha_t W_{t-1} - eta_t S_t + u_t x_t^T,   u_t = -eta_t W_{t-1} x_t   (DGD only; else 0)

which is GD, momentum and DGD (:mod:`nested_jax.memory.rules`) at once. Unrolled,

    W_t = a_t W_0 - g_t S_0 - sum_s Gamma[t, s] e_s x_s^T + sum_s Da[t, s] u_s x_s^T

with scalar coefficients from cumulative products of ``alpha`` and ``beta`` (computed in log space):
``Da[t, r] = prod_{r<j<=t} alpha_j``, ``Db[r, s] = prod_{s<j<=r} beta_j``, ``Gamma = Da diag(eta) Db``.
DGD's ``u`` solves a unit lower-triangular system, inverted with ``log2 C`` matmul squarings (not
``solve_triangular``, whose gradient can hang inside ``lax.scan`` on CPU with jax 0.10).

Reads use the per-token state *before* token t's write: ``y_t = W_{t-1} q_t``. Everything is a
handful of ``[C, C]`` and ``[C, d]`` matmuls per chunk, batched over any leading axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["rank1_chunk", "unit_lower_inverse"]

_NEG = -1e30


def _decay_matrix(log_cum: jax.Array) -> jax.Array:
    """``D[t, r] = exp(L_t - L_r)`` for ``t >= r`` else 0; ``log_cum: [..., C]``."""
    c = log_cum.shape[-1]
    lower = jnp.tril(jnp.ones((c, c), bool))
    diff = log_cum[..., :, None] - log_cum[..., None, :]
    return jnp.exp(jnp.where(jnp.broadcast_to(lower, diff.shape), diff, _NEG))


def _log(x: jax.Array) -> jax.Array:
    return jnp.log(jnp.maximum(x, 1e-30))


def _shift_down(x: jax.Array, fill: float, axis: int) -> jax.Array:
    """``y[t] = x[t-1]`` along ``axis`` with ``y[0] = fill``."""
    x = jnp.moveaxis(x, axis, -1)
    pad = jnp.full(x.shape[:-1] + (1,), fill, x.dtype)
    y = jnp.concatenate([pad, x[..., :-1]], axis=-1)
    return jnp.moveaxis(y, -1, axis)


def unit_lower_inverse(lower: jax.Array) -> jax.Array:
    """``(I + L)^{-1}`` for strictly lower-triangular ``L: [..., C, C]``, by matmuls only.

    ``(I + L)^{-1} = sum_k (-L)^k = prod_i (I + N^(2^i))`` with ``N = -L`` nilpotent.
    """
    c = lower.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(c, dtype=lower.dtype), lower.shape)
    n = -lower
    inv = eye + n
    steps = max(0, (c - 1).bit_length() - 1)
    for _ in range(steps):
        n = n @ n
        inv = inv + inv @ n
    return inv


def rank1_chunk(w0, s0, x, e, q, eta, alpha, beta, *, delta: bool):
    """Process one chunk of rank-one writes with per-token reads.

    Args:
      w0: ``[..., d_out, d_in]`` weights at the chunk boundary.
      s0: ``[..., d_out, d_in]`` momentum at the boundary, or ``None`` for rules without momentum.
      x: ``[..., C, d_in]`` layer inputs of the chunk's writes.
      e: ``[..., C, d_out]`` errors (``dL/dy`` at ``w0``) of the chunk's writes.
      q: ``[..., C, d_in]`` read inputs.
      eta, alpha: ``[..., C]`` learning rates (already ``eta'`` for DGD) and retention.
      beta: ``[..., C]`` momentum coefficients, ignored when ``s0`` is ``None``.
      delta: DGD decay ``W (alpha I - eta x x^T)`` instead of ``alpha W``.

    Returns:
      ``(y, w, s)``: reads ``y: [..., C, d_out]`` (``y_t = W_{t-1} q_t``), weights and momentum after
      the chunk (``s`` is ``None`` without momentum).
    """
    la = jnp.cumsum(_log(alpha), axis=-1)
    da = _decay_matrix(la)
    a = jnp.exp(la)
    a_prev = _shift_down(a, 1.0, -1)
    da_prev = _shift_down(da, 0.0, -2)
    momentum = s0 is not None
    if momentum:
        lb = jnp.cumsum(_log(beta), axis=-1)
        db = _decay_matrix(lb)
        gamma = da @ (eta[..., :, None] * db)
        g = jnp.einsum("...tr,...r->...t", da, eta * jnp.exp(lb))
        g_prev = _shift_down(g, 0.0, -1)
    else:
        gamma = da * eta[..., None, :]
    gamma_prev = _shift_down(gamma, 0.0, -2)

    def known(z):
        """``W_{t-1} z_t`` without the DGD correction, for inputs ``z: [..., C, d_in]``."""
        zx = z @ jnp.swapaxes(x, -1, -2)
        out = a_prev[..., None] * (z @ jnp.swapaxes(w0, -1, -2)) - (gamma_prev * zx) @ e
        if momentum:
            out = out - g_prev[..., None] * (z @ jnp.swapaxes(s0, -1, -2))
        return out, zx

    y, qx = known(q)
    w = a[..., -1, None, None] * w0 - jnp.einsum("...s,...so,...si->...oi", gamma[..., -1, :], e, x)
    if momentum:
        w = w - g[..., -1, None, None] * s0
    if delta:
        base, xx = known(x)
        lower = eta[..., :, None] * da_prev * xx
        u = unit_lower_inverse(lower) @ (-eta[..., :, None] * base)
        y = y + (da_prev * qx) @ u
        w = w + jnp.einsum("...s,...so,...si->...oi", da[..., -1, :], u, x)
    s = None
    if momentum:
        s = jnp.exp(lb[..., -1])[..., None, None] * s0 + jnp.einsum(
            "...s,...so,...si->...oi", db[..., -1, :], e, x
        )
    return y, w, s
