"""Layers shared by the models: RMSNorm, rotary position embedding, SwiGLU MLP, initialisers.

Plain functions over arrays and dict params (no framework): every model composes these.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["dense_init", "l2_normalize", "rms_norm", "rope", "swiglu", "swiglu_init"]


def dense_init(key, shape, scale: float = 1.0) -> jax.Array:
    """``N(0, scale^2 / fan_in)`` for a ``[fan_in, fan_out]`` matrix."""
    return scale * jax.random.normal(key, shape, jnp.float32) / shape[0] ** 0.5


def rms_norm(x: jax.Array, gain: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``x / rms(x) * gain`` over the last axis (computed in float32)."""
    x32 = x.astype(jnp.float32)
    inv = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    gain = jnp.broadcast_to(gain, x.shape)  # explicit: the suite forbids implicit rank promotion
    return (x32 * inv * gain).astype(x.dtype)


def l2_normalize(a: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``a / ||a||`` over the last axis (``eps`` inside the root keeps zeros finite)."""
    return a * jax.lax.rsqrt(jnp.sum(a * a, axis=-1, keepdims=True) + eps)


def rope(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary embedding (rotate-half form). ``x: [B, T, H, d]`` (d even), ``positions: [B, T]``."""
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"rope needs an even head dimension, got {d}.")
    freqs = base ** (-jnp.arange(0, d // 2, dtype=jnp.float32) / (d // 2))
    angles = positions.astype(jnp.float32)[..., None, None] * freqs[None, None, None]  # [B,T,1,d/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


def swiglu_init(key, d_model: int, d_ff: int) -> dict:
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w_gate": dense_init(k1, (d_model, d_ff)),
        "w_up": dense_init(k2, (d_model, d_ff)),
        "w_down": dense_init(k3, (d_ff, d_model)),
    }


def swiglu(p: dict, x: jax.Array) -> jax.Array:
    """``(silu(x W_gate) * (x W_up)) W_down``."""
    return (jax.nn.silu(x @ p["w_gate"]) * (x @ p["w_up"])) @ p["w_down"]
