"""Self-modifying Titans, the Continuum Memory System, Hope and Hope-Attention (issue 4).

The generic model properties (parallel == reference == streaming for the registry's tiny configs,
causality, batch isolation, no recompilation, training lowers the loss) are in test_models.py;
here: the variants, the reduced cases, the meta-learning gradients and the CMS semantics.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from model_helpers import check_prefix_then_stream, close, jitted, setup

from nested_jax.levels import Level, run_levels, run_levels_reference
from nested_jax.models import LanguageModel, ModelConfig, get_config
from nested_jax.models.cms import ContinuumMemory, batched_swiglu
from nested_jax.models.layers import l2_normalize, rms_norm, swiglu
from nested_jax.models.titans import causal_conv

VARIANTS = [
    ("selfmod_tiny", {"sm_adaptive_q": True}),
    ("selfmod_tiny", {"sm_momentum": None, "mem_chunk": 3, "sm_chunk": 2}),
    ("selfmod_tiny", {"inner_norm": False, "sm_unit_values": False}),  # the paper's literal rates
    ("hope_tiny", {"cms_variant": "nested", "cms_periods": (4, 0, 8), "first_order": True}),
    ("hope_tiny", {"cms_variant": "independent", "cms_signal": "local"}),
    ("hope_attention_tiny", {"cms_variant": "independent"}),
    ("hope_attention_tiny", {"cms_signal": "local", "cms_variant": "nested"}),
]


@pytest.mark.parametrize(("name", "overrides"), VARIANTS)
def test_variants_parallel_equals_streaming(name, overrides):
    """Each variant: the parallel form == a parallel prefix (ending mid-chunk) continued by
    token-by-token streaming in pieces of 3 (``step`` is the token-by-token form; the registry's
    default configs also go through ``apply_reference`` in test_models.py)."""
    model, params, tokens = setup(name, length=11, **overrides)
    par, s_par = jitted(model, "apply")(params, tokens)
    check_prefix_then_stream(model, params, tokens, par, s_par, start=5, piece=3)


# --- CMS -------------------------------------------------------------------------------------


def test_frozen_hope_attention_is_transformer_pp():
    """Hope-Attention with one frozen CMS level is exactly Transformer++ with the same weights."""
    hope, hp, tokens = setup("hope_attention_tiny", length=12, cms_periods=(0,))
    tf = LanguageModel(get_config("tiny"))
    lv = hp["layers"]["cms"]["levels"][0]
    layers = {**hp["layers"]["mixer"], "mlp_norm": lv["norm"], "mlp": lv["mlp"]}
    tp = {**hp, "layers": layers}
    close(hope.apply(hp, tokens)[0], tf.apply(tp, tokens)[0])


@pytest.mark.parametrize("variant", ["sequential", "nested", "independent"])
def test_cms_with_every_level_frozen_is_a_plain_mlp_chain(variant):
    config = get_config("hope_attention_tiny", cms_periods=(0, 0, 0), cms_variant=variant)
    cms = ContinuumMemory(config)
    p = cms.init(jax.random.key(3))
    z = jax.random.normal(jax.random.key(4), (2, 9, config.d_model))
    y, _ = cms(p, cms.init_state(p, 2), z)
    want = z
    for i, lv in enumerate(p["levels"]):
        src = z if variant == "independent" else want
        out = swiglu(lv["mlp"], rms_norm(src, lv["norm"]))
        want = want + (p["mix"][i] * out if variant == "independent" else out)
    close(y, want)


def test_cms_local_equals_the_levels_reference():
    """The sequential CMS (local signal) is a chain of ``Level`` s: its chunk-parallel form equals
    ``run_levels`` (masked and nested) and the plain-Python ``run_levels_reference``."""
    config = get_config(
        "hope_tiny", cms_signal="local", cms_periods=(2, 0, 4), cms_lr=0.5, d_model=8, d_ff=16
    )
    cms = ContinuumMemory(config)
    p = cms.init(jax.random.key(5))
    b, t = 2, 11
    z = jax.random.normal(jax.random.key(6), (b, t, config.d_model))
    state = cms.init_state(p, b)
    y, final = cms(p, state, z, parallel=True)

    def level(i):
        lv = p["levels"][i]

        def update(theta, x):  # x: [B, D], one token
            n = rms_norm(x[:, None], lv["norm"])
            if not config.cms_periods[i]:
                return theta, x + batched_swiglu(theta, n)[:, 0]

            def loss(th):
                out = batched_swiglu(th, n)
                return 0.5 * jnp.sum(jnp.mean((out - n @ lv["w_target"]) ** 2, -1)), out

            g, out = jax.grad(loss, has_aux=True)(theta)
            cand = jax.tree.map(lambda a, gg: a - config.cms_lr * gg, theta, g)
            return cand, x + out[:, 0]

        return Level(f"cms{i}", config.cms_periods[i], update)

    levels = tuple(level(i) for i in range(3))
    xs = jnp.swapaxes(z, 0, 1)
    for res in (
        run_levels(levels, state.params, xs),
        run_levels(levels, state.params, xs, form="nested"),
        run_levels_reference(levels, state.params, xs),
    ):
        close(y, jnp.swapaxes(res.outputs[-1], 0, 1))
        close(final.params, res.states)
        close(tuple(a for a in final.acc), res.pending)


def test_nested_cms_resets_the_faster_level_at_each_slower_boundary():
    config = get_config("hope_tiny", cms_signal="local", cms_variant="nested", cms_periods=(2, 4))
    cms = ContinuumMemory(config)
    p = cms.init(jax.random.key(7))
    z = jax.random.normal(jax.random.key(8), (2, 8, config.d_model))
    _, st = cms(p, cms.init_state(p, 2), z)
    init = cms.init_state(p, 2).params
    close(st.params[0], init[0], atol=0, rtol=0)  # reset at token 8 (a level-1 boundary)
    assert not np.allclose(np.asarray(st.params[1]["w_up"]), np.asarray(init[1]["w_up"]))
    _, st6 = cms(p, cms.init_state(p, 2), z[:, :6])  # token 6: level 0 fired, not reset
    assert not np.allclose(np.asarray(st6.params[0]["w_up"]), np.asarray(init[0]["w_up"]))


def test_cms_learns_in_context_and_fires_on_schedule():
    model, params, tokens = setup("hope_attention_tiny", length=16, cms_periods=(4, 8))
    init = model.init_state(params, 2).layers["cms"].params
    outs = {}
    for t in (3, 4, 8):
        _, st = model.apply(params, tokens[:, :t])
        outs[t] = st.layers["cms"].params
    close(outs[3], init, atol=0, rtol=0)  # nothing fires before token 4
    changed = lambda a, b: not np.allclose(np.asarray(a["w_up"]), np.asarray(b["w_up"]))
    assert changed(outs[4][0], init[0]) and not changed(outs[4][1], init[1])
    assert changed(outs[8][1], init[1])


def test_ntp_update_is_minus_lr_times_the_chunk_gradient():
    """The first CMS chunk's update equals -lr * grad of that chunk's next-token loss, computed
    here by differentiating the frozen network directly."""
    model, params, tokens = setup(
        "hope_attention_tiny", length=4, cms_periods=(4,), cms_signal="ntp"
    )
    _, st = model.apply(params, tokens)
    frozen = LanguageModel(dataclasses.replace(model.config, cms_periods=(0,)))

    def chunk_loss(mlp):
        lv = params["layers"]["cms"]["levels"][0]
        p = {**params}
        cms = {**params["layers"]["cms"], "levels": ({**lv, "mlp": mlp},)}
        p["layers"] = {**params["layers"], "cms": cms}
        logits, _ = frozen.apply(p, tokens)
        logp = jax.nn.log_softmax(logits[:, :-1], -1)
        nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
        return jnp.mean(nll, axis=1)  # per sample

    lv0 = params["layers"]["cms"]["levels"][0]["mlp"]
    for s in range(2):  # each sample's update comes from its own loss only
        g = jax.grad(lambda m, s=s: chunk_loss(m)[s])(lv0)
        want = jax.tree.map(lambda a, gg: a - model.config.cms_lr * gg, lv0, g)
        got = jax.tree.map(lambda a, s=s: a[:, s], st.layers["cms"].params[0])
        close(got, want, atol=1e-5, rtol=1e-4)


def test_next_sequence_resets_or_keeps_the_cms():
    for persistent in (False, True):
        model, params, tokens = setup("hope_attention_tiny", length=8, cms_persistent=persistent)
        _, st = model.apply(params, tokens)
        fresh = model.next_sequence(params, st)
        init = model.init_state(params, 2)
        want = st.layers["cms"].params if persistent else init.layers["cms"].params
        close(fresh.layers["cms"].params, want, atol=0, rtol=0)
        close(fresh.layers["mixer"], init.layers["mixer"], atol=0, rtol=0)
        assert int(fresh.off) == 0 and int(fresh.layers["cms"].pos[0]) == 0
    with pytest.raises(ValueError, match="next_sequence is for models with a CMS"):
        m, p, _ = setup("tiny")
        m.next_sequence(p, m.init_state(p, 2))


# --- self-modifying Titans ---------------------------------------------------------------------


def test_reduced_hope_is_linear_attention():
    """Hope with CMS frozen and self-modifying Titans reduced to a fixed linear memory (fixed k, v,
    eta memories, Hebbian linear main memory) is a linear-attention model, written out here."""
    model, params, tokens = setup(
        "hope_tiny",
        length=9,
        sm_main="linear",
        sm_adaptive=False,
        sm_unit_values=False,
        cms_periods=(0,),
    )
    c = model.config
    got, _ = model.apply(params, tokens)
    ref, _ = model.apply_reference(params, tokens)
    close(got, ref)
    b, t = tokens.shape
    x = params["embed"][tokens]
    for layer in range(c.n_layers):
        lp = jax.tree.map(lambda a, layer=layer: a[layer], params["layers"])
        p = lp["mixer"]
        h = rms_norm(x, p["norm"])
        a, _ = causal_conv(p["conv"], h @ p["w_in"], jnp.zeros((b, 3, 2 * c.d_model)))
        a = jax.nn.silu(a).reshape(b, t, 2, c.n_heads, c.head_dim)
        xm = a[:, :, 0]
        proj, gate = p["proj"], p["gate"]
        mk = lambda w1, w2, z: z + jax.nn.silu(z @ w2.T) @ w1.T
        heads = []
        for hh in range(c.n_heads):
            z = xm[:, :, hh]
            k = l2_normalize(mk(proj.w1[hh], proj.w2[hh], z))
            v = mk(proj.w1[c.n_heads + hh], proj.w2[c.n_heads + hh], z)
            g = (jax.nn.silu(z @ gate.w2[hh].T) @ gate.w1[hh].T)[..., 0] + p["b_gate"][hh]
            eta = c.eta_max * jax.nn.sigmoid(g)
            q = l2_normalize(a[:, :, 1, hh])
            scores = jnp.einsum("bsd,btd->bts", k, q) * eta[:, None, :]
            scores = jnp.where(jnp.tril(jnp.ones((t, t)), -1)[None] > 0, scores, 0.0)
            heads.append(jnp.einsum("bts,bsd->btd", scores, v))
        y = jnp.stack(heads, axis=2).reshape(b, t, c.d_model)
        y = rms_norm(y, p["out_norm"]) * jax.nn.silu(h @ p["w_gate_out"])
        x = x + y @ p["wo"]
        lv = lp["cms"]["levels"][0]
        x = x + swiglu(lv["mlp"], rms_norm(x, lv["norm"]))
    want = rms_norm(x, params["final_norm"]) @ params["head"]
    close(got, want, atol=1e-4, rtol=1e-4)


def _meta_leaves(params):
    """The meta-learned initial states (and their leaf paths) of every fast memory and level."""
    layers = params["layers"]
    mixer = layers.get("mixer", layers)  # Titans: the memory is the layer's own
    out = {f"{n}": mixer[n] for n in ("proj", "gate", "main", "memory") if n in mixer}
    if "cms" in layers:
        for i, lv in enumerate(layers["cms"]["levels"]):
            out[f"cms{i}"] = lv["mlp"]
    return out


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("selfmod_tiny", {"sm_adaptive_q": True}),
        ("hope_attention_tiny", {"cms_variant": "nested", "cms_signal": "local"}),
    ],
)
def test_outer_gradient_reaches_every_initial_state_and_parameter(name, overrides):
    """(The registry's default configs, Hope's included, are checked in test_models.py.)"""
    model, params, tokens = setup(name, length=16, **overrides)
    g = jax.jit(jax.grad(model.loss))(params, tokens)
    for path, leaf in jax.tree_util.tree_leaves_with_path(g):
        assert np.all(np.isfinite(np.asarray(leaf))), jax.tree_util.keystr(path)
        assert float(jnp.abs(leaf).sum()) > 0, jax.tree_util.keystr(path)
    meta = _meta_leaves(g)
    assert meta, "no initial states found"
    expect = {"proj", "gate", "main"} if name != "hope_attention_tiny" else set()
    assert expect <= set(meta)


@pytest.mark.parametrize("name", ["titans_tiny", "selfmod_tiny", "hope_attention_tiny"])
def test_first_order_keeps_values_and_changes_only_gradients(name):
    """``first_order``: same outputs; gradients still reach the initial states (straight through)
    but no longer through the inner updates, so they differ from the full ones."""
    model, params, tokens = setup(name, length=8)
    fo = LanguageModel(dataclasses.replace(model.config, first_order=True))
    close(model.apply(params, tokens)[0], fo.apply(params, tokens)[0], atol=1e-5, rtol=1e-5)
    g_full = jax.jit(jax.grad(model.loss))(params, tokens)
    g_fo = jax.jit(jax.grad(fo.loss))(params, tokens)
    for leaf in jax.tree.leaves(g_fo):
        assert np.all(np.isfinite(np.asarray(leaf)))
    m_full, m_fo = _meta_leaves(g_full), _meta_leaves(g_fo)
    assert m_fo
    for key in m_fo:
        a, b = jax.tree.leaves(m_full[key])[0], jax.tree.leaves(m_fo[key])[0]
        assert float(jnp.abs(b).sum()) > 0, key
        assert not np.allclose(np.asarray(a), np.asarray(b)), key


@pytest.mark.parametrize("name", ["selfmod_tiny", "hope_attention_tiny"])
def test_check_grads_through_the_inner_loop(name):
    """Numerical vs autodiff directional derivatives of the loss w.r.t. the initial states of the
    memories (self-modifying Titans) and of the CMS levels (the exact "ntp" signal: through the
    inner gradients, second order; "teach" treats its first pass's errors as constants, so its
    gradient is deliberately not the loss's full derivative)."""
    model, params, tokens = setup(name, batch=1, length=8, d_model=16, d_ff=16, cms_signal="ntp")
    meta = _meta_leaves(params)

    @jax.jit
    def f(meta):
        mixer = dict(params["layers"]["mixer"])
        for n in ("proj", "gate", "main"):
            if n in meta:
                mixer[n] = meta[n]
        layers = {**params["layers"], "mixer": mixer}
        if "cms" in params["layers"]:
            levels = tuple(
                {**lv, "mlp": meta[f"cms{i}"]}
                for i, lv in enumerate(params["layers"]["cms"]["levels"])
            )
            layers["cms"] = {**params["layers"]["cms"], "levels": levels}
        return model.loss({**params, "layers": layers}, tokens)

    check_grads(f, (meta,), order=1, modes=("rev",), eps=5e-3, atol=2e-2, rtol=2e-2)


# --- configs -----------------------------------------------------------------------------------


def test_registry_has_the_paper_scale_configs():
    from nested_jax.models import list_configs

    names = set(list_configs())
    assert {"hope_tiny", "hope_small", "hope_760m", "hope_1.3b"} <= names
    for name, lo, hi in (("hope_760m", 6.5e8, 8.5e8), ("hope_1.3b", 1.15e9, 1.45e9)):
        model = LanguageModel(get_config(name))
        n = model.num_params(jax.eval_shape(model.init, jax.random.key(0)))
        assert lo < n < hi, (name, n)


def test_bad_model_configs():
    with pytest.raises(ValueError, match="cms_variant"):
        ModelConfig(cms_variant="parallel")
    with pytest.raises(ValueError, match="cms_signal"):
        ModelConfig(cms_signal="ttt")
    with pytest.raises(ValueError, match="multiple of the smallest"):
        ModelConfig(cms_periods=(4, 6))
    with pytest.raises(ValueError, match="divide the next"):
        ModelConfig(cms_periods=(4, 8, 12), cms_variant="nested")
    with pytest.raises(ValueError, match="ints >= 0"):
        ModelConfig(cms_periods=(4, -1))
    with pytest.raises(ValueError, match="period >= 2"):
        ModelConfig(kind="hope_attention", cms_periods=(1,))
    with pytest.raises(ValueError, match="multiple of mem_chunk"):
        ModelConfig(kind="hope", cms_periods=(6,), mem_chunk=4)
    with pytest.raises(ValueError, match="sm_main"):
        ModelConfig(sm_main="deep")
    with pytest.raises(ValueError, match="sm_momentum"):
        ModelConfig(sm_momentum=1.5)


@pytest.mark.parametrize("name", ["titans_tiny", "selfmod_tiny"])
def test_memory_layers_stay_finite_at_head_dim_64_over_long_sequences(name):
    """Regression: with head dimension 64 (memory hidden 128) the initial inner learning rate
    used to exceed the MLP memory's stability bound and the logits became NaN after ~50 tokens."""
    model, params, tokens = setup(
        name, batch=1, length=512, d_model=128, n_heads=2, n_layers=1, max_len=512, mem_chunk=16
    )
    logits, _ = jitted(model, "apply")(params, tokens)
    assert np.all(np.isfinite(np.asarray(logits)))


# --- the two-pass teach signal -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "periods", "signal"),
    [("hope_tiny", (4, 8), "ntp"), ("hope_attention_tiny", (4, 0, 8), "teach")],
)
def test_cms_signal_is_exact_three_ways_and_causal(name, periods, signal):
    """parallel == token by token == a parallel prefix ending mid-chunk continued by streaming
    in pieces of 3, and no output sees a later token: the exact "ntp" reference signal (the
    registry's default "teach" Hope goes through test_models.py), and "teach" with a frozen
    level between live ones (its first pass's gradients are cut between CMS chunks: a leak would
    change the updates)."""
    model, params, tokens = setup(name, length=14, cms_signal=signal, cms_periods=periods)
    par, s_par = jitted(model, "apply")(params, tokens)
    ref, s_ref = jitted(model, "apply_reference")(params, tokens)
    close(par, ref)
    close(s_par, s_ref)
    check_prefix_then_stream(model, params, tokens, par, s_par, start=6, piece=3)
    t0 = 9
    changed, _ = jitted(model, "apply")(params, tokens.at[1, t0].set((tokens[1, t0] + 1) % 256))
    np.testing.assert_array_equal(np.asarray(changed[:, :t0]), np.asarray(par[:, :t0]))
    np.testing.assert_array_equal(np.asarray(changed[0]), np.asarray(par[0]))


