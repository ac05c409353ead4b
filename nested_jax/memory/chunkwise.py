"""Chunk-parallel form of the rank-one memory recurrences (paper §5.3, the Titans/TTT dual form).

Inside one chunk of ``C`` tokens every inner gradient is taken at the chunk-boundary weights ``W_0``,
so token ``s`` contributes the rank-one term ``e_s x_s^T`` (error ``e_s``, layer input ``x_s``, both
fixed for the chunk). The per-token weights then follow

    S_t = beta_t S_{t-1} + e_t x_t^T                         (momentum rules; else S_t := e_t x_t^T)
    W_t = alpha_t W_{t-1} - eta_t S_t + u_t x_t^T,   u_t = -eta_t W_{t-1} x_t   (DGD only; else 0)

which is GD, momentum and DGD (`nested_jax.memory.rules`) at once. Unrolled,

    W_t = a_t W_0 - g_t S_0 - sum_s Gamma[t, s] e_s x_s^T + sum_s Da[t, s] u_s x_s^T

with scalar coefficients from cumulative products of ``alpha`` and ``beta`` (computed in log space):
``Da[t, r] = prod_{r<j<=t} alpha_j``, ``Db[r, s] = prod_{s<j<=r} beta_j``, ``Gamma = Da diag(eta) Db``.
DGD's ``u`` solves a unit lower-triangular system, inverted by matmuls only: squarings of blocks
of 16 rows, merged in pairs (not ``solve_triangular``, whose gradient can hang inside ``lax.scan``
on CPU with jax 0.10).

Reads use the per-token state *before* token t's write: ``y_t = W_{t-1} q_t``.

Performance: everything that does not depend on the memory state (the coefficients, the masked
``[C, C]`` products of queries and keys, DGD's triangular inverse) is computed by
`chunk_coefficients` and `delta_inverse` for *all chunks at once*, outside the scan over
chunks; only `chunk_read`, `chunk_delta_u` and `chunk_end` run per chunk (the
linear and MLP memories compose them, `nested_jax.memory.linear` and
`nested_jax.memory.mlp`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "ChunkCoefs",
    "chunk_coefficients",
    "chunk_delta_u",
    "chunk_end",
    "chunk_read",
    "delta_inverse",
    "unit_lower_inverse",
]

_NEG = -1e30


class ChunkCoefs(NamedTuple):
    """State-independent coefficients of one chunk (leading dims ``[...]``, ``C`` tokens).

    ``a_prev[t] = a_{t-1}``; ``da_prev[t, s] = Da[t-1, s]`` (strictly lower); ``gamma_prev``
    likewise; ``*_last`` are the rows for the chunk's final state. Momentum fields are ``None``
    for rules without momentum.
    """

    a_prev: jax.Array  # [..., C]
    a_last: jax.Array  # [...]
    da_prev: jax.Array  # [..., C, C]
    da_last: jax.Array  # [..., C]
    gamma_prev: jax.Array  # [..., C, C]
    gamma_last: jax.Array  # [..., C]
    g_prev: jax.Array | None  # [..., C]
    g_last: jax.Array | None  # [...]
    b_last: jax.Array | None  # [...]
    db_last: jax.Array | None  # [..., C]


def _log(x: jax.Array) -> jax.Array:
    return jnp.log(jnp.maximum(x, 1e-30))


def _decay(row_cum: jax.Array, col_cum: jax.Array, strict: bool) -> jax.Array:
    """``D[t, r] = exp(R_t - L_r)`` on the (strictly) lower triangle, else 0."""
    c = row_cum.shape[-1]
    mask = jnp.tril(jnp.ones((c, c), bool), k=-1 if strict else 0)
    diff = row_cum[..., :, None] - col_cum[..., None, :]
    return jnp.exp(jnp.where(jnp.broadcast_to(mask, diff.shape), diff, _NEG))


def _shift_rows(a: jax.Array) -> jax.Array:
    """Row ``t`` of the result is row ``t - 1`` of ``a: [..., C, n]`` (row 0 zero): one pad."""
    cfg = [(0, 0, 0)] * (a.ndim - 2) + [(1, -1, 0), (0, 0, 0)]
    return jax.lax.pad(a, jnp.zeros((), a.dtype), cfg)


def chunk_coefficients(eta, alpha, beta, *, momentum: bool) -> ChunkCoefs:
    """Coefficients for ``eta, alpha, beta: [..., C]`` (``eta`` is ``eta'`` for DGD).

    Every ``*_prev`` row is the previous row of the inclusive matrix (``Da[t-1, r]``), so each
    is that matrix shifted down by one row rather than a product of its own."""
    la = jnp.cumsum(_log(alpha), axis=-1)  # inclusive: L_t
    la_ex = la - _log(alpha)  # exclusive: L_{t-1}
    da = _decay(la, la, strict=False)  # Da[t, r]
    da_prev = _shift_rows(da)  # Da[t-1, r], r < t
    a_prev = jnp.exp(la_ex)
    if momentum:
        lb = jnp.cumsum(_log(beta), axis=-1)
        db = _decay(lb, lb, strict=False)
        gamma = da @ (eta[..., :, None] * db)  # Gamma = Da diag(eta) Db
        g = jnp.einsum("...tr,...r->...t", da, eta * jnp.exp(lb))
        g_prev = _shift_rows(g[..., None])[..., 0]
        mom = (g_prev, g[..., -1], jnp.exp(lb[..., -1]), db[..., -1, :])
    else:
        gamma = da * eta[..., None, :]
        mom = (None, None, None, None)
    gamma_prev = _shift_rows(gamma)
    return ChunkCoefs(
        a_prev, jnp.exp(la[..., -1]), da_prev, da[..., -1, :], gamma_prev, gamma[..., -1, :], *mom
    )


def _squaring_inverse(lower: jax.Array) -> jax.Array:
    """``(I + L)^{-1} = sum_k (-L)^k = prod_i (I + N^(2^i))`` with ``N = -L`` nilpotent:
    ``2 (log2 C - 1)`` matmuls of the full size."""
    c = lower.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(c, dtype=lower.dtype), lower.shape)
    n = -lower
    inv = eye + n
    for _ in range(max(0, (c - 1).bit_length() - 1)):
        n = n @ n
        inv = inv + inv @ n
    return inv


def _blocks(a: jax.Array, size: int, below: int = 0) -> jax.Array:
    """The diagonal blocks of size ``size`` of ``a: [..., n, n]`` (``below=1``: the blocks just
    below them, every other one: the lower-left block of each pair), as ``[..., m, size, size]``.
    Static slices, stacked (a gather on the diagonal, ``jnp.diagonal`` of a reshape, made XLA's
    CPU compiler fail its own verification in some batched shapes, jax 0.10)."""
    step = size * (1 + below)
    starts = range(0, a.shape[-1], step)
    return jnp.stack(
        [a[..., i + below * size : i + (1 + below) * size, i : i + size] for i in starts], axis=-3
    )


def unit_lower_inverse(lower: jax.Array, block: int = 16) -> jax.Array:
    """``(I + L)^{-1}`` for strictly lower-triangular ``L: [..., C, C]``, by matmuls only.

    Up to ``block`` rows: the Neumann series by squarings (`_squaring_inverse`). Larger: the
    diagonal blocks of size ``block`` are inverted so, all in one batched call, then merged in
    pairs, ``[[A, 0], [B, D]]^{-1} = [[A^-1, 0], [-D^-1 B A^-1, D^-1]]``, doubling the block
    size each time (``C`` is padded with identity rows up to ``block`` times a power of two).
    The same number of matmul calls as the plain squarings at ``C = 64``, with about a tenth of
    their work (the squarings' cost grows as ``C^3 log C``).
    """
    c = lower.shape[-1]
    if c <= block:
        return _squaring_inverse(lower)
    m = 1 << (-(-c // block) - 1).bit_length()  # blocks: a power of two
    pad = m * block - c
    if pad:  # identity rows and columns after the last: the inverse's top-left is unchanged
        lower = jnp.pad(lower, [(0, 0)] * (lower.ndim - 2) + [(0, pad), (0, pad)])
    inv = _squaring_inverse(_blocks(lower, block))  # [..., m, block, block]
    while m > 1:
        m //= 2
        s = inv.shape[-1]
        low = _blocks(lower, s, below=1)  # each merged pair's lower-left block: [..., m, s, s]
        a, d = inv[..., 0::2, :, :], inv[..., 1::2, :, :]
        top = jnp.concatenate([a, jnp.zeros_like(a)], axis=-1)
        inv = jnp.concatenate([top, jnp.concatenate([-(d @ low) @ a, d], axis=-1)], axis=-2)
    inv = inv[..., 0, :, :]
    return inv[..., :c, :c] if pad else inv


def delta_inverse(coefs: ChunkCoefs, xx: jax.Array, eta: jax.Array) -> jax.Array:
    """DGD's ``(I + diag(eta) (Da_prev * X X^T))^{-1}`` from ``xx = X X^T: [..., C, C]``."""
    return unit_lower_inverse(eta[..., :, None] * coefs.da_prev * xx)


def chunk_read(coefs: ChunkCoefs, zw, zs, gz, e, dz=None, u=None):
    """``W_{t-1} z_t`` for the chunk's tokens.

    Args:
      zw: ``z W_0^T``  ``[..., C, d_out]``. zs: ``z S_0^T`` or ``None`` (no momentum).
      gz: ``gamma_prev * (z X^T)`` ``[..., C, C]``. e: errors ``[..., C, d_out]``.
      dz: ``da_prev * (z X^T)`` and u: DGD's pseudo-errors ``[..., C, d_out]`` (or ``None``).
    """
    out = coefs.a_prev[..., None] * zw - gz @ e
    if zs is not None:
        out = out - coefs.g_prev[..., None] * zs
    if u is not None:
        out = out + dz @ u
    return out


def chunk_delta_u(coefs: ChunkCoefs, inv, eta, xw, xs, gx, e):
    """DGD's ``u_t = -eta_t W_{t-1} x_t`` for the chunk (``xw = X W_0^T``, ``gx`` as in read)."""
    return inv @ (-eta[..., :, None] * chunk_read(coefs, xw, xs, gx, e))


def _outer_sum(weights, e, x):
    """``sum_s weights[s] e_s x_s^T`` as one matmul: ``[..., d_out, d_in]``."""
    return jnp.matrix_transpose(weights[..., :, None] * e) @ x


def chunk_end(coefs: ChunkCoefs, w0, s0, x, e, u=None):
    """Weights and momentum after the chunk: ``(w, s)`` (``s`` is ``None`` without momentum)."""
    w = coefs.a_last[..., None, None] * w0 - _outer_sum(coefs.gamma_last, e, x)
    s = None
    if s0 is not None:
        w = w - coefs.g_last[..., None, None] * s0
        s = coefs.b_last[..., None, None] * s0 + _outer_sum(coefs.db_last, e, x)
    if u is not None:
        w = w + _outer_sum(coefs.da_last, u, x)
    return w, s
