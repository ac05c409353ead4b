"""Language-model wrapper and the one API every model shares.

``model = LanguageModel(config)``;
``params = model.init(key)``; ``state = model.init_state(params, batch_size)``;
``logits, state = model.apply(params, tokens, state=None)`` (the parallel/training form);
``logits, state = model.step(params, state, tokens_chunk)`` (streaming with carried state);
``model.apply_reference(params, tokens)`` (the slow twin: one token at a time through ``step``);
``model.loss(params, tokens)`` (next-token cross-entropy);
``state = model.next_sequence(params, state)`` (a fresh context; CMS weights kept by option).

Layers are stacked and run under ``lax.scan`` (compile time independent of depth); every layer's
state (its memories) is stacked the same way.

A model whose CMS learns from the next-token loss (the `Teach` and
`NextToken` signals; Hope, Hope-Attention) runs in CMS chunks of
``C = config.cms.chunk`` tokens, two steps each (`LanguageModel._learning_chunk`):

1. `LanguageModel.output_errors`: one forward / backward of the whole network with zero
   probes on every live CMS level's output gives each level's output error ``delta_t`` (the
   gradient of the chunk's next-token loss, per sample the mean over its ``C - 1`` inner pairs).
   Teach takes it once for all full chunks, at the sequence-start CMS weights with gradients
   blocked between CMS chunks (so ``delta_t`` of chunk ``c`` comes from chunk ``c``'s targets
   only: causal), as constants; NextToken per chunk at the current weights, differentiated
   through (second order unless ``first_order``).
2. The CMS levels learn from those errors (`ContinuumMemory`;
   the update is committed at the chunk's end, so it acts from chunk ``c + 1`` on and no output
   sees its own target). Teach runs the forward again with the errors; NextToken's outputs are
   those of step 1, and only the CMS re-runs on the inputs step 1 collected.

The one-pass `Online` signal runs each chunk once through the network and takes the errors
backward from that forward's cache (`LanguageModel._online_sweep`, decisions D100); the levels
step on the way back.

Streaming buffers the current chunk's tokens and the state at its start (and, for Teach, the first
pass's state), and runs both steps on each chunk as it completes, so any cut gives the parallel
result.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nested_jax.levels import UNROLL_UPTO, scan_chunks
from nested_jax.memory import SoftmaxState, StreamState
from nested_jax.models.cms import ContinuumMemory, NextToken, Online, Teach
from nested_jax.models.config import ModelConfig
from nested_jax.models.hope import HopeBlock
from nested_jax.models.layers import Context, rms_norm
from nested_jax.models.self_modifying import SelfModifyingBlock
from nested_jax.models.titans import TitansBlock
from nested_jax.models.transformer import TransformerBlock
from nested_jax.precision import dense

__all__ = [
    "LMState",
    "LanguageModel",
    "check_token_ids",
    "count_params",
    "matched_d_ff",
    "sample_token",
    "token_nll",
]


_BLOCKS = {
    "transformer": TransformerBlock,
    "titans": TitansBlock,
    "selfmod": SelfModifyingBlock,
    "hope": HopeBlock,
    "hope_attention": HopeBlock,
}


class LMState(NamedTuple):
    """A language model's state, whatever its blocks: ``layers`` (every layer's state now,
    stacked over layers). When the CMS learns from the next-token loss (``"ntp"``, ``"teach"``)
    also ``start`` (every layer's state at the start of the current CMS chunk), ``buf`` (that
    chunk's tokens so far, ``[batch, C]``), ``off`` (how many) and, for ``"teach"``, ``teach``
    (the first pass's layer states at the chunk start; its CMS weights stay at the sequence
    start); ``None`` otherwise. Those four are the CMS chunk's stream: what a next-token signal
    needs to recompute the chunk when it completes (decisions D94)."""

    layers: Any
    start: Any = None
    buf: jax.Array | None = None
    off: jax.Array | None = None
    teach: Any = None


@dataclasses.dataclass(frozen=True)
class LanguageModel:
    """Embeddings -> ``n_layers`` blocks (scanned) -> RMSNorm -> output head."""

    config: ModelConfig

    @property
    def block(self):
        return _BLOCKS[self.config.kind](self.config)

    def init(self, key) -> dict:
        c = self.config
        ke, kl, kh = jax.random.split(key, 3)
        layers = jax.vmap(self.block.init)(jax.random.split(kl, c.n_layers))
        return {
            "embed": 0.02 * jax.random.normal(ke, (c.vocab_size, c.d_model), jnp.float32),
            "layers": layers,
            "final_norm": jnp.ones((c.d_model,), jnp.float32),
            "head": jax.random.normal(kh, (c.d_model, c.vocab_size), jnp.float32) / c.d_model**0.5,
        }

    @property
    def cms(self) -> ContinuumMemory:
        """Every layer's Continuum Memory System (Hope, Hope-Attention)."""
        return ContinuumMemory(self.config)

    @property
    def ntp(self) -> bool:
        """Whether the CMS learns from the next-token loss (``"ntp"`` or ``"teach"``: the network
        gives the levels their errors, `output_errors`, and the state's chunk fields are
        used)."""
        c = self.config
        return c.has_cms and c.cms.chunk > 0 and self.cms.signal.from_network

    @property
    def teach(self) -> bool:
        """Whether those errors come from the sequence-start CMS weights (`Teach`)."""
        return self.ntp and isinstance(self.cms.signal, Teach)

    def init_state(self, params: dict, batch_size: int) -> Any:
        """Every layer's fresh state (from its learned initial memories), stacked over layers."""
        layers = jax.vmap(lambda p: self.block.init_state(p, batch_size))(params["layers"])
        if self.ntp:
            buf = jnp.zeros((batch_size, self.config.cms.chunk), jnp.int32)
            teach = layers if self.teach else None
            return LMState(layers, layers, buf, jnp.zeros([], jnp.int32), teach)
        return LMState(layers)

    def next_sequence(self, params: dict, state: Any) -> Any:
        """A fresh state for a new sequence (training resets every memory to its learned initial
        state). With ``cms.persistent`` the CMS levels keep the weights they learned (continual /
        deployed mode); everything else restarts."""
        if not self.config.has_cms:
            raise ValueError(
                f"next_sequence is for models with a CMS (hope, hope_attention); for "
                f"{self.config.kind!r} use init_state(params, batch_size)."
            )
        old = state.layers
        batch = jax.tree.leaves(old["cms"].params)[0].shape[1]  # [layers, batch, ...]
        fresh = self.init_state(params, batch)
        if not self.config.cms.persistent:
            return fresh

        def keep(new_layers):
            cms = new_layers["cms"]._replace(params=old["cms"].params)
            return {**new_layers, "cms": cms}

        layers = keep(fresh.layers)
        if self.ntp:
            return fresh._replace(layers=layers, start=layers, teach=layers if self.teach else None)
        return fresh._replace(layers=layers)

    def _check_tokens(self, tokens):
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(
                f"tokens must be an integer array [batch, seq], got {tokens.dtype} {tokens.shape}."
            )
        if tokens.shape[1] > self.config.max_len:
            raise ValueError(
                f"sequence length {tokens.shape[1]} exceeds the model's max_len "
                f"{self.config.max_len}; raise max_len in the config or stream in chunks."
            )
        check_token_ids(tokens, self.config.vocab_size)

    def _forward(self, params: dict, layers: Any, tokens: jax.Array, ctx: Context):
        """Embeddings -> every layer (scanned) -> head: ``(logits, layers, taps)``. The array
        fields of ``ctx`` carry a leading layer axis. ``taps`` (``ctx.collect``; else ``None``):
        stacked over layers, ``"input"`` (the residual stream entering each layer) and the
        block's own taps (Hope: ``"cms"``, its CMS's input), ``[L, B, T, D]`` each; with
        ``ctx.cache`` also the blocks' ``"cms_cache"`` and ``"final"``, the stream leaving the
        last layer (``[B, T, D]``), as constants."""
        x = params["embed"][tokens]
        block = self.block

        def layer(x, inp):
            p, s, ctx_l = inp
            if ctx.collect:
                y, s, taps = block(p, s, x, ctx_l)
                return y, (s, {"input": x, **taps})
            y, s = block(p, s, x, ctx_l)
            return y, (s, None)

        x, (layers, taps) = jax.lax.scan(layer, x, (params["layers"], layers, ctx))
        if ctx.cache:  # the stream leaving the last layer: where the online error pass starts
            taps["final"] = jax.lax.stop_gradient(x)
        x = rms_norm(x, params["final_norm"], self.config.norm_eps)
        return dense(x, params["head"], self.config.compute_dtype), layers, taps

    @staticmethod
    def _outputs(logits, taps, collect: bool):
        """What a run returns per token: the logits, or with ``collect`` ``(logits, inputs)``,
        the layers' inputs with time on axis 1 as the logits (``[B, T, L, D]``)."""
        return (logits, jnp.moveaxis(taps["input"], 0, 2)) if collect else logits

    def _run(self, params: dict, state: Any, tokens: jax.Array, parallel: bool, collect=False):
        self._check_tokens(tokens)
        if self.ntp:
            if not parallel:
                return self._stream_learning(params, state, tokens)
            return self._parallel_learning(params, state, tokens, collect)
        ctx = Context(parallel=parallel, collect=collect)
        logits, layers, taps = self._forward(params, state.layers, tokens, ctx)
        return self._outputs(logits, taps, collect), LMState(layers)

    # --- CMS levels that learn from the next-token loss ------------------------------------------
    def output_errors(
        self,
        params: dict,
        layers: Any,
        tokens: jax.Array,
        *,
        cut: int = 0,
        collect=False,
        through_mixer: bool = True,
        mixed=None,
    ):
        """Every live CMS level's output error for ``tokens: [B, n C]`` (whole CMS chunks) run
        from ``layers`` (every layer's state, stacked): the gradient of the chunks' next-token
        loss (per sample and chunk, the mean over the chunk's ``C - 1`` inner pairs) with respect
        to each level's output, through zero probes added to the outputs.

        ``cut``: block the gradient between blocks of ``cut`` tokens (the teach signal's first
        pass: an error then comes from its own chunk's targets only); ``collect``: as
        `_forward`; ``through_mixer=False``: the gradient passes the sequence mixers by (see
        `Context`); ``mixed``: what every layer's mixer added to the stream (``[L, B, T, D]``,
        a constant), used instead of running the mixers (``Context.mixed``). Returns
        ``(errors, (logits, layers, taps))``: ``errors`` per CMS level ``[L, B, T, D]``
        (``None`` for frozen levels), then what the forward gave."""
        c = self.config
        b, t = tokens.shape
        probes = tuple(
            jnp.zeros((c.n_layers, b, t, c.d_model), jnp.float32) if period else None
            for period in c.cms.periods
        )

        def loss(probes):
            ctx = Context(
                cut=cut, collect=collect, through_mixer=through_mixer, probes=probes, mixed=mixed
            )
            logits, new, taps = self._forward(params, layers, tokens, ctx)
            return self._chunks_loss(logits, tokens), (logits, new, taps)

        return jax.grad(loss, has_aux=True)(probes)

    def _chunks_loss(self, logits: jax.Array, tokens: jax.Array) -> jax.Array:
        """What the CMS levels' errors are the gradient of: the next-token loss of whole CMS
        chunks, per sample and chunk the mean over the chunk's ``C - 1`` inner pairs, summed."""
        c = self.config.cms.chunk
        inner = (jnp.arange(tokens.shape[1] - 1) % c != c - 1).astype(jnp.float32)
        return jnp.sum(token_nll(logits, tokens) * inner[None]) / (c - 1)

    def _online_sweep(self, params: dict, layers: Any, tokens: jax.Array, taps: dict) -> Any:
        """The online signal's error pass (``cms.teach_path="residual"``) from one chunk's
        forward (its ``taps`` with ``Context.cache``): the chunk loss's gradient at the stream
        leaving the last layer, then back through the layers, each CMS's levels taking their
        steps on the way (`ContinuumMemory.sweep`; the mixers' outputs are constants). Returns
        every layer's CMS state after the chunk."""
        sg, eps = jax.lax.stop_gradient, self.config.norm_eps
        norm, head = sg(params["final_norm"]), sg(params["head"])
        dt = self.config.compute_dtype
        d = jax.grad(lambda x: self._chunks_loss(dense(rms_norm(x, norm, eps), head, dt), tokens))(
            taps["final"]
        )

        def layer(d, inp):
            return self.cms.sweep(*inp, d)

        inputs = (params["layers"]["cms"], layers["cms"], taps["cms_cache"])
        return jax.lax.scan(layer, d, inputs, reverse=True)[1]

    def _learning_chunk(self, params: dict, layers: Any, first: Any, tokens: jax.Array, collect):
        """Whole CMS chunks ``tokens: [B, n C]`` from a chunk start (every chunk at once with
        Teach; one with NextToken): the levels' output errors, then the levels learn from them
        (see the module docstring). ``first``: Teach's first-pass state (its CMS at the
        sequence-start weights). Returns ``(outputs, layers, first)``."""
        c = self.config
        if self.teach:
            sg = jax.lax.stop_gradient
            # every input enters without a tangent (the errors are constants), so the outer
            # gradient's trace passes this pass by instead of differentiating it and pruning after
            errors, (_, new_first, _) = self.output_errors(
                sg(params),
                sg(first),
                tokens,
                cut=c.cms.chunk,
                through_mixer=c.cms.teach_path == "network",
            )
            ctx = Context(collect=collect, errors=sg(errors), starts=first["cms"].params)
            logits, layers, taps = self._forward(params, layers, tokens, ctx)
            return self._outputs(logits, taps, collect), layers, sg(new_first)
        if isinstance(self.cms.signal, Online) and c.cms.teach_path == "residual":
            # one forward; the error pass runs backward from its cache
            ctx = Context(collect=True, cache=True)
            logits, layers, taps = self._forward(params, layers, tokens, ctx)
            cms = self._online_sweep(params, layers, tokens, taps)
            return self._outputs(logits, taps, collect), {**layers, "cms": cms}, first
        if isinstance(self.cms.signal, Online):  # errors through the mixers: a second pass
            sg = jax.lax.stop_gradient
            logits, new, taps = self._forward(params, layers, tokens, Context(collect=True))
            errors, _ = self.output_errors(sg(params), sg(layers), tokens)
            errors, layers = sg(errors), new
        else:
            errors, (logits, layers, taps) = self.output_errors(
                params, layers, tokens, collect=True
            )
        learn = jax.vmap(self.cms.learn)  # over layers: each CMS re-runs on the inputs it read
        cms = learn(params["layers"]["cms"], layers["cms"], taps["cms"], errors)
        return self._outputs(logits, taps, collect), {**layers, "cms": cms}, first

    def _parallel_learning(self, params: dict, state: LMState, tokens: jax.Array, collect=False):
        c = self.config.cms.chunk
        b = tokens.shape[0]

        def learn(carry, tc):
            out, layers, first = self._learning_chunk(params, *carry, tc, collect)
            return (layers, first), out

        def tail(carry, tc):  # an unfinished chunk: the CMS waits for its end (streaming)
            logits, layers, taps = self._forward(params, carry[0], tc, Context(collect=collect))
            return (layers, carry[1]), self._outputs(logits, taps, collect)

        res = scan_chunks(
            learn,
            (state.layers, state.teach),
            (tokens,),
            c,
            axis=1,
            tail_fn=tail,
            whole=self.teach,
            # recompute a chunk in the backward pass: NextToken's second-order chunks, and
            # Online's with attention, whose saved activations per chunk grow with the sequence
            # (D99: 9.4 against 22.3 GiB for Hope-Attention's step at 8,192 tokens, 2% slower
            # at 512); Teach runs its chunks as one (``whole``)
            remat=isinstance(self.cms.signal, NextToken)
            or (isinstance(self.cms.signal, Online) and self.config.attends),
            # a few cheap Online chunks run unrolled (D103); NextToken's second-order chunks
            # would multiply the compile (hope_paper's golden test: 21 -> 108 s)
            unroll_upto=UNROLL_UPTO if isinstance(self.cms.signal, Online) else 0,
        )
        (layers, teach), start, r = res.carry, res.boundary[0], res.tail
        buf = jnp.zeros((b, c), jnp.int32)
        if r:
            buf = buf.at[:, :r].set(tokens[:, -r:].astype(jnp.int32))
        return res.outputs, LMState(layers, start, buf, jnp.asarray(r, jnp.int32), teach)

    def _stream_learning(self, params: dict, state: LMState, tokens: jax.Array):
        c = self.config.cms.chunk

        def token(st: LMState, tok):
            ctx = Context(parallel=False)
            logits, layers, _ = self._forward(params, st.layers, tok[:, None], ctx)
            buf = st.buf.at[:, st.off].set(tok.astype(jnp.int32))
            off = st.off + 1

            def complete(_):
                _, new, first = self._learning_chunk(params, st.start, st.teach, buf, False)
                return new, new, first

            keep = lambda _: (layers, st.start, st.teach)
            layers, start, teach = jax.lax.cond(off == c, complete, keep, None)
            buf = jnp.where(off == c, jnp.zeros_like(buf), buf)  # a new chunk starts empty
            return LMState(layers, start, buf, off % c, teach), logits[:, 0]

        state, logits = jax.lax.scan(token, state, tokens.T)
        return jnp.swapaxes(logits, 0, 1), state

    def step(self, params: dict, state: Any, tokens: jax.Array, *, parallel: bool = False):
        """Streaming: process ``tokens: [B, C]`` continuing ``state`` (any ``C``, any cut points):
        ``(logits [B, C, V], state)``. Chunked memories run token by token here so that their
        chunk boundaries stay where the parallel form puts them.

        ``parallel=True``: the chunk-parallel form (much faster on long pieces), equal to the
        token-by-token one when ``state`` is `at_boundary` (every `boundary` tokens
        of a stream); the piece itself may end anywhere."""
        return self._run(params, state, tokens, parallel=parallel)

    @property
    def boundary(self) -> int:
        """Every how many tokens from its start a stream is at a boundary (see
        `at_boundary`): the least common multiple of the memories' chunks and the CMS's
        live periods (1 for Transformer++)."""
        c = self.config
        sizes = [c.titans.chunk] if c.kind in ("titans", "selfmod", "hope") else []
        if c.kind in ("selfmod", "hope"):
            sizes.append(c.selfmod.chunk)
        if c.has_cms:
            sizes += [p for p in c.cms.periods if p]
        return math.lcm(1, *sizes)

    def at_boundary(self, state: LMState) -> bool:
        """Whether ``step(..., parallel=True)`` continues ``state`` exactly: every chunked memory
        at the start of a chunk and the CMS at a multiple of its live periods (a host-side
        check). True every `boundary` tokens of a stream; after resetting only one kind of
        memory their chunks may never line up again (then only the token-by-token form is
        exact)."""
        layers = state.layers
        streams = jax.tree.leaves(layers, is_leaf=lambda x: isinstance(x, StreamState))
        ok = all(
            bool(np.all(np.asarray(m.offset) == 0)) for m in streams if isinstance(m, StreamState)
        )
        if self.config.has_cms:
            live = [p for p in self.config.cms.periods if p]
            ok = ok and bool(np.all(np.asarray(layers["cms"].pos) % math.lcm(1, *live) == 0))
        return ok and (state.off is None or int(state.off) == 0)

    def apply(self, params: dict, tokens: jax.Array, state: Any = None):
        """The training form: a whole sequence from a fresh state, chunk-parallel. With a carried
        ``state`` it continues the stream exactly (as `step`)."""
        if state is not None:
            return self.step(params, state, tokens)
        model = self._sized(tokens)
        logits, state = model._run(params, model.init_state(params, tokens.shape[0]), tokens, True)
        return logits, self._full_capacity(state)

    def _sized(self, tokens: jax.Array) -> LanguageModel:
        """The model to run ``tokens`` from a fresh state with: attention memories sized to the
        sequence (``max_len = T``, ``T + attn_window - 1`` with a window: the ring buffer's rule)
        instead of ``max_len`` slots, most of them empty, that every
        query would otherwise score and mask (6x a Transformer++ training step at ``T = 512``,
        ``max_len = 4096``). Same values: a fresh sequence fills slots ``0 .. T - 1`` either way."""
        self._check_tokens(tokens)
        c = self.config
        need = tokens.shape[1] + (c.attn_window - 1 if c.attn_window else 0)  # the ring's rule
        if c.attends and need < c.max_len:
            return LanguageModel(c.replace(max_len=need))
        return self

    def _full_capacity(self, state: Any) -> Any:
        """``state`` with every attention memory padded with empty slots to ``max_len`` (what
        `init_state` and `step` use), so a sequence run by `apply` continues
        with `step` exactly."""
        cap = self.config.max_len

        def pad(s):
            if not isinstance(s, SoftmaxState) or s.pos.shape[-1] == cap:
                return s
            more = cap - s.pos.shape[-1]
            wide = lambda a: jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, more), (0, 0)])
            pos = jnp.pad(s.pos, [(0, 0)] * (s.pos.ndim - 1) + [(0, more)], constant_values=-1)
            return s._replace(keys=wide(s.keys), values=wide(s.values), pos=pos)

        return jax.tree.map(pad, state, is_leaf=lambda s: isinstance(s, SoftmaxState))

    def apply_reference(self, params: dict, tokens: jax.Array, state: Any = None):
        """Slow twin of `apply`: one token at a time through `step` (a scan)."""
        self._check_tokens(tokens)
        if state is None:
            state = self.init_state(params, tokens.shape[0])

        def one(state, tok):
            logits, state = self.step(params, state, tok[:, None])
            return state, logits[:, 0]

        state, logits = jax.lax.scan(one, state, tokens.T)
        return jnp.swapaxes(logits, 0, 1), state

    def layer_inputs(self, params: dict, tokens: jax.Array, *, with_logits: bool = False):
        """What each layer reads in the training form (`apply` from fresh memories): the
        residual stream entering every layer, ``[n_layers, B, T, D]`` (with a next-token CMS
        signal, the pass whose logits `apply` returns). ``with_logits``: also those
        logits, ``(logits, inputs)``, from the same pass. For looking inside a model: feed
        ``inputs[l]`` to layer ``l``'s sequence layer, e.g.
        ``SelfModifyingTitans.generated``, to see what its memories generate."""
        model = self._sized(tokens)
        state = model.init_state(params, tokens.shape[0])
        (logits, inputs), _ = model._run(params, state, tokens, parallel=True, collect=True)
        inputs = jnp.moveaxis(inputs, 2, 0)
        return (logits, inputs) if with_logits else inputs

    def loss(self, params: dict, tokens: jax.Array) -> jax.Array:
        """Mean next-token cross-entropy (nats) of ``tokens: [B, T]``."""
        logits, _ = self.apply(params, tokens)
        return jnp.mean(token_nll(logits, tokens))

    def num_params(self, params: dict) -> int:
        return sum(int(a.size) for a in jax.tree.leaves(params))


