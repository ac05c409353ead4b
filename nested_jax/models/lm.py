"""Language-model wrapper and the one API every model shares (issue 4).

``model = LanguageModel(config)``;
``params = model.init(key)``; ``state = model.init_state(params, batch_size)``;
``logits, state = model.apply(params, tokens, state=None)`` (the parallel/training form);
``logits, state = model.step(params, state, tokens_chunk)`` (streaming with carried state);
``model.apply_reference(params, tokens)`` (the slow twin: one token at a time through ``step``);
``model.loss(params, tokens)`` (next-token cross-entropy);
``state = model.next_sequence(params, state)`` (a fresh context; CMS weights kept by option).

Layers are stacked and run under ``lax.scan`` (compile time independent of depth); every layer's
state (its memories) is stacked the same way.

CMS with the ``"ntp"`` signal (Hope, Hope-Attention; DESIGN §4): the forward is a scan over chunks
of ``C = config.cms.chunk`` tokens. For chunk ``c`` the whole network runs (chunk-parallel, from
the memories' state at the chunk start) with the CMS weights ``theta_c``; the gradient of that
chunk's next-token loss (the mean over the ``C - 1`` pairs inside the chunk, per sample) with
respect to every layer's CMS weights is the update term ``-lr * g`` that the CMS commits at the
chunk's end, so it acts from chunk ``c + 1`` on: causal, and outputs never see their own targets.
The outer gradient differentiates through those inner gradients (second order) unless
``first_order``. Streaming buffers the current chunk's tokens and the state at its start, and
recomputes the chunk when it completes, so any cut gives the parallel result.

CMS with the ``"teach"`` signal (two passes, DESIGN §10): pass 1 runs the whole sequence once in
parallel with the CMS at its sequence-start weights and zero probes on every live level's output;
the gradient of the chunks' next-token losses (per sample, the mean over each chunk's ``C - 1``
inner pairs, as ``"ntp"``) with respect to the probes is each level's output error ``delta_t``.
Gradients are blocked between CMS chunks inside the sequence layers (the memories' carried state,
the convolution, attention across chunks), so ``delta_t`` of chunk ``c`` comes from chunk ``c``'s
targets only: causal. Pass 2 is the ordinary forward in which every level learns chunk by chunk
from those errors: a GD step on ``1/2 ||MLP_theta(n_t) - (MLP_theta_s(n_t) - delta_t)||^2`` at its
current weights (``theta_s``: its sequence-start weights), and the outer gradient flows through
pass 2 only (the errors are constants). For the first chunk it equals ``"ntp"``; later chunks use
errors from the sequence-start CMS weights, and the L2 target stops a level once it has moved its
output by ``-delta`` (the dot-product objective alone grew the weights without bound). Streaming keeps
pass 1's state beside pass 2's and runs both passes on each chunk as it completes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nested_jax.levels import scan_chunks
from nested_jax.memory import SoftmaxState, StreamState
from nested_jax.models.cms import ContinuumMemory
from nested_jax.models.config import ModelConfig
from nested_jax.models.hope import HopeBlock
from nested_jax.models.layers import rms_norm
from nested_jax.models.self_modifying import SelfModifyingBlock
from nested_jax.models.titans import TitansBlock
from nested_jax.models.transformer import TransformerBlock

__all__ = ["LMState", "LanguageModel", "count_params", "matched_d_ff", "token_nll"]


def _given(**kw):
    """The keyword arguments that are not ``None``."""
    return {k: v for k, v in kw.items() if v is not None}


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
    start); ``None`` otherwise."""

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
    def ntp(self) -> bool:
        """Whether the CMS learns from the next-token loss (``"ntp"`` or ``"teach"``: the LM
        drives its updates and the state's chunk fields are used)."""
        c = self.config
        return c.has_cms and c.cms.signal in ("ntp", "teach") and c.cms.chunk > 0

    @property
    def teach(self) -> bool:
        return self.ntp and self.config.cms.signal == "teach"

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

    def _forward(
        self,
        params: dict,
        layers: Any,
        tokens: jax.Array,
        parallel: bool,
        cut=0,
        probes=None,
        teach=None,
        collect: bool = False,
    ):
        """Embeddings -> every layer (scanned) -> head; ``(logits, layers)``. ``cut``, ``probes``,
        ``teach`` (per CMS level, stacked over layers): the teach signal's passes (Hope blocks).
        ``collect``: the logits become ``(logits, inputs)``, ``inputs [B, T, L, D]`` the residual
        stream entering each layer (:meth:`layer_inputs`)."""
        x = params["embed"][tokens]
        block = self.block
        extra = {}
        if cut:
            extra["cut"] = cut

        def layer(x, inp):
            p, s, probe, tc = inp
            y, s = block(p, s, x, parallel=parallel, **extra, **_given(probe=probe, teach=tc))
            return y, (s, x) if collect else s

        x, out = jax.lax.scan(layer, x, (params["layers"], layers, probes, teach))
        x = rms_norm(x, params["final_norm"], self.config.norm_eps)
        if collect:  # the inputs with time on axis 1, as the logits: [B, T, L, D]
            layers, inputs = out
            return (x @ params["head"], jnp.moveaxis(inputs, 0, 2)), layers
        return x @ params["head"], out

    def _run(self, params: dict, state: Any, tokens: jax.Array, parallel: bool, collect=False):
        self._check_tokens(tokens)
        if self.ntp:
            if not parallel:
                return self._ntp_stream(params, state, tokens)
            return self._ntp_parallel(params, state, tokens, collect)
        logits, layers = self._forward(params, state.layers, tokens, parallel, collect=collect)
        return logits, LMState(layers)

    # --- CMS driven by the next-token loss -------------------------------------------------------
    def _teach_signal(self, params: dict, teach: Any, tokens: jax.Array):
        """Pass 1 of the teach signal over whole CMS chunks ``tokens: [B, n C]`` from the first
        pass's state ``teach``: ``(errors, teach)``, the errors per CMS level stacked over layers
        (``[L, B, n C, D]``, ``None`` for frozen levels), both constants for the outer gradient."""
        c = self.config
        cms = ContinuumMemory(c)
        b, t = tokens.shape
        sg = jax.lax.stop_gradient
        # every input enters without a tangent (the outputs are constants anyway), so the outer
        # gradient's trace passes this pass by instead of differentiating it and pruning after
        params, teach = sg(params), sg(teach)
        zeros = tuple(
            jnp.zeros((c.n_layers, b, t, c.d_model), jnp.float32) if period else None
            for period in cms.periods
        )
        inner = (jnp.arange(t - 1) % c.cms.chunk != c.cms.chunk - 1).astype(jnp.float32)

        def loss(probes):
            logits, new = self._forward(params, teach, tokens, True, c.cms.chunk, probes=probes)
            nll = token_nll(logits, tokens)
            return jnp.sum(nll * inner[None]) / (c.cms.chunk - 1), new  # per sample, chunk: mean

        errors, new = jax.grad(loss, has_aux=True)(zeros)
        return sg(errors), sg(new)

    def _teach_chunks(
        self, params: dict, layers: Any, teach: Any, tokens: jax.Array, collect=False
    ):
        """Both passes over whole CMS chunks: ``(logits, layers, teach)``."""
        starts = teach["cms"].params  # the sequence-start CMS weights (pass 1 never updates them)
        errors, teach = self._teach_signal(params, teach, tokens)
        logits, layers = self._forward(
            params, layers, tokens, True, teach=(errors, starts), collect=collect
        )
        return logits, layers, teach

    def _ntp_chunk(self, params: dict, layers: Any, tokens: jax.Array, collect=False):
        """One complete CMS chunk ``tokens: [B, C]`` from a chunk start: ``(logits, layers)`` with
        the CMS update committed."""
        cms = ContinuumMemory(self.config)

        def chunk_loss(fast):
            ls = {**layers, "cms": layers["cms"]._replace(params=fast)}
            out, new = self._forward(params, ls, tokens, parallel=True, collect=collect)
            nll = token_nll(out[0] if collect else out, tokens)
            return jnp.sum(jnp.mean(nll, axis=1)), (out, new)  # per-sample mean

        g, (logits, new) = jax.grad(chunk_loss, has_aux=True)(layers["cms"].params)
        lrs = jax.vmap(cms.rates)(params["layers"]["cms"])  # [L, levels]
        scale = lambda a, lr: -lr.reshape(lr.shape + (1,) * (a.ndim - 1)) * a
        live = set(cms.live)
        inc = tuple(
            jax.tree.map(lambda a, i=i: scale(a, lrs[:, i]), gi) if i in live else None
            for i, gi in enumerate(g)
        )

        def commit(p, st, inc):
            return cms.commit(p, st, inc, tokens.shape[1])

        new_cms = jax.vmap(commit)(params["layers"]["cms"], new["cms"], inc)
        return logits, {**new, "cms": new_cms}

    def _ntp_parallel(self, params: dict, state: LMState, tokens: jax.Array, collect=False):
        c = self.config.cms.chunk
        b = tokens.shape[0]

        def ntp_chunk(carry, tc):  # one chunk, its update committed
            layers, teach = carry
            logits, layers = self._ntp_chunk(params, layers, tc, collect)
            return (layers, teach), logits

        def teach_chunks(carry, tc):  # every full chunk at once (the teach signal's two passes)
            logits, layers, teach = self._teach_chunks(params, *carry, tc, collect)
            return (layers, teach), logits

        def tail(carry, tc):  # an unfinished chunk: the CMS waits for its end (streaming)
            logits, layers = self._forward(params, carry[0], tc, parallel=True, collect=collect)
            return (layers, carry[1]), logits

        res = scan_chunks(
            teach_chunks if self.teach else ntp_chunk,
            (state.layers, state.teach),
            (tokens,),
            c,
            axis=1,
            tail_fn=tail,
            whole=self.teach,
            remat=not self.teach,
        )
        (layers, teach), start, r = res.carry, res.boundary[0], res.tail
        buf = jnp.zeros((b, c), jnp.int32)
        if r:
            buf = buf.at[:, :r].set(tokens[:, -r:].astype(jnp.int32))
        return res.outputs, LMState(layers, start, buf, jnp.asarray(r, jnp.int32), teach)

    def _ntp_stream(self, params: dict, state: LMState, tokens: jax.Array):
        c = self.config.cms.chunk

        def token(st: LMState, tok):
            logits, layers = self._forward(params, st.layers, tok[:, None], parallel=False)
            buf = st.buf.at[:, st.off].set(tok.astype(jnp.int32))
            off = st.off + 1

            def complete(_):
                if self.teach:
                    _, new, teach = self._teach_chunks(params, st.start, st.teach, buf)
                    return new, new, teach
                _, new = self._ntp_chunk(params, st.start, buf)
                return new, new, st.teach

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
        token-by-token one when ``state`` is :meth:`at_boundary` (every :attr:`boundary` tokens
        of a stream); the piece itself may end anywhere."""
        return self._run(params, state, tokens, parallel=parallel)

    @property
    def boundary(self) -> int:
        """Every how many tokens from its start a stream is at a boundary (see
        :meth:`at_boundary`): the least common multiple of the memories' chunks and the CMS's
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
        check). True every :attr:`boundary` tokens of a stream; after resetting only one kind of
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
        ``state`` it continues the stream exactly (as :meth:`step`)."""
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
        :meth:`init_state` and :meth:`step` use), so a sequence run by :meth:`apply` continues
        with :meth:`step` exactly."""
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
        """Slow twin of :meth:`apply`: one token at a time through :meth:`step` (a scan)."""
        self._check_tokens(tokens)
        if state is None:
            state = self.init_state(params, tokens.shape[0])

        def one(state, tok):
            logits, state = self.step(params, state, tok[:, None])
            return state, logits[:, 0]

        state, logits = jax.lax.scan(one, state, tokens.T)
        return jnp.swapaxes(logits, 0, 1), state

    def layer_inputs(self, params: dict, tokens: jax.Array, *, with_logits: bool = False):
        """What each layer reads in the training form (:meth:`apply` from fresh memories): the
        residual stream entering every layer, ``[n_layers, B, T, D]`` (with a next-token CMS
        signal, the pass whose logits :meth:`apply` returns). ``with_logits``: also those
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


def token_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Next-token negative log-likelihood (nats) of every position but the last:
    ``logits: [B, T, V]`` (float32 softmax), ``tokens: [B, T]`` -> ``[B, T - 1]``."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def count_params(config: ModelConfig) -> int:
    """Parameters of a model with ``config`` (shapes only: nothing is initialised).

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