def test_teach_first_chunk_update_equals_ntp():
    """On the first CMS chunk the sequence-start weights are the current ones, so the teach
    signal's update is the exact next-token gradient step of "ntp"; later chunks differ."""
    model, params, tokens = setup(
        "hope_attention_tiny", length=8, cms_periods=(4,), cms_signal="ntp"
    )
    teach = LanguageModel(dataclasses.replace(model.config, cms_signal="teach", cms_norm=False))
    _, s_ntp = model.apply(params, tokens[:, :4])
    _, s_teach = teach.apply(params, tokens[:, :4])
    close(s_teach.layers["cms"].params, s_ntp.layers["cms"].params, atol=1e-6, rtol=1e-5)
    _, s_ntp = model.apply(params, tokens)
    _, s_teach = teach.apply(params, tokens)
    a, b = s_teach.layers["cms"].params[0]["w_up"], s_ntp.layers["cms"].params[0]["w_up"]
    assert not np.allclose(np.asarray(a), np.asarray(b), atol=1e-7, rtol=1e-6)


def test_teach_errors_come_from_the_own_chunk_only():
    """Pass 1's output errors of chunk c do not depend on the targets of later chunks."""
    model, params, tokens = setup("hope_tiny", length=16, cms_signal="teach", cms_periods=(8,))
    state = model.init_state(params, 2)
    errs, _ = model._teach_signal(params, state.teach, tokens)
    other = tokens.at[:, 9:].set((tokens[:, 9:] + 7) % 256)
    errs2, _ = model._teach_signal(params, state.teach, other)
    close(errs[0][:, :, :8], errs2[0][:, :, :8], atol=0, rtol=0)
    assert not np.allclose(np.asarray(errs[0][:, :, 8:]), np.asarray(errs2[0][:, :, 8:]))
    assert float(jnp.abs(errs[0][:, :, :8]).sum()) > 0


