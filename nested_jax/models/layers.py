"""Layers shared by the models: RMSNorm, rotary position embedding, SwiGLU MLP, the causal
depthwise convolution, initialisers, and `Context`, what a block is asked to do.

Plain functions over arrays and dict params (no framework): every model composes these.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from nested_jax.memory.swiglu import SwiGLUMemory
from nested_jax.precision import dense

__all__ = [
    "Context",
    "causal_conv",
    "dense_init",
    "l2_normalize",
    "rms_norm",
    "rope",
    "swiglu",
    "swiglu_init",
]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Context:
    """How a block runs, one value for every block: ``block(params, state, x, ctx)``.

    Attributes:
      parallel: the chunk-parallel training form from a chunk boundary (``True``), or token by
        token, keeping every chunk boundary where the parallel form puts it (streaming).
      cut: ``0``, or block the gradient between blocks of ``cut`` tokens (same values): an
        output's gradient then reaches only its own block's inputs (the teach signal's first pass).
      through_mixer: ``False``: the sequence mixers' outputs are constants of the gradient
        (the error reaches a layer through the residual stream, the CMS levels and the head
        only; the teach signal's first pass with ``cms.teach_path="residual"``).
      collect: the block also returns what it read, ``(x, state, taps)`` with
        ``taps = {"cms": [B, T, D]}`` (the CMS's input, Hope blocks; ``{}`` for the others).
        Inside a language model, the stream entering each layer is added (``"input"``).
      probes: per CMS level, ``[B, T, D]`` added to its output (``None`` for frozen levels):
        zero probes whose gradient is the level's output error (`LanguageModel.output_errors`).
      errors: per CMS level, the output errors ``[B, T, D]`` the level learns from (the teach
        and next-token signals); ``None``: the CMS applies its weights as they are.
      starts: with ``errors`` and the teach signal, each level's sequence-start weights.
      mixed: what each sequence mixer added to the stream, ``[B, T, D]``, used instead of running
        the mixer (its state is kept): with it, `LanguageModel.output_errors` re-runs only
        the CMS levels and the head, the slow twin of the online signal's error pass
        (`ContinuumMemory.sweep`).
      cache: with ``collect``, a Hope block's taps also hold its CMS's forward cache
        (``"cms_cache"``, `ContinuumMemory.forward`), from which the online signal's error pass
        runs backward without re-running the levels (`ContinuumMemory.sweep`).

    Inside a language model the array fields carry a leading layer axis (scanned over layers).
    """

    parallel: bool = dataclasses.field(default=True, metadata={"static": True})
    cut: int = dataclasses.field(default=0, metadata={"static": True})
    collect: bool = dataclasses.field(default=False, metadata={"static": True})
    through_mixer: bool = dataclasses.field(default=True, metadata={"static": True})
    cache: bool = dataclasses.field(default=False, metadata={"static": True})
    probes: Any = None
    errors: Any = None
    starts: Any = None
    mixed: Any = None


def causal_conv(w: jax.Array, x: jax.Array, history: jax.Array, cut: int = 0):
    """Depthwise causal convolution. ``w: [K, D]``, ``x: [B, T, D]``, ``history: [B, K-1, D]``
    (the previous inputs). Returns ``(y [B, T, D], new history)``. ``cut > 0``: inputs from an
    earlier block of ``cut`` tokens (counted from ``x``'s start) enter with their gradient stopped."""
    k = w.shape[0]
    full = jnp.concatenate([history, x], axis=1)  # [B, K-1+T, D]
    t = x.shape[1]
    y = 0.0
    for i in range(k):
        xi, back = full[:, i : i + t], k - 1 - i  # tap i looks ``back`` tokens back
        if cut and back:
            own = (jnp.arange(t) % cut >= back)[None, :, None]
            xi = jnp.where(own, xi, jax.lax.stop_gradient(xi))
        y = y + xi * w[i][None, None]
    return y, full[:, t:]


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
    """A SwiGLU MLP's weights: the initial weights of a (frozen) CMS level's memory."""
    return SwiGLUMemory(d_model, d_ff).init_params(key)


def swiglu(p: dict, x: jax.Array, dtype: str = "float32") -> jax.Array:
    """``(silu(x W_gate) * (x W_up)) W_down``, the matmuls' operands in ``dtype``
    (`nested_jax.precision`)."""
    hidden = jax.nn.silu(dense(x, p["w_gate"], dtype)) * dense(x, p["w_up"], dtype)
    return dense(hidden, p["w_down"], dtype)
