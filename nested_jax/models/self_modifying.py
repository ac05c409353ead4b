"""Self-modifying Titans (paper §5.2-§5.3, arXiv §8): a sequence layer whose projections are memories.

Per layer and head (``d`` = head dimension), from ``h = RMSNorm(x)``:

* ``x_t = silu(conv4(h W_in))`` (the memories' input) and, unless ``sm_adaptive_q``, a fixed query
  ``q_t = l2norm(silu(conv4(h W_q)))``;
* ``k_t = l2norm(M_k(x_t))``, ``v_t = M_v(x_t)``, (``q_t = l2norm(M_q(x_t))`` by flag),
  ``eta_t = eta_max sigmoid(M_eta(x_t) + b_eta)``, ``alpha_t = sigmoid(M_alpha(x_t) + b_alpha)``,
  where every ``M`` is a `MLPMemory` (residual 2-layer MLP; ``M_eta``,
  ``M_alpha`` scalar-output, no residual);
* every memory (the main one included) writes ``(k_t, v_t)`` with its *self-generated* target
  ``v_hat = M(v_t)`` (``MLPMemory(self_target=True)``; a fixed target for the inner gradient,
  differentiable for the outer one), L2 objective, DGD with
  retention ``alpha_t`` and rate ``eta_t`` plus momentum (``sm_momentum``);
* the output ``y_t = M_mem(q_t)`` with the per-token main memory (read before write), then
  ``x + W_o (RMSNorm(y) * silu(h W_g))``.

Chunking (spec §5.3, with the causal index of §5.4.1): the k / v / eta / alpha (/ q) memories
generate a whole chunk of ``sm_chunk`` tokens from their state at the chunk's start (its boundary)
and then take that chunk's writes, gradients at the boundary; the main memory runs its own chunk
size ``titans.chunk``. Chunk ``c`` therefore uses only tokens before it. Memories of the same
shape are stacked along the head axis (k, v, q share one kernel call; eta, alpha another). With
one chunk size for every memory (the registry's defaults) the main memory joins that stack: one
memory call per chunk writes all of them and reads only the main heads (`SelfModifyingTitans.fused`,
decisions D96). ``selfmod.gates="linear"`` (the defaults) takes ``eta_t, alpha_t`` from a learned
linear map per head instead of the two scalar memories (decisions D97).

Streaming keeps both boundaries (a `StreamState` per group), so any cut
of the sequence gives the chunk-parallel result.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from nested_jax.levels import UNROLL_UPTO, scan_chunks
from nested_jax.memory import (
    DGD,
    GD,
    AbstractMemory,
    DotProduct,
    LinearMemory,
    MLPMemory,
    Momentum,
    Rates,
    StreamState,
    advance_stream,
    stable_step_norm,
)
from nested_jax.models.config import ModelConfig
from nested_jax.models.layers import (
    Context,
    causal_conv,
    dense_init,
    l2_normalize,
    rms_norm,
    swiglu,
    swiglu_init,
)
from nested_jax.precision import dense

__all__ = ["SelfModifyingBlock", "SelfModifyingTitans"]


@dataclasses.dataclass(frozen=True)
class SelfModifyingTitans:
    """The self-modifying Titans sequence layer (the "mixer"; Hope adds CMS after it).

    Params: ``norm``, ``w_in [D, 2D]`` (memory input and fixed q), ``conv``, ``proj``
    (``MLPParams`` of the k, v (, q) memories, stacked on the head axis), ``gate`` (eta and alpha
    memories), ``b_gate [2H]``, ``main``, ``out_norm``, ``w_gate_out``, ``wo``. Every memory's
    initial state is a parameter, so the outer loss meta-learns it through the inner updates.

    State: ``{"gen": StreamState((proj, gate)), "main": StreamState, "conv": [B, K-1, 2D]}``.
    """

    config: ModelConfig

    # --- the memories ----------------------------------------------------------------------------
    @property
    def _rule(self):
        sm = self.config.selfmod
        if sm.rule == "gd":  # the "w/o DGD" ablation
            return GD() if sm.momentum is None else Momentum(beta=sm.momentum)
        return DGD(beta=sm.momentum)

    @property
    def n_proj(self) -> int:
        return 3 if self.config.selfmod.adaptive_q else 2

    @property
    def hidden(self) -> int:
        return self.config.titans.expansion * self.config.head_dim

    def _step_norm(self, chunk: int) -> float:
        c = self.config
        if not c.titans.inner_norm:
            return 0.0
        return stable_step_norm(chunk, c.selfmod.momentum, c.titans.step_bound)

    @property
    def proj_memory(self) -> MLPMemory:
        nu = self._step_norm(self.config.selfmod.chunk)
        return self._memory(nu, self_target=self.config.selfmod.self_values)

    @property
    def gate_memory(self) -> MLPMemory:
        nu = self._step_norm(self.config.selfmod.chunk)
        return self._memory(nu, self_target=True, residual=False)

    def _memory(self, step_norm: float, **kw) -> MLPMemory:
        tg = self.config.selfmod.target_grad
        return MLPMemory(self.hidden, rule=self._rule, step_norm=step_norm, target_grad=tg, **kw)

    @property
    def main_memory(self) -> AbstractMemory:
        if self.config.selfmod.main == "linear":
            return LinearMemory(objective=DotProduct(), rule=GD())
        nu = self._step_norm(self.config.titans.chunk)
        return self._memory(nu, self_target=self.config.selfmod.self_values)

    # --- params and state ------------------------------------------------------------------------
    def init(self, key) -> dict:
        c = self.config
        d, h, hd = c.d_model, c.n_heads, c.head_dim
        ks = jax.random.split(key, 7)
        conv = jnp.zeros((c.titans.conv_width, 2 * d), jnp.float32).at[-1].set(1.0)
        main_p = self.main_memory.init_params(ks[3], heads=h, d_k=hd, d_v=hd)
        return {
            "norm": jnp.ones((d,), jnp.float32),
            "w_in": dense_init(ks[0], (d, 2 * d)),
            "conv": conv,
            "proj": self.proj_memory.init_params(ks[1], heads=self.n_proj * h, d_k=hd, d_v=hd),
            **self._gate_params(ks[2]),
            # eta = eta_max * sigmoid(-4.6) ~ 0.01 eta_max (the MLP memories diverge above about
            # 2 (1 - beta) / (0.35 hidden), see memory/mlp.py); alpha = sigmoid(4.6) ~ 0.99
            "b_gate": jnp.concatenate([jnp.full((h,), -4.6), jnp.full((h,), 4.6)]).astype(
                jnp.float32
            ),
            "main": main_p,
            "out_norm": jnp.ones((d,), jnp.float32),
            "w_gate_out": dense_init(ks[4], (d, d)),
            "wo": dense_init(ks[5], (d, d)),
        }

    def _gate_params(self, key) -> dict:
        c = self.config
        h, hd = c.n_heads, c.head_dim
        if c.selfmod.gates == "linear":  # [2H, d]: eta's and alpha's map per head
            return {"w_gates": 0.1 * jax.random.normal(key, (2 * h, hd), jnp.float32) / hd**0.5}
        return {"gate": self.gate_memory.init_params(key, heads=2 * h, d_k=hd, d_v=1)}

    @property
    def gates_learn(self) -> bool:
        """Whether the rates come from memories that learn in context (``selfmod.gates``)."""
        return self.config.selfmod.gates == "memory"

    @property
    def fused(self) -> bool:
        """Whether the chunk-parallel form runs the main memory and the k / v (/ q) memories as
        one memory call per chunk: they are the same memory (one chunk size, one rule, one step
        norm) writing the same ``(k_t, v_t)`` pairs with the same rates, so their states are
        stacked on the head axis (same values as running them one after the other)."""
        c = self.config
        return c.selfmod.adaptive and c.selfmod.main == "mlp" and c.selfmod.chunk == c.titans.chunk

    def init_state(self, params: dict, batch_size: int) -> dict:
        c = self.config
        gate = None
        if self.gates_learn:
            gate = self.gate_memory.init_state(params["gate"], batch_size)
        gen = (self.proj_memory.init_state(params["proj"], batch_size), gate)
        main = self.main_memory.init_state(params["main"], batch_size)
        return {
            "gen": StreamState(gen, gen, jnp.zeros([], jnp.int32)),
            "main": self.main_memory.init_stream(main),
            "conv": jnp.zeros((batch_size, c.titans.conv_width - 1, 2 * c.d_model), jnp.float32),
        }

    # --- generation: k, v, (q), eta, alpha from the memories' boundary state ---------------------
    def _generate(self, p: dict, gen, xm):
        """``xm: [B, H, C, d]`` -> ``(k, v, q | None, eta, alpha)`` in the memories' internal layout
        (``[B, H, C, d]``, rates ``[B, H, C]``), every value from the states ``gen``."""
        c = self.config
        h = c.n_heads
        proj, gate = gen
        pm, gm = self.proj_memory, self.gate_memory
        out = pm.apply_chunk(proj, jnp.concatenate([xm] * self.n_proj, axis=1))
        k = l2_normalize(out[:, :h])
        v = out[:, h : 2 * h]
        if c.selfmod.unit_values:  # breaks the value memory's squaring feedback (decisions D51)
            v = l2_normalize(v)
        q = l2_normalize(out[:, 2 * h :]) if c.selfmod.adaptive_q else None
        if self.gates_learn:
            g = gm.apply_chunk(gate, jnp.concatenate([xm, xm], axis=1))[..., 0]
        else:
            g = jnp.einsum("bhcd,hd->bhc", jnp.concatenate([xm, xm], axis=1), p["w_gates"])
        g = g + p["b_gate"][None, :, None]
        eta = c.titans.eta_max * jax.nn.sigmoid(g[:, :h])
        alpha = jax.nn.sigmoid(g[:, h:])
        if not c.selfmod.retention:  # the "w/o weight decay" ablation: every memory keeps all
            alpha = jnp.ones_like(alpha)
        return k, v, q, eta, alpha

    def _gen_write_chunk(self, gen, k, v, eta, alpha):
        """The generator memories take one chunk of writes (internal layout), gradients at ``gen``."""
        n = self.n_proj
        tile = lambda a, m: jnp.concatenate([a] * m, axis=1)
        beta = lambda a: jnp.full_like(a, 0.0 if self._rule.beta is None else self._rule.beta)
        proj, gate = gen
        pm, gm = self.proj_memory, self.gate_memory
        e, a = tile(eta, n), tile(alpha, n)
        proj = pm.write_chunk(proj, tile(k, n), tile(v, n), Rates(e, a, beta(e)))
        if self.gates_learn:
            e, a = tile(eta, 2), tile(alpha, 2)
            gate = gm.write_chunk(gate, tile(k, 2), tile(v, 2), Rates(e, a, beta(e)))
        return proj, gate

    def _gen_parallel(self, p, gen_stream: StreamState, xm, cut: int = 0):
        """Chunk-parallel generation over ``xm: [B, H, T, d]`` from a boundary (``cut``: see
        ``AbstractMemory.write_read``'s ``gradient_cut``)."""
        c = self.config

        def chunk(gen, xc):
            k, v, q, eta, alpha = self._generate(p, gen, xc)
            if c.selfmod.adaptive:
                gen = self._gen_write_chunk(gen, k, v, eta, alpha)
            parts = [k, v] + ([q] if q is not None else []) + [eta[..., None], alpha[..., None]]
            return gen, jnp.concatenate(parts, axis=-1)

        first_order = c.first_order and c.selfmod.adaptive
        res = scan_chunks(
            chunk,
            gen_stream.state,
            (xm,),
            c.selfmod.chunk,
            axis=2,
            remat=True,
            first_order=first_order,
            cut=cut,
            unroll_upto=UNROLL_UPTO,
        )
        stream = StreamState(res.carry, res.boundary, jnp.asarray(res.tail, jnp.int32))
        return stream, self._unpack(res.outputs)

    def _gen_stream(self, p, gen_stream: StreamState, xm):
        """Token-by-token generation (the slow twin; streaming), keeping the chunk boundaries."""
        c = self.config
        n = self.n_proj
        pm, gm = self.proj_memory, self.gate_memory
        beta = 0.0 if self._rule.beta is None else self._rule.beta

        def token(carry, xt):  # xt: [B, H, d]
            st, bnd, off = carry
            k, v, q, eta, alpha = self._generate(p, bnd, xt[:, :, None])
            if c.selfmod.adaptive:
                k1, v1, e1, a1 = k[:, :, 0], v[:, :, 0], eta[:, :, 0], alpha[:, :, 0]
                tile = lambda a, m: jnp.concatenate([a] * m, axis=1)
                proj = pm.write(
                    st[0], tile(k1, n), tile(v1, n), tile(e1, n), tile(a1, n), beta, at=bnd[0]
                )
                gate = st[1]
                if self.gates_learn:
                    gate = gm.write(
                        gate, tile(k1, 2), tile(v1, 2), tile(e1, 2), tile(a1, 2), beta, at=bnd[1]
                    )
                st = (proj, gate)
            parts = [k, v] + ([q] if q is not None else []) + [eta[..., None], alpha[..., None]]
            y = jnp.concatenate(parts, axis=-1)[:, :, 0]
            return advance_stream(st, bnd, off, c.selfmod.chunk), y

        carry, y = jax.lax.scan(token, tuple(gen_stream), jnp.moveaxis(xm, 2, 0))
        return StreamState(*carry), self._unpack(jnp.moveaxis(y, 0, 2))

    def _unpack(self, y):
        d = self.config.head_dim
        k, v = y[..., :d], y[..., d : 2 * d]
        q = y[..., 2 * d : 3 * d] if self.config.selfmod.adaptive_q else None
        return k, v, q, y[..., -2], y[..., -1]

    def _project(self, p: dict, state: dict, x: jax.Array, cut: int = 0):
        """``RMSNorm(x)`` and the memories' input and fixed query before their heads:
        ``(h, silu(conv4(h W_in)) [B, T, 2, H, d], conv state)``."""
        c = self.config
        b, t, _ = x.shape
        h = rms_norm(x, p["norm"], c.norm_eps)
        w_in = dense(h, p["w_in"], c.compute_dtype)
        a, conv_state = causal_conv(p["conv"], w_in, state["conv"], cut=cut)
        return h, jax.nn.silu(a).reshape(b, t, 2, c.n_heads, c.head_dim), conv_state

    def generated(self, p: dict, state: dict, x: jax.Array) -> dict:
        """What the layer's memories generate from its input ``x: [B, T, D]`` (chunk-parallel,
        continuing ``state``, e.g. ``init_state``): ``{"k", "v", "q", "eta", "alpha"}`` with keys,
        values and queries ``[B, T, H, d]`` (``q`` the fixed projection's unless
        ``selfmod.adaptive_q``) and the rates ``[B, T, H]`` -- the values `__call__` writes
        into its main memory. For inspection; the layer's state is not returned."""
        _, a, _ = self._project(p, state, x)
        _, (k, v, q, eta, alpha) = self._gen_parallel(
            p, state["gen"], jnp.swapaxes(a[:, :, 0], 1, 2)
        )
        q = jnp.swapaxes(q, 1, 2) if q is not None else l2_normalize(a[:, :, 1])
        sw = lambda z: jnp.swapaxes(z, 1, 2)
        return {"k": sw(k), "v": sw(v), "q": q, "eta": sw(eta), "alpha": sw(alpha)}

    # --- the layer -------------------------------------------------------------------------------
    def _fused_parallel(self, p: dict, state: dict, xm, q_in, cut: int):
        """The chunk-parallel layer when `fused`: one scan over chunks whose body generates the
        chunk's ``k, v, (q), eta, alpha`` from the generators' boundary state, then runs the main
        memory and the k / v (/ q) memories as one stacked memory call (main heads first).
        ``xm: [B, H, T, d]``, ``q_in: [B, T, H, d]`` (the fixed queries before their norm).
        Returns ``(gen stream, main stream, y [B, T, H, d])``."""
        c = self.config
        h, n = c.n_heads, self.n_proj
        mem, gm = self.main_memory, self.gate_memory
        beta = 0.0 if self._rule.beta is None else self._rule.beta
        tile = lambda a, m: jnp.concatenate([a] * m, axis=1)
        heads = lambda tree, sl: jax.tree.map(lambda a: a[:, sl], tree)
        stack = lambda a, b: jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=1), a, b)
        proj, gate = state["gen"].state
        q_fixed = l2_normalize(jnp.swapaxes(q_in, 1, 2))

        def chunk(carry, xc, qc):
            joint, gate = carry
            k, v, q, eta, alpha = self._generate(p, (heads(joint, slice(h, None)), gate), xc)
            q = qc if q is None else q
            m = n + 1
            e, a = tile(eta, m), tile(alpha, m)
            # every head writes; only the main memory's (the first h) are read
            joint, y = mem.write_read_heads(
                joint, q, tile(k, m), tile(v, m), Rates(e, a, jnp.full_like(e, beta))
            )
            if self.gates_learn:
                e, a = tile(eta, 2), tile(alpha, 2)
                gate = gm.write_chunk(
                    gate, tile(k, 2), tile(v, 2), Rates(e, a, jnp.full_like(e, beta))
                )
            return (joint, gate), y

        res = scan_chunks(
            chunk,
            (stack(state["main"].state, proj), gate),
            (xm, q_fixed),
            c.titans.chunk,
            axis=2,
            remat=True,
            first_order=c.first_order,
            cut=cut,
            unroll_upto=UNROLL_UPTO,
        )
        tail = jnp.asarray(res.tail, jnp.int32)
        (joint, gate), (joint_b, gate_b) = res.carry, res.boundary
        main = StreamState(heads(joint, slice(0, h)), heads(joint_b, slice(0, h)), tail)
        gen = StreamState(
            (heads(joint, slice(h, None)), gate), (heads(joint_b, slice(h, None)), gate_b), tail
        )
        return gen, main, jnp.swapaxes(res.outputs, 1, 2)

    def _memories(self, p: dict, state: dict, xm, q_in, parallel: bool, cut: int):
        """The generators and the main memory over ``xm: [B, H, T, d]`` one after the other:
        ``(gen stream, main stream, y [B, T, H, d])``."""
        c = self.config
        if parallel:
            gen, (k, v, q, eta, alpha) = self._gen_parallel(p, state["gen"], xm, cut)
        else:
            gen, (k, v, q, eta, alpha) = self._gen_stream(p, state["gen"], xm)
        q = jnp.swapaxes(q, 1, 2) if q is not None else l2_normalize(q_in)
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
        eta, alpha = jnp.swapaxes(eta, 1, 2), jnp.swapaxes(alpha, 1, 2)
        mem = self.main_memory
        if isinstance(mem, LinearMemory):
            alpha = None  # plain (ungated) linear attention: the reduced case
        stream = state["main"]
        if parallel:
            stream, y = mem.start_stream(
                stream.state,
                q,
                k,
                v,
                eta,
                alpha,
                chunk_size=c.titans.chunk,
                first_order=c.first_order,
                gradient_cut=cut,
            )
        else:
            stream, y = mem.stream(stream, q, k, v, eta, alpha, chunk_size=c.titans.chunk)
        return gen, stream, y

    def __call__(self, p: dict, state: dict, x: jax.Array, ctx: Context = Context()):
        """``x: [B, T, D]`` -> ``(x + mixer output, state)``. ``ctx.cut > 0`` (parallel, from a
        fresh state): no gradient flows between blocks of ``cut`` tokens (same values; the
        teach signal's first pass)."""
        c, dt = self.config, self.config.compute_dtype
        b, t, d = x.shape
        h, a, conv_state = self._project(p, state, x, ctx.cut)
        xm = jnp.swapaxes(a[:, :, 0], 1, 2)  # [B, H, T, d]
        if ctx.parallel and self.fused:
            gen, stream, y = self._fused_parallel(p, state, xm, a[:, :, 1], ctx.cut)
        else:
            gen, stream, y = self._memories(p, state, xm, a[:, :, 1], ctx.parallel, ctx.cut)
        y = rms_norm(y.reshape(b, t, d), p["out_norm"], c.norm_eps) * jax.nn.silu(
            dense(h, p["w_gate_out"], dt)
        )
        return x + dense(y, p["wo"], dt), {"gen": gen, "main": stream, "conv": conv_state}


@dataclasses.dataclass(frozen=True)
class SelfModifyingBlock:
    """A self-modifying Titans layer followed by a SwiGLU MLP (``kind="selfmod"``)."""

    config: ModelConfig

    @property
    def mixer(self) -> SelfModifyingTitans:
        return SelfModifyingTitans(self.config)

    def init(self, key) -> dict:
        k1, k2 = jax.random.split(key)
        c = self.config
        return {
            "mixer": self.mixer.init(k1),
            "mlp_norm": jnp.ones((c.d_model,), jnp.float32),
            "mlp": swiglu_init(k2, c.d_model, c.d_ff),
        }

    def init_state(self, params: dict, batch_size: int) -> dict:
        return self.mixer.init_state(params["mixer"], batch_size)

    def __call__(self, p: dict, state: dict, x: jax.Array, ctx: Context = Context()):
        x, state = self.mixer(p["mixer"], state, x, ctx)
        c = self.config
        x = x + swiglu(p["mlp"], rms_norm(x, p["mlp_norm"], c.norm_eps), c.compute_dtype)
        return (x, state, {}) if ctx.collect else (x, state)
