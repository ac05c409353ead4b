"""Mixed precision: the one place the models' matmul precision is decided (decisions D105).

``ModelConfig.compute_dtype`` is ``"float32"`` (the default: every op in float32) or
``"bfloat16"``, the policy GPU and TPU users turn on: the slow layers' dense matmuls (the
projections, the SwiGLU MLPs of Transformer++ / Titans / self-modifying Titans, softmax
attention's two products and the output head) take bfloat16 operands and accumulate and return
float32. Everything else stays float32: the parameters (so the optimizer's state and updates),
the residual stream, norms, softmax, the loss, and every memory's and CMS level's state and
inner computation (the fast weights, their gradients and chunk kernels), whose small
repeated updates bfloat16 would round away.

Only the operands are rounded, so a bfloat16 model differs from its float32 twin by the
rounding of each matmul's inputs (relative error ~2^-8); the models call `dense` / `einsum`
at every such matmul and nothing else changes.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

__all__ = ["COMPUTE_DTYPES", "ComputeDtype", "dense", "einsum"]

ComputeDtype = Literal["float32", "bfloat16"]
COMPUTE_DTYPES: tuple[str, ...] = ("float32", "bfloat16")


def _operands(dtype: str, *arrays: jax.Array):
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}.")
    dt = jnp.dtype(dtype)
    return tuple(a.astype(dt) for a in arrays)


def dense(x: jax.Array, w: jax.Array, dtype: str = "float32") -> jax.Array:
    """``x @ w`` with operands in ``dtype``, accumulated and returned in float32."""
    if dtype == "float32":
        return x @ w
    a, b = _operands(dtype, x, w)
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


def einsum(spec: str, a: jax.Array, b: jax.Array, dtype: str = "float32") -> jax.Array:
    """``jnp.einsum(spec, a, b)`` with operands in ``dtype``, accumulated and returned in float32."""
    if dtype == "float32":
        return jnp.einsum(spec, a, b)
    a, b = _operands(dtype, a, b)
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
