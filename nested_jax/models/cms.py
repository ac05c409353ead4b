"""Continuum Memory System (paper §4, arXiv §7.1; DESIGN §4 "CMS").

A CMS is a spectrum of MLP blocks (levels) whose weights are *fast*: each level ``l`` keeps
per-sample weights ``theta_l`` that start every sequence at their meta-learned initial value (a
parameter) and change every ``P_l`` tokens (``cms_periods``; ``0`` = frozen) by the sum of the
update terms of those tokens, all evaluated at the weights the level had when its chunk began —
the level semantics of :mod:`nested_jax.levels` (``Level`` / ``run_levels``), which the tests use
as the reference.

Each level is a pre-norm residual SwiGLU, ``z <- z + SwiGLU_theta(RMSNorm(z))``, chained in config
order (``"sequential"``, the default), or run side by side on the same input and summed with
learned weights (``"independent"``); ``"nested"`` chains them and, whenever a level fires, resets
the next faster level to its initial weights (spec §4.2: the fast block restarts from its
meta-learned initial state at each slower boundary).

Where the update terms come from (``cms_signal``):

* ``"local"``: ``-lr * grad 1/(2D) ||SwiGLU_theta(n_t) - n_t W_t||^2`` with the level's normalised
  input ``n_t`` and a learned target map ``W_t`` (a slow parameter): label-free, computed here;
* ``"teach"`` (default): a gradient step towards ``MLP_start(n_t) - m delta_t``, where ``delta_t``
  is the level's output error from one parallel forward/backward of the whole network at the
  sequence-start weights (gradients cut between CMS chunks, so it is causal);
  :class:`~nested_jax.models.lm.LanguageModel` computes the errors (pass 1) and passes them in;
* ``"ntp"`` (the exact reference): ``-lr * grad`` of the next-token loss of the chunk, which needs
  the whole network re-run per chunk, so :class:`~nested_jax.models.lm.LanguageModel` computes it
  and calls :meth:`commit`.

Because every non-frozen period is a multiple of the smallest one (``C``, ``config.cms.chunk``),
the chunk-parallel form is one scan over chunks of ``C`` tokens: inside a chunk no level changes,
so all its tokens run in parallel; at the chunk's end :meth:`commit` adds the chunk's update terms
to each level's accumulator and fires the levels whose period ends there. Streaming is the same
code with chunks of one token.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nested_jax.levels import fire, scan_chunks
from nested_jax.models.config import ModelConfig
from nested_jax.models.layers import dense_init, rms_norm, swiglu_init

__all__ = ["CMSState", "ContinuumMemory", "batched_swiglu", "swiglu_gain"]


class CMSState(NamedTuple):
    """``params``: per level, the fast SwiGLU weights ``[batch, ...]``; ``acc``: per level, the
    accumulated (not yet applied) update terms; ``pos``: tokens since the sequence start."""

    params: tuple
    acc: tuple
    pos: jax.Array


def batched_swiglu(p: dict, x: jax.Array) -> jax.Array:
    """SwiGLU with per-sample weights: ``x: [B, T, D]``, ``p["w_gate"]: [B, D, F]`` etc."""
    g = jnp.einsum("btd,bdf->btf", x, p["w_gate"])
    u = jnp.einsum("btd,bdf->btf", x, p["w_up"])
    return jnp.einsum("btf,bfd->btd", jax.nn.silu(g) * u, p["w_down"])


def swiglu_gain(p: dict, n: jax.Array) -> jax.Array:
    """How far one gradient step of rate 1 on all three matrices moves a SwiGLU's output at
    ``n: [B, C, D]`` along its error, at most (first order): ``[B, C]``,

        ||h||^2 + ||n||^2 sum_j (s_j^2 + (a_j s'_j)^2) ||W_down[j]||^2,

    with ``g = n W_gate``, ``a = n W_up``, ``s = silu(g)``, ``h = s a`` (the ``W_down``,
    ``W_up`` and ``W_gate`` shares). Dividing a rate by ``1 + rate * gain`` bounds the step
    (the CMS's NLMS, as :class:`~nested_jax.memory.MLPMemory`'s ``step_norm``)."""
    g = jnp.einsum("btd,bdf->btf", n, p["w_gate"])
    a = jnp.einsum("btd,bdf->btf", n, p["w_up"])
    s, ds = jax.jvp(jax.nn.silu, (g,), (jnp.ones_like(g),))
    h = s * a
    rows = jnp.sum(p["w_down"] ** 2, axis=-1)[:, None, :]  # [B, 1, F]
    through = jnp.sum((s * s + (a * ds) ** 2) * rows, axis=-1)
    return jnp.sum(h * h, axis=-1) + jnp.sum(n * n, axis=-1) * through


@dataclasses.dataclass(frozen=True)
class ContinuumMemory:
    """The CMS of one layer (replaces the Transformer's MLP sublayer)."""

    config: ModelConfig

    @property
    def periods(self) -> tuple:
        return tuple(self.config.cms.periods)

    @property
    def live(self) -> tuple:
        """Indices of the levels that learn (non-zero period)."""
        return tuple(i for i, p in enumerate(self.periods) if p)

    # --- params and state ------------------------------------------------------------------------
    def init(self, key) -> dict:
        c = self.config
        n = len(self.periods)
        ks = jax.random.split(key, 2 * n)
        levels = []
        for i in range(n):
            lv = {
                "norm": jnp.ones((c.d_model,), jnp.float32),
                "mlp": swiglu_init(ks[2 * i], c.d_model, c.d_ff),
            }
            if c.cms.signal == "local" and self.periods[i]:  # the local objective's target map
                lv["w_target"] = dense_init(ks[2 * i + 1], (c.d_model, c.d_model))
            levels.append(lv)
        levels = tuple(levels)
        p = {"levels": levels}
        if c.cms.variant == "independent":
            p["mix"] = jnp.ones((n,), jnp.float32)
        if c.cms.learn_lr:  # lr_l = 2 cms_lr sigmoid(rho_l): cms_lr at init, bounded by 2 cms_lr
            p["lr"] = jnp.zeros((n,), jnp.float32)
        return p

    def rates(self, p: dict) -> jax.Array:
        """Each level's inner learning rate ``[n_levels]``: ``2 cms_lr sigmoid(rho)`` (learned,
        bounded, ``cms_lr`` at init) or the fixed ``cms_lr``."""
        c = self.config
        if c.cms.learn_lr:
            return 2.0 * c.cms.lr * jax.nn.sigmoid(p["lr"])
        return jnp.full((len(self.periods),), c.cms.lr, jnp.float32)

    def init_state(self, params: dict, batch_size: int) -> CMSState:
        fast = tuple(self._broadcast(lv["mlp"], batch_size) for lv in params["levels"])
        acc = tuple(jax.tree.map(jnp.zeros_like, f) for f in fast)
        return CMSState(fast, acc, jnp.zeros([], jnp.int32))

    @staticmethod
    def _broadcast(mlp: dict, batch_size: int) -> dict:
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (batch_size,) + a.shape), mlp)

    # --- one chunk at frozen fast weights --------------------------------------------------------
    def forward(
        self, p: dict, fast: tuple, z: jax.Array, *, local: bool = False, teach=None, probe=None
    ):
        """``z: [B, C, D]`` through the levels at weights ``fast``: ``(y, increments)``.

        ``increments`` are the levels' summed update terms for this chunk (``None`` for frozen
        levels) with ``local=True`` (the local objective) or ``teach = (errors, starts)`` (per
        level, the teach signal's output errors ``delta_t: [B, C, D]`` and the level's
        sequence-start weights ``theta_s``: a GD step on ``1/m sum_t 1/2 ||MLP_theta(n_t) -
        v_t||^2``, ``m = C - 1``, towards ``v_t = MLP_theta_s(n_t) - m delta_t``, i.e. "what the
        sequence-start output should have been"; at ``theta = theta_s`` its gradient is exactly
        the dot-product ``grad sum_t <MLP_theta(n_t), delta_t>``; with ``cms.norm="period"`` the
        rate is ``lr / (1 + lr (P / C) sum_t gain_t / m)`` for a level of period ``P``, with
        ``"token"`` each token's is ``lr / (1 + lr gain_t / m)``, ``gain_t`` the level's gain at
        ``n_t``, see :func:`swiglu_gain`), else ``None``. ``probe`` (per level ``[B, C, D]``
        or ``None``) is added to the live levels' outputs (zero probes: their gradients are the
        output errors)."""
        c = self.config
        lrs = self.rates(p)
        variant = c.cms.variant
        learn = local or teach is not None
        incs = []
        total = z
        for i, (lv, theta) in enumerate(zip(p["levels"], fast, strict=True)):
            src = z if variant == "independent" else total
            n = rms_norm(src, lv["norm"], c.norm_eps)
            lr = lrs[i]
            if local and self.periods[i]:
                target = n @ lv["w_target"]

                def loss(th, n=n, target=target):
                    out = batched_swiglu(th, n)
                    return 0.5 * jnp.sum(jnp.mean((out - target) ** 2, axis=-1)), out

                g, out = jax.grad(loss, has_aux=True)(theta)
                incs.append(jax.tree.map(lambda a, lr=lr: -lr * a, g))
            elif teach is not None and self.periods[i]:
                errors, starts = teach
                m = max(n.shape[1] - 1, 1)
                out, vjp = jax.vjp(lambda th, n=n: batched_swiglu(th, n), theta)
                anchor = jax.lax.stop_gradient(batched_swiglu(starts[i], n))
                rate = lr
                if c.cms.norm != "none":  # [B, C, 1]: per token, or per sample over the period
                    gain = swiglu_gain(theta, n)
                    if c.cms.norm == "period":  # the period's P / C chunks, estimated by this one
                        scale = self.periods[i] // c.cms.chunk
                        gain = scale * jnp.sum(gain, axis=1, keepdims=True)
                    rate = (lr / (1.0 + lr * gain / m))[..., None]
                (g,) = vjp(rate * ((out - anchor) / m + errors[i]))
                incs.append(jax.tree.map(jnp.negative, g))
            else:
                out = batched_swiglu(theta, n)
                incs.append(None)
            if probe is not None and probe[i] is not None:
                out = out + probe[i]
            if variant == "independent":
                total = total + p["mix"][i] * out
            else:
                total = total + out
        return total, (tuple(incs) if learn else None)

    def commit(self, p: dict, state: CMSState, increments: tuple, n_tokens) -> CMSState:
        """Add a chunk's update terms (``None`` entries: nothing) to the accumulators, advance by
        ``n_tokens`` and fire every level whose period ends there (nested: then reset the next
        faster level to its initial weights). Chunks must not straddle a period boundary."""
        c = self.config
        pos = state.pos + n_tokens
        params, accs = list(state.params), list(state.acc)
        for i in self.live:
            if increments[i] is not None:
                inc = increments[i]
                if c.first_order:
                    inc = jax.tree.map(jax.lax.stop_gradient, inc)
                accs[i] = jax.tree.map(jnp.add, accs[i], inc)
            params[i], accs[i] = fire(params[i], accs[i], pos % self.periods[i] == 0)
        if c.cms.variant == "nested":
            for i in self.live:
                slower = [self.periods[j] for j in self.live if self.periods[j] > self.periods[i]]
                if not slower:
                    continue
                reset = pos % min(slower) == 0
                b = jax.tree.leaves(params[i])[0].shape[0]
                init = self._broadcast(p["levels"][i]["mlp"], b)
                params[i] = jax.tree.map(
                    lambda a, b_, f=reset: jnp.where(f, a, b_), init, params[i]
                )
        return CMSState(tuple(params), tuple(accs), pos)

    # --- the sublayer ----------------------------------------------------------------------------
    def __call__(
        self,
        p: dict,
        state: CMSState,
        z: jax.Array,
        *,
        parallel: bool = True,
        probe=None,
        teach=None,
    ):
        """``z: [B, T, D]`` -> ``(y, state)``.

        * ``"local"`` signal: the levels learn here (chunk-parallel, or token by token when not
          ``parallel``);
        * ``teach = (errors, starts)`` given (the ``"teach"`` signal's second pass; per level the
          output errors ``[B, T, D]``, ``T`` a multiple of the CMS chunk, and the sequence-start
          weights): the levels learn chunk by chunk from them (see :meth:`forward`);
        * otherwise (``"ntp"``, ``"teach"`` without errors, all levels frozen) the weights in
          ``state`` are applied as they are (the language model commits the updates); ``probe``
          adds zero probes to the live levels' outputs (the teach signal's first pass)."""
        c = self.config
        if not self.live or (c.cms.signal != "local" and teach is None):
            y, _ = self.forward(p, state.params, z, probe=probe)
            return y, state
        step = c.cms.chunk if parallel or teach is not None else 1
        if teach is not None and z.shape[1] % step:
            raise ValueError(
                f"teach errors need whole CMS chunks of {step}; got {z.shape[1]} tokens."
            )
        errors, starts = teach if teach is not None else (tuple(None for _ in self.periods), None)

        def chunk(state, zc, ec):
            local = c.cms.signal == "local"
            tc = None if local else (ec, starts)
            y, inc = self.forward(p, state.params, zc, local=local, teach=tc)
            return self.commit(p, state, inc, zc.shape[1]), y

        res = scan_chunks(chunk, state, (z, errors), step, axis=1, remat=True)
        return res.outputs, res.carry