def check_token_ids(tokens, vocab_size: int) -> None:
    """Raise a ``ValueError`` when concrete ``tokens`` hold an id outside ``[0, vocab_size)``
    (the embedding lookup would clamp it silently: wrong results, no error). Traced tokens
    (inside ``jit``) are not checked: check them where they are made (data pipeline, CLI)."""
    if isinstance(tokens, jax.core.Tracer) or tokens.size == 0:
        return
    host = np.asarray(tokens)  # on the host: inside a trace, jnp.min would be traced too
    lo, hi = int(host.min()), int(host.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"token ids must be in [0, vocab_size={vocab_size}); got ids from {lo} to {hi}. "
            "Use the model's own tokenizer (or a model config with a larger vocab_size)."
        )


def sample_token(logits: jax.Array, key, *, temperature=1.0, top_k: int = 0, top_p=1.0):
    """One token per row of ``logits: [B, V]`` (float32 softmax): ``int32 [B]``, the one sampler
    of the CLI, the training loop's :func:`~nested_jax.train.sample` and sessions.

    ``temperature=0``: greedy (the most likely token); otherwise a draw from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens (``0``: all)
    and to the smallest set holding ``top_p`` of the probability (``1``: all)."""
    lg = logits.astype(jnp.float32)
    if temperature == 0:
        return jnp.argmax(lg, axis=-1).astype(jnp.int32)
    lg = lg / temperature
    if top_k:
        kth = jax.lax.top_k(lg, top_k)[0][..., -1:]
        lg = jnp.where(lg < kth, -jnp.inf, lg)
    if top_p < 1:
        order = jnp.argsort(-lg, axis=-1)
        probs = jax.nn.softmax(jnp.take_along_axis(lg, order, axis=-1), axis=-1)
        keep_sorted = jnp.cumsum(probs, axis=-1) - probs < top_p  # always keeps the first
        rows = jnp.arange(lg.shape[0])[:, None]
        keep = jnp.zeros_like(keep_sorted).at[rows, order].set(keep_sorted)
        lg = jnp.where(keep, lg, -jnp.inf)
    return jax.random.categorical(key, lg, axis=-1).astype(jnp.int32)


