"""A SwiGLU MLP as an associative memory that learns from external errors: a CMS level (paper §4).

``M(n) = (silu(n W_gate) * (n W_up)) W_down`` with per-sample weights (``[batch, ...]``). Unlike
the memories that regress a value on a key (linear, MLP), a Continuum Memory System level is not
told a target by its input: what it should have output comes from elsewhere (the next-token loss
through the rest of the network, or a learned local target), as an *error* ``e_t = dL/dM(n_t)``
for each token of a chunk. Its write is one gradient step on ``sum_t <M(n_t), e_t>`` at the
weights the chunk began with:

    increment = -grad_theta sum_t <M_theta(n_t), e_t>,      theta <- theta + increment,

where ``e_t`` already carries the step size (a rate, or a per-token normalised rate, times the
error). A level of period ``P`` accumulates the increments of its chunks and applies them when its
period ends (`nested_jax.levels.fire`); `ContinuumMemory`
does that, so this memory only gives the increments.

Stable steps (NLMS): `SwiGLUMemory.gain` is how far a rate-1 step on all three matrices
moves the output at ``n`` along its error, at most (first order); dividing a rate by
``1 + rate * gain`` (`nlms_rate`, shared with
`MLPMemory`) bounds the step at the error itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["SwiGLUMemory"]


@dataclasses.dataclass(frozen=True)
class SwiGLUMemory:
    """A per-sample SwiGLU MLP memory ``[d_model] -> [d_model]`` with ``hidden`` units.

    Params and state are dicts ``{"w_gate": [.., D, F], "w_up": [.., D, F], "w_down": [.., F, D]}``
    (the state with a leading batch axis: every sample learns its own weights)."""

    d_model: int
    hidden: int

    def __post_init__(self):
        for name in ("d_model", "hidden"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SwiGLUMemory.{name} must be a positive int, got {v!r}.")

    # --- state ---------------------------------------------------------------------------------
    def init_params(self, key) -> dict:
        """The initial weights, each ``N(0, 1 / fan_in)``."""
        d, f = self.d_model, self.hidden
        k1, k2, k3 = jax.random.split(key, 3)
        normal = lambda k, shape: jax.random.normal(k, shape, jnp.float32) / shape[0] ** 0.5
        return {
            "w_gate": normal(k1, (d, f)),
            "w_up": normal(k2, (d, f)),
            "w_down": normal(k3, (f, d)),
        }

    def init_state(self, params: dict, batch_size: int) -> dict:
        """Every sample starts from ``params`` (the meta-learned initial weights)."""
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (batch_size,) + a.shape), params)

    # --- read ----------------------------------------------------------------------------------
    def apply(self, state: dict, n: jax.Array) -> jax.Array:
        """``M(n)`` for ``n: [B, C, D]`` through per-sample weights ``state`` (``[B, ...]``)."""
        g = jnp.einsum("btd,bdf->btf", n, state["w_gate"])
        u = jnp.einsum("btd,bdf->btf", n, state["w_up"])
        return jnp.einsum("btf,bfd->btd", jax.nn.silu(g) * u, state["w_down"])

    def gain(self, state: dict, n: jax.Array) -> jax.Array:
        """How far one gradient step of rate 1 on all three matrices moves the output at
        ``n: [B, C, D]`` along its error, at most (first order): ``[B, C]``,

            ||h||^2 + ||n||^2 sum_j (s_j^2 + (a_j s'_j)^2) ||W_down[j]||^2,

        with ``g = n W_gate``, ``a = n W_up``, ``s = silu(g)``, ``h = s a`` (the ``W_down``,
        ``W_up`` and ``W_gate`` shares)."""
        g = jnp.einsum("btd,bdf->btf", n, state["w_gate"])
        a = jnp.einsum("btd,bdf->btf", n, state["w_up"])
        s, ds = jax.jvp(jax.nn.silu, (g,), (jnp.ones_like(g),))
        h = s * a
        rows = jnp.sum(state["w_down"] ** 2, axis=-1)[:, None, :]  # [B, 1, F]
        through = jnp.sum((s * s + (a * ds) ** 2) * rows, axis=-1)
        return jnp.sum(h * h, axis=-1) + jnp.sum(n * n, axis=-1) * through

    # --- write ---------------------------------------------------------------------------------
    def write(
        self, state: dict, n: jax.Array, error_of: Callable[[jax.Array], jax.Array]
    ) -> tuple[jax.Array, dict]:
        """Read a chunk and take its step: ``(out, increment)`` with ``out = M(n)`` and
        ``increment = -grad_theta sum_t <M_theta(n_t), e_t>`` at ``state``, where the step-scaled
        errors ``e = error_of(out)`` (``[B, C, D]``) may depend on the outputs (a regression
        target) or not (errors from the network). ``e`` is a constant of the inner gradient."""
        out, pull = jax.vjp(lambda th: self.apply(th, n), state)
        (g,) = pull(error_of(out))
        return out, jax.tree.map(jnp.negative, g)

    def apply_cached(self, state: dict, n: jax.Array) -> tuple[jax.Array, tuple]:
        """``(M(n), cache)``: the output (differentiable in ``state`` and ``n``) and what
        `backward` needs from this forward, ``cache = (n W_gate, n W_up)`` as constants."""
        g = jnp.einsum("btd,bdf->btf", n, state["w_gate"])
        a = jnp.einsum("btd,bdf->btf", n, state["w_up"])
        out = jnp.einsum("btf,bfd->btd", jax.nn.silu(g) * a, state["w_down"])
        sg = jax.lax.stop_gradient
        return out, (sg(g), sg(a))

    def backward(self, state: dict, n: jax.Array, cache: tuple, error: jax.Array):
        """A first-order step and the error's way back, from a forward's ``cache``
        (`apply_cached` at ``(state, n)``): ``(d_n, increment, gain)`` for the output errors
        ``error: [B, C, D]``, with ``d_n = (dM/dn)^T e`` (``[B, C, D]``), ``increment =
        -grad_theta sum_t <M_theta(n_t), e_t>`` and `gain` ``[B, C]``, all constants of the outer
        gradient. No forward matmul: the error pass of the online CMS signal reuses the
        network's own forward (`ContinuumMemory.sweep`)."""
        sg = jax.lax.stop_gradient
        g, a = cache
        n, e, w = sg(n), sg(error), jax.tree.map(sg, state)
        s, ds = jax.jvp(jax.nn.silu, (g,), (jnp.ones_like(g),))
        h = s * a
        dh = jnp.einsum("btd,bfd->btf", e, w["w_down"])
        dg, da = dh * a * ds, dh * s
        increment = {
            "w_gate": -jnp.einsum("btd,btf->bdf", n, dg),
            "w_up": -jnp.einsum("btd,btf->bdf", n, da),
            "w_down": -jnp.einsum("btf,btd->bfd", h, e),
        }
        d_n = jnp.einsum("btf,bdf->btd", dg, w["w_gate"]) + jnp.einsum(
            "btf,bdf->btd", da, w["w_up"]
        )
        rows = jnp.sum(w["w_down"] ** 2, axis=-1)[:, None, :]  # [B, 1, F]
        through = jnp.sum((s * s + (a * ds) ** 2) * rows, axis=-1)
        gain = jnp.sum(h * h, axis=-1) + jnp.sum(n * n, axis=-1) * through
        return d_n, increment, gain

    def read_and_step(self, state: dict, n: jax.Array, error: jax.Array):
        """One forward for a read and a first-order step: ``(out, increment, gain)`` with ``out =
        M(n)`` (differentiable in ``state`` and ``n``), and, from the same intermediates as
        constants of the outer gradient, ``increment = -grad_theta sum_t <M_theta(n_t), e_t>``
        for the errors ``error: [B, C, D]`` and `gain` ``[B, C]``. Equal to `apply`, `write` and
        `gain` at ``state`` (tested), without their three forwards."""
        out, cache = self.apply_cached(state, n)
        _, increment, gain = self.backward(state, n, cache, error)
        return out, increment, gain

    def write_chunk(self, state: dict, n: jax.Array, error: jax.Array, rate=1.0) -> dict:
        """The memory protocol's chunk write: ``state`` after one step with the given errors
        ``error: [B, C, D]`` and ``rate`` (a scalar, or per token ``[B, C, 1]``)."""
        _, inc = self.write(state, n, lambda out: rate * error)
        return jax.tree.map(jnp.add, state, inc)
