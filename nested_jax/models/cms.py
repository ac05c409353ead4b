"""Continuum Memory System (paper §4, arXiv §7.1; decisions D34, D90).

A CMS is a spectrum of levels, each an associative memory at its own frequency: level ``l`` is a
`SwiGLUMemory` whose per-sample weights ``theta_l`` start every sequence
at their meta-learned initial value (a parameter) and change every ``P_l`` tokens
(``cms.periods``; ``0`` = frozen) by the sum of the increments of those tokens, all taken at the
weights the level had when its period began: the level semantics of `nested_jax.levels`
(each level fires through `fire`; ``Level`` / ``run_levels`` are the
tests' reference).

Each level is a pre-norm residual SwiGLU, ``z <- z + M_theta(RMSNorm(z))``, chained in config
order (``"sequential"``, the default), or run side by side on the same input and summed with
learned weights (``"independent"``); ``"nested"`` chains them and, whenever a level fires, resets
the next faster level to its initial weights (spec §4.2: the fast block restarts from its
meta-learned initial state at each slower boundary).

What a level learns from is its *signal* (``cms.signal``), a type beside the memory's objectives:
each gives a level the step-scaled errors of its outputs for one chunk
(`Local.error`, `Teach.error`, `NextToken.error`), and the level's memory takes
the step (`SwiGLUMemory.write`).

* `Local` (``"local"``): label-free, towards a learned linear map of the level's own input;
  the CMS computes everything itself.
* `Teach` (``"teach"``, default): the level's output error ``delta_t`` from one
  parallel forward / backward of the whole network at the sequence-start CMS weights
  (`output_errors`, gradients cut between CMS chunks,
  so it is causal), then a normalised L2 step towards what the sequence-start output should have
  been.
* `NextToken` (``"ntp"``, the exact reference): the error of the chunk's next-token loss
  at the current weights, the whole network re-run per chunk; the step is ``-lr`` times the
  loss's gradient.
* `Online` (``"online"``, decisions D99): the same errors taken from the network's one forward
  of each chunk (the mixers' outputs held constant with ``cms.teach_path="residual"``), the
  step normalised as `Teach`'s and first order (only the learned rates see the outer gradient).

The language model supplies the errors of the two signals that need the network
(``Context.errors``); the CMS turns them into steps. Because every non-frozen period is a
multiple of the smallest one (``C``, ``config.cms.chunk``), the chunk-parallel form is one scan
over chunks of ``C`` tokens: inside a chunk no level changes, so all its tokens run in parallel;
at the chunk's end `ContinuumMemory.commit` adds the chunk's increments to each level's
accumulator and fires the levels whose period ends there. Streaming is the same code with chunks
of one token.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nested_jax.levels import fire, scan_chunks
from nested_jax.memory import SwiGLUMemory, nlms_rate
from nested_jax.models.config import ModelConfig
from nested_jax.models.layers import Context, dense_init, rms_norm

__all__ = [
    "CMSState",
    "ContinuumMemory",
    "Local",
    "NextToken",
    "Online",
    "Signal",
    "Teach",
]


class CMSState(NamedTuple):
    """``params``: per level, the fast SwiGLU weights ``[batch, ...]``; ``acc``: per level, the
    accumulated (not yet applied) increments; ``pos``: tokens since the sequence start."""

    params: tuple
    acc: tuple
    pos: jax.Array


# --- the signals: where a level's errors come from ----------------------------------------------
@dataclasses.dataclass(frozen=True)
class Local:
    """Label-free: the level regresses its output on a learned linear map of its own input,
    ``L = 1/(2D) sum_t ||M_theta(n_t) - n_t W_t||^2`` (``W_t``: the level's ``w_target``, a slow
    parameter); step ``-lr grad L``."""

    from_network = False

    def error(self, lv: dict, out, n, lr, **_):
        """The step-scaled errors ``lr (out - n W_t) / D``."""
        return lr * ((out - n @ lv["w_target"]) / out.shape[-1])


@dataclasses.dataclass(frozen=True)
class Teach:
    """Errors from the network at the sequence-start weights (two passes; decisions D52).

    Given the level's output error ``delta_t`` (pass 1: the gradient of each chunk's next-token
    loss, per sample the mean over its ``m = C - 1`` inner pairs, with respect to the level's
    output at its sequence-start weights ``theta_s``), the level takes a GD step on
    ``1/m sum_t 1/2 ||M_theta(n_t) - v_t||^2`` towards ``v_t = M_theta_s(n_t) - m delta_t``
    ("what the sequence-start output should have been"): at ``theta = theta_s`` its gradient is
    exactly the next-token one, and the L2 target stops a level once it has moved its output by
    ``-delta``.

    Attributes:
      norm: how the rate is normalised by the level's gain (`SwiGLUMemory.gain`,
        `nlms_rate` with strength ``1 / m``): ``"period"`` divides by
        ``1 + lr (P / C) sum_chunk gain_t / m`` (bounds the whole step of a level of period
        ``P``, decisions D86), ``"token"`` each token's rate by ``1 + lr gain_t / m``
        (decisions D54), ``"none"``: the plain rate.
    """

    norm: str = "period"
    from_network = True

    def error(self, mem: SwiGLUMemory, theta, out, n, lr, delta, start, period, chunk, **_):
        """The step-scaled errors ``rate ((out - M_start(n)) / m + delta)``."""
        m = max(n.shape[1] - 1, 1)
        anchor = jax.lax.stop_gradient(mem.apply(start, n))
        rate = teach_rate(self.norm, mem, theta, n, lr, period, chunk)
        return rate * ((out - anchor) / m + delta)


def teach_rate(norm: str, mem: SwiGLUMemory, theta, n, lr, period: int, chunk: int, gain=None):
    """A level's rate normalised by its gain at its inputs ``n: [B, C, D]`` (`Teach.norm`):
    ``[B, C, 1]`` per token (``"token"``), ``[B, 1, 1]`` per sample (``"period"``) or ``lr``
    itself (``"none"``). ``gain``: `SwiGLUMemory.gain` at ``(theta, n)`` when already known."""
    if norm == "none":
        return lr
    m = max(n.shape[1] - 1, 1)
    gain = mem.gain(theta, n) if gain is None else gain
    if norm == "period":  # the period's P / C chunks, estimated by this one
        gain = (period // chunk) * jnp.sum(gain, axis=1, keepdims=True)
    return nlms_rate(lr, gain, 1.0 / m)[..., None]


@dataclasses.dataclass(frozen=True)
class Online:
    """Errors from the network's own forward of each chunk, at the levels' current weights
    (one pass; decisions D99).

    The chunk runs once through the whole network (its outputs are the model's outputs); each
    level's output error ``delta_t`` is the gradient of the chunk's next-token loss (per sample
    the mean over its ``m = C - 1`` inner pairs) at that forward, taken back through the paths
    ``cms.teach_path`` names (``"residual"``: the mixers' outputs held constant, so only the
    CMS levels and the head are re-run). The level then takes the normalised step ``-rate grad_theta
    sum_t <M_theta(n_t), delta_t>`` (`Teach`'s step with the anchor at the current weights,
    where its L2 pull vanishes), committed at the chunk's end.

    The step is first order: the outer gradient reaches the levels' learned rates (through the
    per-sample rate), not the increment's dependence on the weights, inputs or errors; the
    levels' initial weights learn through the weights they are read at. ``norm`` is `Teach`'s,
    ``"period"`` or ``"none"`` (a per-sample rate).

    With the residual path the language model runs the error pass backward from the chunk's own
    forward (`ContinuumMemory.sweep`, decisions D100); `read_and_step` serves the levels given
    their errors (``ContinuumMemory.learn``: errors through the whole network, and the sweep's
    slow twin).
    """

    norm: str = "period"
    from_network = True

    def read_and_step(self, mem: SwiGLUMemory, theta, n, lr, delta, period, chunk) -> tuple:
        """The level's output ``M_theta(n)`` and the chunk's increment ``rate * u``, with ``u =
        -grad_theta sum_t <M_theta(n_t), delta_t>`` a constant of the outer gradient and
        ``rate`` `teach_rate` at a constant gain, all from one forward
        (`SwiGLUMemory.read_and_step`)."""
        out, unit, gain = mem.read_and_step(theta, n, delta)
        sg = jax.lax.stop_gradient
        rate = teach_rate(self.norm, mem, theta, sg(n), lr, period, chunk, gain)  # [B, 1, 1] or []
        return out, jax.tree.map(lambda u: rate * u, unit)


@dataclasses.dataclass(frozen=True)
class NextToken:
    """The exact reference: the error of the chunk's next-token loss at the current weights (the
    whole network re-run per chunk, differentiated through unless ``first_order``); the step is
    ``-lr`` times the loss's gradient with respect to the level's weights."""

    from_network = True

    def error(self, lr, delta, **_):
        """The step-scaled errors ``lr delta``."""
        return lr * delta


Signal = Local | Teach | NextToken | Online


@dataclasses.dataclass(frozen=True)
class ContinuumMemory:
    """The CMS of one layer (replaces the Transformer's MLP sublayer): a loop over its levels."""

    config: ModelConfig

    @property
    def periods(self) -> tuple:
        return tuple(self.config.cms.periods)

    @property
    def live(self) -> tuple:
        """Indices of the levels that learn (non-zero period)."""
        return tuple(i for i, p in enumerate(self.periods) if p)

    @property
    def memory(self) -> SwiGLUMemory:
        """Every level's memory."""
        return SwiGLUMemory(self.config.d_model, self.config.d_ff)

    @property
    def signal(self) -> Signal:
        """What the levels learn from (``cms.signal``)."""
        cms = self.config.cms
        if cms.signal == "local":
            return Local()
        if cms.signal == "teach":
            return Teach(cms.norm)
        if cms.signal == "online":
            return Online(cms.norm)
        return NextToken()

    # --- params and state ------------------------------------------------------------------------
    def init(self, key) -> dict:
        c = self.config
        n = len(self.periods)
        ks = jax.random.split(key, 2 * n)
        levels = []
        for i in range(n):
            lv = {
                "norm": jnp.ones((c.d_model,), jnp.float32),
                "mlp": self.memory.init_params(ks[2 * i]),
            }
            if isinstance(self.signal, Local) and self.periods[i]:  # the local target map
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
        fast = tuple(self.memory.init_state(lv["mlp"], batch_size) for lv in params["levels"])
        acc = tuple(jax.tree.map(jnp.zeros_like, f) for f in fast)
        return CMSState(fast, acc, jnp.zeros([], jnp.int32))

    # --- one chunk at frozen fast weights --------------------------------------------------------
    def forward(
        self,
        p: dict,
        fast: tuple,
        z: jax.Array,
        *,
        errors=None,
        starts=None,
        probes=None,
        cache: bool = False,
    ):
        """``z: [B, C, D]`` through the levels at weights ``fast``: ``(y, increments)``
        (``(y, increments, cache)`` with ``cache``: per level, its input before the norm
        ``"src"`` and its memory's cache ``"mem"`` (`SwiGLUMemory.apply_cached`), constants of
        the outer gradient, for `sweep`; levels that learn here have none).

        A live level learns when its signal is `Local` or when ``errors`` (per level, its
        output errors ``[B, C, D]`` from the network; with `Teach` also ``starts``, the
        levels' sequence-start weights) are given: ``increments`` holds, per level, the chunk's
        step (``None`` for frozen levels); otherwise ``increments`` is ``None``. ``probes`` (per
        level ``[B, C, D]`` or ``None``) are added to the live levels' outputs (zero probes: their
        gradients are the output errors)."""
        c = self.config
        mem, sig, lrs = self.memory, self.signal, self.rates(p)
        learn = isinstance(sig, Local) or errors is not None
        incs, caches = [], []
        total = z
        for i, (lv, theta) in enumerate(zip(p["levels"], fast, strict=True)):
            src = z if c.cms.variant == "independent" else total
            n = rms_norm(src, lv["norm"], c.norm_eps)
            if learn and self.periods[i]:
                given = {} if errors is None else {"delta": errors[i]}
                if starts is not None:
                    given["start"] = starts[i]

                def error_of(out, i=i, lv=lv, theta=theta, n=n, given=given):
                    return sig.error(
                        lv=lv,
                        mem=mem,
                        theta=theta,
                        out=out,
                        n=n,
                        lr=lrs[i],
                        period=self.periods[i],
                        chunk=c.cms.chunk,
                        **given,
                    )

                if isinstance(sig, Online):  # first order: the step is not differentiated
                    out, inc = sig.read_and_step(
                        mem, theta, n, lrs[i], errors[i], self.periods[i], c.cms.chunk
                    )
                else:
                    out, inc = mem.write(theta, n, error_of)
                incs.append(inc)
            elif cache:
                out, kept = mem.apply_cached(theta, n)
                caches.append({"src": jax.lax.stop_gradient(src), "mem": kept})
                incs.append(None)
            else:
                out = mem.apply(theta, n)
                incs.append(None)
            if probes is not None and probes[i] is not None:
                out = out + probes[i]
            if c.cms.variant == "independent":
                total = total + p["mix"][i] * out
            else:
                total = total + out
        incs = tuple(incs) if learn else None
        return (total, incs, tuple(caches)) if cache else (total, incs)

    def commit(self, p: dict, state: CMSState, increments: tuple, n_tokens) -> CMSState:
        """Add a chunk's increments (``None`` entries: nothing) to the accumulators, advance by
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
                init = self.memory.init_state(p["levels"][i]["mlp"], b)
                params[i] = jax.tree.map(
                    lambda a, b_, f=reset: jnp.where(f, a, b_), init, params[i]
                )
        return CMSState(tuple(params), tuple(accs), pos)

    # --- the sublayer ----------------------------------------------------------------------------
    def __call__(self, p: dict, state: CMSState, z: jax.Array, ctx: Context = Context()):
        """``z: [B, T, D]`` -> ``(y, state)`` (``(y, state, cache)`` with ``ctx.cache``, the
        levels applied as they are: see `forward`).

        The levels learn here, chunk by chunk, with the `Local` signal (chunk-parallel,
        or token by token when not ``ctx.parallel``) or when ``ctx.errors`` are given (the
        network's output errors of every level, ``T`` a multiple of the CMS chunk; with
        `Teach` also ``ctx.starts``); otherwise the weights in ``state`` are applied as they
        are, with ``ctx.probes`` added to the live levels' outputs."""
        c = self.config
        learns = isinstance(self.signal, Local) or ctx.errors is not None
        if ctx.cache:
            if learns:
                raise ValueError("the CMS's forward cache is for a pass where it does not learn.")
            y, _, cache = self.forward(p, state.params, z, probes=ctx.probes, cache=True)
            return y, state, cache
        if not self.live or not learns:
            y, _ = self.forward(p, state.params, z, probes=ctx.probes)
            return y, state
        step = c.cms.chunk if ctx.parallel or ctx.errors is not None else 1
        if ctx.errors is not None and z.shape[1] % step:
            raise ValueError(
                f"the CMS learns from errors over whole chunks of {step} tokens; got "
                f"{z.shape[1]} tokens."
            )
        errors = ctx.errors if ctx.errors is not None else tuple(None for _ in self.periods)

        def chunk(state, zc, ec):
            has = ctx.errors is not None
            y, inc = self.forward(
                p, state.params, zc, errors=ec if has else None, starts=ctx.starts
            )
            return self.commit(p, state, inc, zc.shape[1]), y

        res = scan_chunks(chunk, state, (z, errors), step, axis=1, remat=True)
        return res.outputs, res.carry

    def sweep(self, p: dict, state: CMSState, cache: tuple, d_y: jax.Array):
        """The online signal's error pass through this CMS, backward from its forward's
        ``cache`` (`forward` with ``cache``, one chunk at ``state``'s weights): from ``d_y``
        (``[B, C, D]``, the gradient of the chunk's next-token loss with respect to the CMS's
        output, through the residual stream), each level's output error ``delta_t``, back
        through the levels in reverse; every live level takes `Online`'s step from it (committed
        at the chunk's end). Returns ``(d_z, state)``: the gradient with respect to the CMS's
        input, and the state after the step.

        Equal to re-running the levels with the errors (`LanguageModel.output_errors` with the
        mixers' outputs given, then `learn`; tested), without their forward matmuls. Only the
        step's rates see the outer gradient."""
        c, mem, sig, sg = self.config, self.memory, self.signal, jax.lax.stop_gradient
        if not isinstance(sig, Online):
            raise ValueError(
                f"sweep is the online signal's error pass; cms.signal={c.cms.signal!r}."
            )
        lrs = self.rates(p)
        independent = c.cms.variant == "independent"
        d_total, d_z = d_y, d_y
        incs = [None] * len(self.periods)
        for i in reversed(range(len(self.periods))):
            lv, theta = jax.tree.map(sg, p["levels"][i]), state.params[i]
            n, norm_vjp = jax.vjp(
                lambda x, g=lv["norm"]: rms_norm(x, g, c.norm_eps), cache[i]["src"]
            )
            delta = sg(p["mix"][i]) * d_total if independent else d_total
            d_n, unit, gain = mem.backward(theta, n, cache[i]["mem"], delta)
            if self.periods[i]:
                period = self.periods[i]
                rate = teach_rate(sig.norm, mem, theta, n, lrs[i], period, c.cms.chunk, gain)
                incs[i] = jax.tree.map(lambda u, r=rate: r * u, unit)
            (d_src,) = norm_vjp(d_n)
            if independent:
                d_z = d_z + d_src
            else:
                d_total = d_total + d_src
        d_z = d_z if independent else d_total
        return d_z, self.commit(p, state, tuple(incs), d_y.shape[1])

    def learn(self, p: dict, state: CMSState, z: jax.Array, errors: tuple) -> CMSState:
        """The state after the levels learn from the network's output ``errors`` (per level
        ``[B, T, D]``) on their input ``z: [B, T, D]`` (whole CMS chunks)."""
        return self(p, state, z, Context(errors=errors))[1]