def token_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Next-token negative log-likelihood (nats) of every position but the last:
    ``logits: [B, T, V]`` (float32 softmax), ``tokens: [B, T]`` -> ``[B, T - 1]``."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def count_params(config: ModelConfig) -> int:
    """Parameters of a model with ``config`` (shapes only: nothing is initialised).

    Examples:
        >>> from nested_jax.models import get_config
        >>> count_params(get_config("tiny")) > 0
        True
    """
    model = LanguageModel(config)
    return model.num_params(jax.eval_shape(model.init, jax.random.key(0)))


def matched_d_ff(config: ModelConfig, target_params: int, *, multiple: int = 1) -> int:
    """The MLP width ``d_ff`` (a multiple of ``multiple``) whose model has the parameter count
    nearest ``target_params`` (ties: the smaller width); every other field of ``config`` kept.

    Parameters grow linearly in ``d_ff`` (``a + b d_ff``), so two shape-only counts solve it.
    How baselines are matched to Hope (benchmarks, experiments)."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}.")
    lo, hi = multiple, 2 * multiple
    p_lo = count_params(dataclasses.replace(config, d_ff=lo))
    slope = (count_params(dataclasses.replace(config, d_ff=hi)) - p_lo) / (hi - lo)
    if slope <= 0:
        raise ValueError(f"{config.kind!r} has no parameters that grow with d_ff.")
    exact = lo + (target_params - p_lo) / slope
    below = max(multiple, int(exact // multiple) * multiple)
    above = below + multiple
    p = lambda f: abs(p_lo + slope * (f - lo) - target_params)
    return below if p(below) <= p(above) else above