def test_cms_rates_are_learned_and_bounded():
    model, params, tokens = setup("hope_attention_tiny", length=8)
    cms = ContinuumMemory(model.config)
    p = jax.tree.map(lambda a: a[0], params["layers"]["cms"])
    np.testing.assert_allclose(np.asarray(cms.rates(p)), model.config.cms_lr, rtol=1e-6)
    big = {**p, "lr": jnp.full_like(p["lr"], 50.0)}
    assert float(cms.rates(big).max()) <= 2 * model.config.cms_lr + 1e-7
    g = jax.grad(model.loss)(params, tokens)
    assert float(jnp.abs(g["layers"]["cms"]["lr"]).sum()) > 0
    fixed = LanguageModel(dataclasses.replace(model.config, cms_learn_lr=False))
    assert "lr" not in fixed.init(jax.random.key(0))["layers"]["cms"]


def test_swiglu_gain_bounds_a_gradient_step():
    """A rate-r gradient step of <SwiGLU(n), e> on all three matrices moves the output at n along
    e by r * (its projection) <= r * gain * ||e||^2 (first order: tiny r)."""
    from nested_jax.models.cms import swiglu_gain
    from nested_jax.models.layers import swiglu_init

    d, f = 8, 16
    p = jax.tree.map(lambda a: a[None], swiglu_init(jax.random.key(40), d, f))
    for s in range(4):
        n = jax.random.normal(jax.random.key(41 + s), (1, 1, d))
        e = jax.random.normal(jax.random.key(51 + s), (1, 1, d))
        g = jax.grad(lambda th, n=n, e=e: jnp.sum(batched_swiglu(th, n) * e))(p)
        r = 1e-4
        new = jax.tree.map(lambda a, b, r=r: a - r * b, p, g)
        moved = -jnp.sum((batched_swiglu(new, n) - batched_swiglu(p, n)) * e) / r
        bound = swiglu_gain(p, n)[0, 0] * jnp.sum(e * e)
        assert 0 < float(moved) <= float(bound) * 1.01, (moved, bound)


def test_teach_cms_step_is_bounded_at_any_rate():
    """With ``cms_norm`` the teach signal's level stays finite and bounded for a huge rate over
    many chunks; without it, it blows up."""
    sizes = []
    for norm in (False, True):
        config = get_config(
            "hope_attention_tiny",
            cms_signal="teach",
            cms_periods=(8,),
            cms_lr=50.0,
            cms_norm=norm,
            d_model=64,
            d_ff=128,
        )
        cms = ContinuumMemory(config)
        p = cms.init(jax.random.key(42))
        state = cms.init_state(p, 2)
        z = jax.random.normal(jax.random.key(43), (2, 8 * 24, 64))
        errs = (0.05 * jax.random.normal(jax.random.key(44), z.shape),)
        y, _ = cms(p, state, z, teach=(errs, state.params))
        size = float(jnp.max(jnp.abs(y)))
        sizes.append(size if np.isfinite(size) else np.inf)
    assert sizes[0] > 1e4, sizes
    assert sizes[1] < 100, sizes
