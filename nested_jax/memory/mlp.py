"""Deep associative memory: a residual 2-layer MLP ``M(z) = z + W1 act(W2 z)`` (paper §5.2, Titans LMM).

Each layer is a matrix memory of its own: per token, ``dL/dW1 = u h^T`` and
``dL/dW2 = (act'(W2 k) * W1^T u) k^T`` with ``h = act(W2 k)`` and surprise ``u = dL/dM(k)``, so the
chunk-parallel form chains two rank-one chunk kernels (`nested_jax.memory.chunkwise`): the
first layer's per-token read gives the hidden pre-activation of ``q``, the second layer reads that.

Update rules per layer (paper §5.4 item 5; decisions D10): ``W2`` (whose input is the key) follows the
memory's rule, DGD included; ``W1`` (whose input is the hidden ``h``) follows the same rule without the
DGD decay (decayed GD, with momentum when the rule has it).

Step sizes: the second layer's step scales with ``eta ||h||^2``, and with the default initialisation
``||h||^2`` is about ``0.35 * hidden``; plain GD on it is stable only for ``eta`` below about
``2 / (0.35 * hidden)`` (divided by ``1 / (1 - beta)`` with momentum). E.g. hidden 128 with momentum
0.9 wants ``eta <~ 0.01``; larger rates diverge to NaN, in the reference recurrence too.
``step_norm = nu > 0`` removes that bound by construction (a normalised, NLMS-style rate for the
whole memory): every token's rate becomes

    r_t = eta_t / (1 + nu eta_t (||h_t||^2 + ||k_t||^2 g_t)),   g_t = sum_j act'(p_tj)^2 ||W1[:, j]||^2

with the hidden ``h = act(p)``, ``p = W2 k`` and ``W1`` at the state where the gradient is taken
(the chunk boundary). A gradient step on both layers moves the output at ``k`` along the error by
at most ``r (||h||^2 + ||k||^2 ||W1 diag act'||^2) <= 1 / nu`` of it (the first term is ``W1``'s
share, the second ``W2``'s through ``W1``), whatever ``eta``, the width or the weights; small rates
are nearly unchanged. ``nu = 1`` bounds one token's step; a chunk of ``C`` tokens sharing the
boundary gradient, each applied ``1 / (1 - beta)`` times by momentum, needs ``nu = C / (1 - beta)``
(what the models use, `stable_step_norm`). Both layers then use ``r`` (DGD's ``W2`` its own
``r / (1 + r ||k||^2)`` of it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

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
from nested_jax.memory.rules import DGD, GD, Momentum, nlms_rate, rule_step

__all__ = ["MLPMemory", "MLPParams", "MLPState", "stable_step_norm"]


def stable_step_norm(chunk_size: int, beta: float | None, bound: float = 1.0) -> float:
    """The NLMS strength ``nu = C / ((1 - beta) bound)`` that bounds a chunk's total step (``C``
    tokens whose gradients share the boundary, each applied ``1 / (1 - beta)`` times by momentum)
    by ``bound`` errors' worth: what the models pass as ``MLPMemory(step_norm=...)``. ``bound = 1``
    (the default) lets a step reach the target and no further; up to 2 it may overshoot it, flipping
    the sign of the error (the deep memory's analogue of a linear recurrence's negative
    eigenvalues: DeltaNet with ``eta`` up to 2)."""
    if not 0.0 < bound <= 2.0:
        raise ValueError(
            f"the step bound must be in (0, 2] (errors' worth per chunk), got {bound}."
        )
    return float(chunk_size) / ((1.0 - (beta or 0.0)) * bound)


class MLPParams(NamedTuple):
    """Per-head initial memory: ``w1: [heads, d_v, hidden]``, ``w2: [heads, hidden, d_k]``."""

    w1: jax.Array
    w2: jax.Array


class MLPState(NamedTuple):
    """Per-sample, per-head weights ``w1, w2`` (``[batch, heads, ...]``) and momenta (or ``None``)."""

    w1: jax.Array
    w2: jax.Array
    s1: jax.Array | None
    s2: jax.Array | None


@dataclasses.dataclass(frozen=True)
class MLPMemory(AbstractMemory):
    """Residual 2-layer MLP memory of any hidden width.

    Attributes:
      hidden: hidden width.
      objective: ``L2()`` (default) or ``DotProduct()``.
      rule: ``GD()``, ``Momentum(beta)`` or ``DGD(beta=None)`` (see module docstring per layer).
      activation: elementwise nonlinearity (default SiLU, as in Titans).
      residual: add ``z`` to the output (needs ``d_k == d_v``).
      self_target: the memory generates its own values (paper §5.2, self-modifying Titans): a
        write of ``(k, v)`` regresses ``M(k)`` onto ``v_hat = M_b(v)``, where ``M_b`` is the
        memory at the state where the gradient is taken (the chunk boundary). ``v`` then lives in
        the key space (``d_k``) and ``v_hat`` in the output space (``d_v``). The inner gradient
        treats ``v_hat`` as a fixed target (PAPER.md §5.4 item 7).
      target_grad: with ``self_target``, whether the *outer* gradient flows through ``v_hat``
        (to ``v`` and to ``M_b``: the default, so that whatever generates ``v`` is meta-learned,
        §5.4 item 9) or is stopped there (``False``; then nothing that only makes ``v`` gets an
        outer gradient: decisions D89).
      step_norm: ``nu >= 0``; when positive, every token's rate is normalised by the memory's
        gain at its key (see the module docstring), so no ``eta`` makes a step overshoot.
        ``0`` (default): plain rates.
    """

    hidden: int
    objective: DotProduct | L2 = L2()
    rule: GD | Momentum | DGD = GD()
    activation: Callable[[jax.Array], jax.Array] = jax.nn.silu
    residual: bool = True
    self_target: bool = False
    target_grad: bool = True
    step_norm: float = 0.0

    def __post_init__(self):
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {self.hidden!r}.")
        if not isinstance(self.objective, DotProduct | L2):
            raise TypeError(f"objective must be DotProduct() or L2(), got {self.objective!r}.")
        if not isinstance(self.rule, GD | Momentum | DGD):
            raise TypeError(f"rule must be GD(), Momentum(...) or DGD(...), got {self.rule!r}.")
        if not float(self.step_norm) >= 0.0:
            raise ValueError(f"step_norm must be >= 0 (0 = off), got {self.step_norm!r}.")

    def _target_grad(self, v_hat):
        return v_hat if self.target_grad else jax.lax.stop_gradient(v_hat)

    @property
    def normalized(self) -> bool:
        return self.step_norm > 0

    def _rate(self, eta, w1, pre, k):
        """The normalised rate ``r = eta / (1 + nu eta (||h||^2 + ||k||^2 g))`` (see the module
        docstring; ``eta`` itself when not ``normalized``). ``pre = W2 k: [..., hid]``, ``k``
        ``[..., d_k]``, ``w1: [..., d_v, hid]`` with the same leading dims but the token axis."""
        if not self.normalized:
            return eta
        cols = jnp.sum(w1 * w1, axis=-2)  # ||W1[:, j]||^2: [..., hid]
        if pre.ndim > cols.ndim:  # a chunk: [B, H, C, hid] against per-(sample, head) weights
            cols = cols[..., None, :]
        h, dact = jax.jvp(self.activation, (pre,), (jnp.ones_like(pre),))
        gain = jnp.sum(h * h, axis=-1) + jnp.sum(k * k, axis=-1) * jnp.sum(dact**2 * cols, -1)
        return nlms_rate(eta, gain, self.step_norm)

    @property
    def _rule1(self):
        """Rule of the second-applied layer ``W1``: the memory's rule without the DGD decay."""
        return Momentum(self.rule.beta) if self.rule.beta is not None else GD()

    # --- state ---------------------------------------------------------------------------------
    def init_params(self, key, *, heads: int, d_k: int, d_v: int, scale: float = 1.0) -> MLPParams:
        """``w2 ~ N(0, scale^2 / d_k)``, ``w1 ~ N(0, scale^2 / hidden) * 0.1`` (near-identity start)."""
        if self.residual and d_k != d_v:
            raise ValueError(
                f"a residual MLP memory needs d_k == d_v, got d_k={d_k}, d_v={d_v}; "
                "pass residual=False for a non-square memory."
            )
        k1, k2 = jax.random.split(key)
        w2 = scale * jax.random.normal(k2, (heads, self.hidden, d_k), jnp.float32) / d_k**0.5
        w1 = 0.1 * scale * jax.random.normal(k1, (heads, d_v, self.hidden), jnp.float32)
        return MLPParams(w1 / self.hidden**0.5, w2)

    def widths(self, state: MLPState) -> tuple[int, int, int]:
        d_k = state.w2.shape[-1]  # a self-generated target's input v lives in the key space
        return state.w2.shape[1], d_k, d_k if self.self_target else state.w1.shape[-2]

    def init_state(self, params: MLPParams, batch_size: int) -> MLPState:
        b = lambda a: jnp.broadcast_to(a, (batch_size,) + a.shape).astype(jnp.float32)
        w1, w2 = b(params.w1), b(params.w2)
        mom = self.rule.beta is not None
        return MLPState(
            w1, w2, jnp.zeros_like(w1) if mom else None, jnp.zeros_like(w2) if mom else None
        )

    # --- forward -------------------------------------------------------------------------------
    def _apply(self, w1, w2, z):
        """``z: [..., d_k] -> [..., d_v]`` with ``w1: [..., d_v, hid]``, ``w2: [..., hid, d_k]``."""
        h = self.activation(jnp.einsum("...hk,...k->...h", w2, z))
        out = jnp.einsum("...vh,...h->...v", w1, h)
        return z + out if self.residual else out

    def apply_chunk(self, params: MLPParams | MLPState, z: jax.Array) -> jax.Array:
        """``M(z)`` for a chunk ``z: [B, H, C, d_k]`` through per-(sample, head) weights
        (``w1: [B, H, d_v, hid]``, ``w2: [B, H, hid, d_k]``), as batched matmuls."""
        w1, w2 = params.w1, params.w2
        out = self.activation(z @ jnp.matrix_transpose(w2)) @ jnp.matrix_transpose(w1)
        return z + out if self.residual else out

    def apply(self, params: MLPParams | MLPState, z: jax.Array) -> jax.Array:
        """The memory's map ``M(z)`` with the weights of ``params`` (any leading dims that
        broadcast: ``w1: [..., d_v, hid]``, ``w2: [..., hid, d_k]``, ``z: [..., d_k]``)."""
        return self._apply(params.w1, params.w2, z)

    def read(self, state: MLPState, q):
        """``q: [batch, heads, d_k] -> [batch, heads, d_v]``."""
        return self._apply(state.w1, state.w2, q.astype(jnp.float32))

    def write(self, state: MLPState, k, v, eta=None, alpha=None, beta=None, *, at=None):
        """One write; gradients by autodiff at ``at`` (default ``state``). Shapes as in LinearMemory."""
        shape = k.shape[:2]
        f = lambda r, d: jnp.broadcast_to(jnp.asarray(d if r is None else r, jnp.float32), shape)
        eta, alpha = f(eta, 1.0), f(alpha, 1.0)
        b = self.rule.beta
        beta = f(beta, 0.0 if b is None else b)
        k = k.astype(jnp.float32)
        v = v.astype(jnp.float32)
        src = state if at is None else at
        if self.self_target:  # v_hat = M_at(v): a constant of the inner gradient below
            v = self._target_grad(self._apply(src.w1, src.w2, v))

        def loss(w1, w2):
            return jnp.sum(self.objective.loss(self._apply(w1, w2, k), v))

        g1, g2 = jax.grad(loss, argnums=(0, 1))(src.w1, src.w2)
        pre = jnp.einsum("bhjk,bhk->bhj", src.w2, k)
        h = self.activation(pre)
        eta = self._rate(eta, src.w1, pre, k)  # (DGD normalises W2's again inside rule_step)
        w2, s2 = rule_step(self.rule, state.w2, state.s2, g2, k, eta, alpha, beta)
        w1, s1 = rule_step(self._rule1, state.w1, state.s1, g1, h, eta, alpha, beta)
        return MLPState(w1, w2, s1, s2)

    def _coefficients(self, eta, alpha, beta, qk, kk):
        """Everything a chunk needs from its rates: ``(eta2, c2, c1, gq, dq, gk, inv)``."""
        momentum = self.rule.beta is not None
        # DGD's eta' = eta / (1 + eta ||k||^2), the squared norms read off the Gram matrix
        eta2 = eta / (1.0 + eta * jnp.diagonal(kk, axis1=-2, axis2=-1)) if self.rule.delta else eta
        c2 = chunk_coefficients(eta2, alpha, beta, momentum=momentum)
        c1 = chunk_coefficients(eta, alpha, beta, momentum=momentum) if self.rule.delta else c2
        r = qk.shape[-3]  # the heads that are read (the first r; see _chunk_step)
        dq = gk = inv = None
        if self.rule.delta:
            gk, inv = c2.gamma_prev * kk, delta_inverse(c2, kk, eta2)
            dq = c2.da_prev[..., :r, :, :] * qk
        return eta2, c2, c1, c2.gamma_prev[..., :r, :, :] * qk, dq, gk, inv

    def _chunk_prep(self, q, k, v, eta, alpha, beta):
        r = q.shape[-3]
        qk = q @ jnp.matrix_transpose(k[..., :r, :, :])
        kk = k @ jnp.matrix_transpose(k)
        if self.normalized:  # the rates depend on the boundary state: computed per chunk
            return (q, k, v, (eta, alpha, beta, qk, kk))
        return (q, k, v, self._coefficients(eta, alpha, beta, qk, kk))

    def _chunk_step(self, state: MLPState, q, k, v, coefs):
        """One chunk (``[B, H, C, d]``). ``q`` may cover only the first ``r <= H`` heads
        (``[B, r, C, d_k]``): every head writes, only those are read (``y: [B, r, C, d_v]``), as
        when the heads of several memories that write the same pairs are stacked and only one
        of them is read (self-modifying Titans)."""
        zs = lambda z, s0: None if s0 is None else z @ jnp.matrix_transpose(s0)
        r = q.shape[1]
        read = lambda tree: jax.tree.map(lambda a: a[:, :r], tree)  # the read heads
        if self.self_target:  # v_hat = M_boundary(v): the errors below treat it as fixed
            v = self._target_grad(self.apply_chunk(state, v))
        # boundary forward on the keys and the per-token surprise (errors) of both layers
        pre = k @ jnp.matrix_transpose(state.w2)  # [B, H, C, hid]
        if self.normalized:
            eta, alpha, beta, qk, kk = coefs
            eta = self._rate(eta, state.w1, pre, k)
            coefs = self._coefficients(eta, alpha, beta, qk, kk)
        eta2, c2, c1, gq, dq, gk, inv = coefs
        h, act_vjp = jax.vjp(self.activation, pre)
        pred = h @ jnp.matrix_transpose(state.w1)
        if self.residual:
            pred = pred + k
        u = self.objective.error(pred, v)  # [B, H, C, d_v]
        (e2,) = act_vjp(u @ state.w1)  # [B, H, C, hid]
        # first-applied layer W2 (input k): the memory's rule, DGD included
        u2 = chunk_delta_u(c2, inv, eta2, pre, zs(k, state.s2), gk, e2) if self.rule.delta else None
        w2, s2 = chunk_end(c2, state.w2, state.s2, k, e2, u2)
        w1, s1 = chunk_end(c1, state.w1, state.s1, h, u)
        if r < k.shape[1]:
            state, c2, c1, e2, u2, h, u = read((state, c2, c1, e2, u2, h, u))
        pre_q = chunk_read(c2, q @ jnp.matrix_transpose(state.w2), zs(q, state.s2), gq, e2, dq, u2)
        # second layer W1 (input h): read with the per-token hidden of the queries
        hq = self.activation(pre_q)
        g1 = c1.gamma_prev * (hq @ jnp.matrix_transpose(h))
        out = chunk_read(c1, hq @ jnp.matrix_transpose(state.w1), zs(hq, state.s1), g1, u)
        y = q + out if self.residual else out
        return MLPState(w1, w2, s1, s2), y
