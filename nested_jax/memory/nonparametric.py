"""Non-parametric memory: causal softmax attention and its sliding-window variant (paper §2.2.4).

Softmax attention is the non-parametric minimiser of ``sum_i s(k_i, q) ||v_i - M||^2`` with
``s(k, q) = exp(<k, q> * scale)``: the Nadaraya-Watson estimator ``M* = sum_i s_i v_i / sum_i s_i``.
Restricting ``i`` to the last ``window`` tokens gives sliding-window attention.

The state is the context itself: a ring buffer of keys, values and their absolute positions. Unlike
the parametric memories, a token's read sees its own write (``inclusive = True``), as standard
causal attention does. Learning rates do not apply (``eta``/``alpha``/``beta`` are accepted and
ignored so that every memory shares one call signature).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nested_jax.memory.base import AbstractMemory, _as_rates
from nested_jax.precision import COMPUTE_DTYPES, ComputeDtype, einsum

__all__ = ["SoftmaxMemory", "SoftmaxParams", "SoftmaxState"]


class SoftmaxParams(NamedTuple):
    """No learned parameters, only the shapes of an empty context: ``keys: [H, 0, d_k]``,
    ``values: [H, 0, d_v]`` (so that every memory has ``init_state(params, batch_size)``)."""

    keys: jax.Array
    values: jax.Array


class SoftmaxState(NamedTuple):
    """``keys: [B, H, cap, d_k]``, ``values: [B, H, cap, d_v]``, ``pos: [B, cap]`` (absolute position,
    ``-1`` = empty), ``count: [B]`` tokens written so far."""

    keys: jax.Array
    values: jax.Array
    pos: jax.Array
    count: jax.Array


@dataclasses.dataclass(frozen=True)
class SoftmaxMemory(AbstractMemory):
    """Causal softmax attention as a memory.

    Attributes:
      capacity: slots in the ring buffer. Full attention needs ``capacity >=`` the context length;
        a window needs ``capacity >= window + chunk_size - 1``.
      window: ``None`` for full causal attention, else attend to the last ``window`` tokens
        (including the current one).
      scale: logit scale; ``None`` = ``1 / sqrt(d_k)``.
      compute_dtype: the operands of the two products (scores, weighted values), accumulated
        in float32 (`nested_jax.precision`); the stored keys and values stay float32.
    """

    capacity: int
    window: int | None = None
    scale: float | None = None
    compute_dtype: ComputeDtype = "float32"

    inclusive = True

    def __post_init__(self):
        for name in ("capacity", "window"):
            val = getattr(self, name)
            if val is None and name == "window":
                continue
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}.")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}."
            )

    def init_params(self, key=None, *, heads: int, d_k: int, d_v: int) -> SoftmaxParams:
        """The memory's "parameters": none, only the context's shapes (``key`` is unused)."""
        del key
        return SoftmaxParams(
            jnp.zeros((heads, 0, d_k), jnp.float32), jnp.zeros((heads, 0, d_v), jnp.float32)
        )

    def widths(self, state: SoftmaxState) -> tuple[int, int, int]:
        return state.keys.shape[1], state.keys.shape[-1], state.values.shape[-1]

    def init_state(self, params: SoftmaxParams, batch_size: int) -> SoftmaxState:
        """An empty context for ``batch_size`` samples (the memory *is* its context)."""
        if not isinstance(params, SoftmaxParams):
            raise TypeError(
                "SoftmaxMemory.init_state takes (params, batch_size) like every memory; build the "
                "params with init_params(heads=..., d_k=..., d_v=...)."
            )
        c = self.capacity
        (heads, _, d_k), d_v = params.keys.shape, params.values.shape[-1]
        return SoftmaxState(
            jnp.zeros((batch_size, heads, c, d_k), jnp.float32),
            jnp.zeros((batch_size, heads, c, d_v), jnp.float32),
            jnp.full((batch_size, c), -1, jnp.int32),
            jnp.zeros((batch_size,), jnp.int32),
        )

    def _attend(self, state: SoftmaxState, q, qpos, gradient_cut: int = 0):
        """``q: [B, H, C, d_k]`` at absolute positions ``qpos: [B, C]`` -> ``[B, H, C, d_v]``.

        ``gradient_cut > 0``: keys and values at positions in another block of ``gradient_cut``
        positions than the query's enter with their gradient stopped (same values)."""
        scale = self.scale if self.scale is not None else q.shape[-1] ** -0.5
        mm = lambda spec, a, b: einsum(spec, a, b, self.compute_dtype)
        logits = mm("bhck,bhsk->bhcs", q, state.keys) * scale
        kpos = state.pos[:, None, :]  # [B, 1, cap]
        qp = qpos[:, :, None]  # [B, C, 1]
        mask = (kpos >= 0) & (kpos <= qp)
        if self.window is not None:
            mask = mask & (kpos > qp - self.window)
        same = None
        if gradient_cut:
            same = (kpos // gradient_cut == qp // gradient_cut)[:, None]
            sg = jax.lax.stop_gradient
            cross = mm("bhck,bhsk->bhcs", q, sg(state.keys)) * scale
            logits = jnp.where(same, logits, cross)
        logits = jnp.where(mask[:, None], logits, -jnp.inf)
        weights = jax.nn.softmax(logits, axis=-1)
        weights = jnp.where(mask[:, None], weights, 0.0)
        if same is None:
            return mm("bhcs,bhsv->bhcv", weights, state.values)
        own = jnp.where(same, weights, 0.0)
        return mm("bhcs,bhsv->bhcv", own, state.values) + mm(
            "bhcs,bhsv->bhcv", weights - own, jax.lax.stop_gradient(state.values)
        )

    def _store(self, state: SoftmaxState, k, v):
        """Append ``k: [B, H, C, d_k]``, ``v`` at positions ``count .. count + C - 1``."""
        c = k.shape[2]
        qpos = state.count[:, None] + jnp.arange(c, dtype=jnp.int32)[None]  # [B, C]
        slots = qpos % self.capacity

        def put(buf, new, sl):  # buf [H, cap, d], new [H, C, d], sl [C]
            return buf.at[:, sl].set(new)

        keys = jax.vmap(put)(state.keys, k.astype(jnp.float32), slots)
        values = jax.vmap(put)(state.values, v.astype(jnp.float32), slots)
        pos = jax.vmap(lambda p, sl, qp: p.at[sl].set(qp))(state.pos, slots, qpos)
        return SoftmaxState(keys, values, pos, state.count + c), qpos

    def write(self, state, k, v, eta=None, alpha=None, beta=None, *, at=None):
        """Append one token ``k: [B, H, d_k]``, ``v: [B, H, d_v]``."""
        del eta, alpha, beta, at
        state, _ = self._store(state, k[:, :, None], v[:, :, None])
        return state

    def read(self, state, q):
        """Attend from the latest position: ``q: [B, H, d_k] -> [B, H, d_v]``."""
        qpos = (state.count - 1)[:, None]
        return self._attend(state, q[:, :, None].astype(jnp.float32), qpos)[:, :, 0]

    def _chunk_step(self, state, q, k, v, eta=None, alpha=None, beta=None, gradient_cut=0):
        """Store the chunk, then every query attends causally (``[B, H, C, d]`` inputs)."""
        del eta, alpha, beta
        c = k.shape[2]
        if self.window is not None and self.capacity < self.window + c - 1:
            raise ValueError(
                f"capacity {self.capacity} is too small for window {self.window} with chunks of {c} "
                f"tokens; use capacity >= {self.window + c - 1}. (In a language model the "
                "capacity is the config's max_len: a windowed model given T tokens at once needs "
                "max_len >= T + attn_window - 1, or stream the sequence in shorter pieces.)"
            )
        if self.window is None and c > self.capacity:
            raise ValueError(
                f"a chunk of {c} tokens does not fit in capacity {self.capacity}; full attention "
                "needs capacity >= the whole context length."
            )
        state, qpos = self._store(state, k, v)
        return state, self._attend(state, q.astype(jnp.float32), qpos, gradient_cut)

    def write_read_chunk(
        self,
        state,
        q,
        k,
        v,
        eta=None,
        alpha=None,
        beta=None,
        *,
        rates=None,
        read=None,
        gradient_cut=0,
    ):
        """One chunk in parallel (see `AbstractMemory.write_read_chunk`); with
        ``gradient_cut > 0`` no gradient flows between positions in different blocks of
        ``gradient_cut`` positions (same values; the teach signal's first pass)."""
        self._reads_after(read)  # softmax attention reads after its write; checks the argument
        arrays = self._prepare(q, k, v, _as_rates(eta, alpha, beta, rates))
        state, y = self._chunk_step(state, *arrays, gradient_cut=gradient_cut)
        return state, jnp.swapaxes(y, 1, 2)
