"""Titans (LMM): the deep neural memory as a sequence layer (paper §5.1, from the Titans paper).

Per layer: ``h = RMSNorm(x)``; ``q, k, v`` projections, each through a causal depthwise
convolution (width 4) and SiLU; ``q, k`` L2-normalised per head. Data-dependent gates per token
and head: learning rate ``eta = eta_max sigmoid(. - 4.6)`` (about 0.01 eta_max at init: the MLP
memory diverges above about ``2 (1 - beta) / (0.35 hidden)``, see ``memory/mlp.py``), retention
``alpha = sigmoid(. + 4.6)`` (about 0.99 at init; Titans' forgetting gate is ``1 - alpha``) and
momentum ``beta = beta_max sigmoid(.)`` (0.9 at init, at most ``titans.beta_max``: the inner
steps' normalisation bounds them for every momentum up to it, decisions D82). The memory is
`MLPMemory` with the L2 objective and the momentum rule
(``S <- beta S + grad; M <- alpha M - eta S``), one per head, whose initial state is a learned
parameter (meta-learned through the inner updates). Read-out:
``x <- x + W_o (RMSNorm(y) * silu(h W_g))``, then ``x <- x + SwiGLU(RMSNorm(x))``.

Training uses the chunk-parallel form (gradients at chunk boundaries, ``mem_chunk`` tokens);
streaming uses `stream`, which keeps those boundaries.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from nested_jax.memory import (
    GD,
    L2,
    DotProduct,
    LinearMemory,
    MLPMemory,
    Momentum,
    StreamState,
    stable_step_norm,
)
from nested_jax.models.config import ModelConfig
from nested_jax.models.layers import (
    Context,
    causal_conv,
    dense_init,
    l2_normalize,
    rms_norm,
    swiglu,
    swiglu_init,
)
from nested_jax.precision import dense

__all__ = ["TitansBlock"]


@dataclasses.dataclass(frozen=True)
class TitansBlock:
    """One Titans (LMM) layer. State: ``{"memory": StreamState, "conv": [B, K-1, 3 D]}``."""

    config: ModelConfig

    @property
    def memory(self) -> MLPMemory | LinearMemory:
        """The layer's memory: Titans' deep one, or a matrix memory (``titans.memory``)."""
        tc = self.config.titans
        objective = L2() if tc.objective == "l2" else DotProduct()
        if tc.memory == "linear":
            if tc.rule == "gd":  # exact per token: (gated) DeltaNet / linear attention
                return LinearMemory(objective, GD(), gradient_at="token")
            return LinearMemory(objective, Momentum())
        rule = Momentum() if tc.rule == "momentum" else GD()
        # beta is a per-token gate up to beta_max: the NLMS strength bounds the step at that value
        nu = stable_step_norm(
            tc.chunk, tc.beta_max if tc.rule == "momentum" else 0.0, tc.step_bound
        )
        nu = nu if tc.inner_norm else 0.0
        return MLPMemory(tc.expansion * self.config.head_dim, objective, rule, step_norm=nu)

    def init(self, key) -> dict:
        c = self.config
        ks = jax.random.split(key, 8)
        d, h = c.d_model, c.n_heads
        eta_bias = 0.0 if c.titans.memory == "linear" else -4.6  # see TitansConfig
        beta_bias = math.log(0.9 / (c.titans.beta_max - 0.9))  # beta = 0.9 at init
        conv = (
            jnp.zeros((c.titans.conv_width, 3 * d), jnp.float32).at[-1].set(1.0)
        )  # identity at init
        return {
            "norm": jnp.ones((d,), jnp.float32),
            "wqkv": dense_init(ks[0], (d, 3 * d)),
            "conv": conv,
            "w_gates": dense_init(ks[1], (d, 3 * h), scale=0.1),
            "b_gates": jnp.concatenate(
                [jnp.full((h,), eta_bias), jnp.full((h,), 4.6), jnp.full((h,), beta_bias)]
            ).astype(jnp.float32),
            "memory": self.memory.init_params(ks[2], heads=h, d_k=c.head_dim, d_v=c.head_dim),
            "out_norm": jnp.ones((d,), jnp.float32),
            "w_gate_out": dense_init(ks[3], (d, d)),
            "wo": dense_init(ks[4], (d, d)),
            "mlp_norm": jnp.ones((d,), jnp.float32),
            "mlp": swiglu_init(ks[5], d, c.d_ff),
        }

    def init_state(self, params: dict, batch_size: int) -> dict:
        c = self.config
        mem_state = self.memory.init_state(params["memory"], batch_size)
        return {
            "memory": self.memory.init_stream(mem_state),
            "conv": jnp.zeros((batch_size, c.titans.conv_width - 1, 3 * c.d_model), jnp.float32),
        }

    def __call__(self, p: dict, state: dict, x: jax.Array, ctx: Context = Context()):
        """``x: [B, T, d_model]`` -> ``(x, state)``; ``ctx.parallel``: chunk-parallel from a chunk
        boundary (training); otherwise token-by-token streaming that keeps chunk boundaries."""
        c = self.config
        b, t, d = x.shape
        h = rms_norm(x, p["norm"], c.norm_eps)
        dt = c.compute_dtype
        qkv, conv_state = causal_conv(p["conv"], dense(h, p["wqkv"], dt), state["conv"])
        qkv = jax.nn.silu(qkv).reshape(b, t, 3, c.n_heads, c.head_dim)
        q, k, v = l2_normalize(qkv[:, :, 0]), l2_normalize(qkv[:, :, 1]), qkv[:, :, 2]
        gates = (h @ p["w_gates"] + p["b_gates"][None, None]).reshape(b, t, 3, c.n_heads)
        eta = c.titans.eta_max * jax.nn.sigmoid(gates[:, :, 0])
        alpha = jax.nn.sigmoid(gates[:, :, 1]) if c.titans.retention else None
        beta = c.titans.beta_max * jax.nn.sigmoid(gates[:, :, 2])
        beta = beta if c.titans.rule == "momentum" else None
        mem = self.memory
        stream: StreamState = state["memory"]
        if ctx.parallel:  # from a fresh state (a chunk boundary): the training form
            stream, y = mem.start_stream(
                stream.state,
                q,
                k,
                v,
                eta,
                alpha,
                beta,
                chunk_size=c.titans.chunk,
                first_order=c.first_order,
            )
        else:
            stream, y = mem.stream(stream, q, k, v, eta, alpha, beta, chunk_size=c.titans.chunk)
        y = rms_norm(y.reshape(b, t, d), p["out_norm"], c.norm_eps) * jax.nn.silu(
            dense(h, p["w_gate_out"], dt)
        )
        x = x + dense(y, p["wo"], dt)
        x = x + swiglu(p["mlp"], rms_norm(x, p["mlp_norm"], c.norm_eps), dt)
        state = {"memory": stream, "conv": conv_state}
        return (x, state, {}) if ctx.collect else (x, state)
