"""Linear (matrix-valued) associative memory ``M(k) = W k`` (paper §2.2.3-§2.2.4, §5.3).

With the `DotProduct` objective and GD this is (decayed) linear
attention; with `L2` and GD it is the delta rule (DeltaNet at
``chunk_size=1``, the TTT/Titans chunked approximation otherwise); with DGD it is the implicit
(proximal) delta rule of paper §3.5.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from nested_jax.memory.base import AbstractMemory
from nested_jax.memory.chunkwise import (
    chunk_coefficients,
    chunk_delta_u,
    chunk_end,
    chunk_read,
    delta_inverse,
)
from nested_jax.memory.objectives import L2, DotProduct
from nested_jax.memory.rules import DGD, GD, Momentum, dgd_rate, rule_step

__all__ = ["LinearMemory", "LinearParams", "LinearState"]


class LinearParams(NamedTuple):
    """Per-head initial memory (meta-learnable): ``w: [heads, d_v, d_k]``."""

    w: jax.Array


class LinearState(NamedTuple):
    """Per-sample, per-head state: ``w: [batch, heads, d_v, d_k]``; ``s`` momentum or ``None``."""

    w: jax.Array
    s: jax.Array | None


def _check_rates(eta, alpha, beta):
    return tuple(None if r is None else jnp.asarray(r, jnp.float32) for r in (eta, alpha, beta))


@dataclasses.dataclass(frozen=True)
class LinearMemory(AbstractMemory):
    """Matrix memory ``y = W q`` with a pluggable objective and update rule.

    Attributes:
      objective: ``DotProduct()`` (Hebbian) or ``L2()`` (delta).
      rule: ``GD()``, ``Momentum(beta)`` or ``DGD(beta=None)``.
      gradient_at: ``"boundary"`` (default): inside a chunk every inner gradient is taken at the
        chunk-boundary state (TTT/Titans). ``"token"``: at the per-token state, i.e. the exact
        online recurrence for every chunk size. Supported for ``L2()`` with ``GD()`` — exact
        (gated) DeltaNet, ``W_t = W_{t-1} (alpha I - eta k k^T) + eta v k^T``, computed with the
        DGD chunk kernel and a state-independent error ``-v`` — and for the Hebbian objective,
        whose gradient does not depend on the state anyway.
    """

    objective: DotProduct | L2 = L2()
    rule: GD | Momentum | DGD = GD()
    gradient_at: Literal["boundary", "token"] = "boundary"

    def __post_init__(self):
        if not isinstance(self.objective, DotProduct | L2):
            raise TypeError(f"objective must be DotProduct() or L2(), got {self.objective!r}.")
        if not isinstance(self.rule, GD | Momentum | DGD):
            raise TypeError(f"rule must be GD(), Momentum(...) or DGD(...), got {self.rule!r}.")
        if self.gradient_at not in ("boundary", "token"):
            raise ValueError(
                f"gradient_at must be 'boundary' or 'token', got {self.gradient_at!r}."
            )
        if (
            self.gradient_at == "token"
            and isinstance(self.objective, L2)
            and not isinstance(self.rule, GD)
        ):
            raise ValueError(
                f"gradient_at='token' with the L2 objective is built for the GD rule only (exact "
                f"DeltaNet), got {self.rule!r}; use gradient_at='boundary' for momentum or DGD."
            )

    @property
    def _exact_delta(self) -> bool:
        """Exact per-token delta rule through the DGD kernel (see ``gradient_at``)."""
        return self.gradient_at == "token" and isinstance(self.objective, L2)

    # --- state ---------------------------------------------------------------------------------
    def init_params(
        self, key, *, heads: int, d_k: int, d_v: int, scale: float = 0.0
    ) -> LinearParams:
        """Initial memory per head; zeros by default (``scale > 0`` draws ``N(0, scale^2)``)."""
        w = jnp.zeros((heads, d_v, d_k), jnp.float32)
        if scale:
            w = scale * jax.random.normal(key, w.shape, jnp.float32)
        return LinearParams(w)

    def widths(self, state: LinearState) -> tuple[int, int, int]:
        return state.w.shape[1], state.w.shape[-1], state.w.shape[-2]

    def init_state(self, params: LinearParams, batch_size: int) -> LinearState:
        """Broadcast the per-head initial memory to every sample (gradients reach ``params``)."""
        w = jnp.broadcast_to(params.w, (batch_size,) + params.w.shape).astype(jnp.float32)
        s = jnp.zeros_like(w) if self.rule.beta is not None else None
        return LinearState(w, s)

    # --- token level ---------------------------------------------------------------------------
    def read(self, state: LinearState, q: jax.Array) -> jax.Array:
        """``q: [batch, heads, d_k] -> [batch, heads, d_v]``."""
        return jnp.einsum("bhvk,bhk->bhv", state.w, q.astype(jnp.float32))

    def write(self, state: LinearState, k, v, eta=None, alpha=None, beta=None, *, at=None):
        """One write of ``(k, v)``; the gradient is taken at ``at`` (default: ``state``).

        ``k: [batch, heads, d_k]``, ``v: [batch, heads, d_v]``, rates ``[batch, heads]`` or scalars
        (``None``: eta=1, alpha=1, beta=rule's).
        """
        eta, alpha, beta = _check_rates(eta, alpha, beta)
        shape = k.shape[:2]
        eta = jnp.broadcast_to(1.0 if eta is None else eta, shape)
        alpha = jnp.broadcast_to(1.0 if alpha is None else alpha, shape)
        b = self.rule.beta if beta is None else beta
        beta = jnp.broadcast_to(0.0 if b is None else b, shape)
        k = k.astype(jnp.float32)
        v = v.astype(jnp.float32)
        src = state if (at is None or self.gradient_at == "token") else at

        def loss(w):
            return jnp.sum(self.objective.loss(jnp.einsum("bhvk,bhk->bhv", w, k), v))

        g = jax.grad(loss)(src.w)
        w, s = rule_step(self.rule, state.w, state.s, g, k, eta, alpha, beta)
        return LinearState(w, s)

    # --- chunk level ---------------------------------------------------------------------------
    @property
    def _kernel_delta(self) -> bool:
        return self.rule.delta or self._exact_delta

    def _chunk_prep(self, q, k, v, eta, alpha, beta):
        momentum = self.rule.beta is not None
        if self.rule.delta:
            eta = dgd_rate(eta, k)
        c = chunk_coefficients(eta, alpha, beta, momentum=momentum)
        qk = q @ jnp.matrix_transpose(k)
        dq = gk = inv = None
        if self._kernel_delta:
            kk = k @ jnp.matrix_transpose(k)
            dq, gk, inv = c.da_prev * qk, c.gamma_prev * kk, delta_inverse(c, kk, eta)
        return (q, k, v, eta, c, c.gamma_prev * qk, dq, gk, inv)

    def _chunk_step(self, state: LinearState, q, k, v, eta, c, gq, dq, gk, inv):
        kw = k @ jnp.matrix_transpose(state.w)  # boundary predictions M_0(k), also W_0 x for DGD
        # exact delta rule: (W_{t-1} k - v) k^T = (W_{t-1} k) k^T + (-v) k^T, the first term
        # is the kernel's per-token u, the second a state-independent error
        err = -v if self._exact_delta else self.objective.error(kw, v)
        s0 = state.s
        zs = lambda z: None if s0 is None else z @ jnp.matrix_transpose(s0)
        u = chunk_delta_u(c, inv, eta, kw, zs(k), gk, err) if self._kernel_delta else None
        y = chunk_read(c, q @ jnp.matrix_transpose(state.w), zs(q), gq, err, dq, u)
        w, s = chunk_end(c, state.w, s0, k, err, u)
        return LinearState(w, s), y
