"""Transformer++ block (the baseline of paper Table 2): RMSNorm, RoPE, SwiGLU, causal softmax
attention — the attention *is* the non-parametric memory `SoftmaxMemory`
(paper §2.2.4), so streaming decode carries its state like any other memory.

``x <- x + W_o Attn(RoPE(q), RoPE(k), v)`` on ``RMSNorm(x)``, then ``x <- x + SwiGLU(RMSNorm(x))``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from nested_jax.memory import SoftmaxMemory, SoftmaxState
from nested_jax.models.config import ModelConfig
from nested_jax.models.layers import Context, dense_init, rms_norm, rope, swiglu, swiglu_init
from nested_jax.precision import dense

__all__ = ["Attention", "TransformerBlock"]


@dataclasses.dataclass(frozen=True)
class Attention:
    """The attention sublayer (the "mixer" of Transformer++ and Hope-Attention).

    Params: ``attn_norm``, ``wq``, ``wk``, ``wv``, ``wo``; state: a ``SoftmaxState`` (the KV memory).
    """

    config: ModelConfig

    @property
    def memory(self) -> SoftmaxMemory:
        c = self.config
        return SoftmaxMemory(
            capacity=c.max_len, window=c.attn_window, compute_dtype=c.compute_dtype
        )

    def init(self, key) -> dict:
        c = self.config
        kq, kk, kv, ko = jax.random.split(key, 4)
        hd = c.n_heads * c.head_dim
        return {
            "attn_norm": jnp.ones((c.d_model,), jnp.float32),
            "wq": dense_init(kq, (c.d_model, hd)),
            "wk": dense_init(kk, (c.d_model, hd)),
            "wv": dense_init(kv, (c.d_model, hd)),
            "wo": dense_init(ko, (hd, c.d_model)),
        }

    def init_state(self, params: dict, batch_size: int) -> SoftmaxState:
        del params  # no learned initial state: the context starts empty
        c = self.config
        shapes = self.memory.init_params(heads=c.n_heads, d_k=c.head_dim, d_v=c.head_dim)
        return self.memory.init_state(shapes, batch_size)

    def __call__(self, p: dict, state: SoftmaxState, x: jax.Array, ctx: Context = Context()):
        """``x: [B, C, d_model]`` (a chunk continuing ``state``) -> ``(x + attention, state)``.

        Attention is exact in both forms, so ``ctx.parallel`` changes nothing here. ``ctx.cut >
        0``: no gradient flows between positions in different blocks of ``cut`` tokens (same
        values)."""
        c = self.config
        b, t, _ = x.shape
        h = rms_norm(x, p["attn_norm"], c.norm_eps)
        split = lambda a: a.reshape(b, t, c.n_heads, c.head_dim)
        positions = state.count[:, None] + jnp.arange(t, dtype=jnp.int32)[None]
        dt = c.compute_dtype
        q = rope(split(dense(h, p["wq"], dt)), positions, c.rope_base)
        k = rope(split(dense(h, p["wk"], dt)), positions, c.rope_base)
        v = split(dense(h, p["wv"], dt))
        state, y = self.memory.write_read_chunk(state, q, k, v, gradient_cut=ctx.cut)
        return x + dense(y.reshape(b, t, -1), p["wo"], dt), state


@dataclasses.dataclass(frozen=True)
class TransformerBlock:
    """One Transformer++ layer: `Attention` then a SwiGLU MLP (params in one flat dict)."""

    config: ModelConfig

    @property
    def mixer(self) -> Attention:
        return Attention(self.config)

    def init(self, key) -> dict:
        c = self.config
        ka, km = jax.random.split(key)
        return {
            **self.mixer.init(ka),
            "mlp_norm": jnp.ones((c.d_model,), jnp.float32),
            "mlp": swiglu_init(km, c.d_model, c.d_ff),
        }

    def init_state(self, params: dict, batch_size: int) -> SoftmaxState:
        return self.mixer.init_state(params, batch_size)

    def __call__(self, p: dict, state: SoftmaxState, x: jax.Array, ctx: Context = Context()):
        x, state = self.mixer(p, state, x, ctx)
        c = self.config
        x = x + swiglu(p["mlp"], rms_norm(x, p["mlp_norm"], c.norm_eps), c.compute_dtype)
        return (x, state, {}) if ctx.collect else (x, state)
