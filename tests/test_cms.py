"""The Continuum Memory System (paper §4; models/cms.py) and its learning signals in the language
model: frozen levels, the local signal against the levels reference, nested resets, firing on
schedule, the exact "ntp" update, the two-pass "teach" signal (causal, equal to ntp on the first
chunk, bounded at any rate), the one-pass "online" signal (exact three ways, ntp's steps in
values, first order), learned bounded rates, and the persistent CMS across sequences.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import check_prefix_then_stream, close, jitted, setup

from nested_jax.levels import Level, run_levels, run_levels_reference
from nested_jax.memory import SwiGLUMemory
from nested_jax.models import LanguageModel, get_config
from nested_jax.models.cms import ContinuumMemory
from nested_jax.models.layers import Context, rms_norm, swiglu
from nested_jax.models.lm import token_nll


@pytest.mark.parametrize("variant", ["sequential", "nested", "independent"])
def test_cms_with_every_level_frozen_is_a_plain_mlp_chain(variant):
    config = get_config("hope_attention_tiny", cms={"periods": (0, 0, 0), "variant": variant})
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
        "hope_tiny", cms={"signal": "local", "periods": (2, 0, 4), "lr": 0.5}, d_model=8, d_ff=16
    )
    cms = ContinuumMemory(config)
    p = cms.init(jax.random.key(5))
    b, t = 2, 11
    z = jax.random.normal(jax.random.key(6), (b, t, config.d_model))
    state = cms.init_state(p, b)
    y, final = cms(p, state, z)

    batched_swiglu = SwiGLUMemory(config.d_model, config.d_ff).apply

    def level(i):
        lv = p["levels"][i]

        def update(theta, x):  # x: [B, D], one token
            n = rms_norm(x[:, None], lv["norm"])
            if not config.cms.periods[i]:
                return theta, x + batched_swiglu(theta, n)[:, 0]

            def loss(th):
                out = batched_swiglu(th, n)
                return 0.5 * jnp.sum(jnp.mean((out - n @ lv["w_target"]) ** 2, -1)), out

            g, out = jax.grad(loss, has_aux=True)(theta)
            cand = jax.tree.map(lambda a, gg: a - config.cms.lr * gg, theta, g)
            return cand, x + out[:, 0]

        return Level(f"cms{i}", config.cms.periods[i], update)

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
    config = get_config(
        "hope_tiny", cms={"signal": "local", "variant": "nested", "periods": (2, 4)}
    )
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
    model, params, tokens = setup("hope_attention_tiny", length=16, cms={"periods": (4, 8)})
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
        "hope_attention_tiny", length=4, cms={"periods": (4,), "signal": "ntp"}
    )
    _, st = model.apply(params, tokens)
    frozen = LanguageModel(model.config.replace(cms={"periods": (0,)}))

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
        want = jax.tree.map(lambda a, gg: a - model.config.cms.lr * gg, lv0, g)
        got = jax.tree.map(lambda a, s=s: a[:, s], st.layers["cms"].params[0])
        close(got, want, atol=1e-5, rtol=1e-4)


# --- self-modifying Titans ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "periods", "signal"),
    [
        ("hope_tiny", (4, 8), "ntp"),
        ("hope_attention_paper_tiny", (4, 0, 8), "teach"),
        ("hope_tiny", (4, 8), "online"),
        ("hope_attention_tiny", (4, 8), "online"),
    ],
)
def test_cms_signal_is_exact_three_ways_and_causal(name, periods, signal):
    """parallel == token by token == a parallel prefix ending mid-chunk continued by streaming
    in pieces of 3, no output sees a later token, and the levels learned: the exact "ntp"
    reference signal, "teach" with a frozen level between live ones (its first pass's gradients
    are cut between CMS chunks: a leak would change the updates), and the one-pass "online"
    signal of the registry's defaults (decisions D99; its errors through the residual stream)."""
    model, params, tokens = setup(name, length=14, cms={"signal": signal, "periods": periods})
    par, s_par = jitted(model, "apply")(params, tokens)
    ref, s_ref = jitted(model, "apply_reference")(params, tokens)
    close(par, ref)
    close(s_par, s_ref)
    check_prefix_then_stream(model, params, tokens, par, s_par, start=6, piece=3)
    t0 = 9
    changed, _ = jitted(model, "apply")(params, tokens.at[1, t0].set((tokens[1, t0] + 1) % 256))
    np.testing.assert_array_equal(np.asarray(changed[:, :t0]), np.asarray(par[:, :t0]))
    np.testing.assert_array_equal(np.asarray(changed[0]), np.asarray(par[0]))
    init = model.init_state(params, 2).layers["cms"].params
    assert not np.allclose(np.asarray(s_par.layers["cms"].params[0]["w_up"]), init[0]["w_up"])


def test_teach_first_chunk_update_equals_ntp():
    """On the first CMS chunk the sequence-start weights are the current ones, so the teach
    signal's update is the exact next-token gradient step of "ntp"; later chunks differ."""
    model, params, tokens = setup(
        "hope_attention_paper_tiny", length=8, cms={"periods": (4,), "signal": "ntp"}
    )
    teach = LanguageModel(model.config.replace(cms={"signal": "teach", "norm": "none"}))
    _, s_ntp = model.apply(params, tokens[:, :4])
    _, s_teach = teach.apply(params, tokens[:, :4])
    close(s_teach.layers["cms"].params, s_ntp.layers["cms"].params, atol=1e-6, rtol=1e-5)
    _, s_ntp = model.apply(params, tokens)
    _, s_teach = teach.apply(params, tokens)
    a, b = s_teach.layers["cms"].params[0]["w_up"], s_ntp.layers["cms"].params[0]["w_up"]
    assert not np.allclose(np.asarray(a), np.asarray(b), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name", ["hope_tiny", "hope_attention_tiny"])
def test_online_signal_equals_ntp_in_values(name):
    """With errors through the whole network and the plain rate, "online" takes "ntp"'s steps at
    every chunk (both at the current weights): same outputs and states over several chunks. Its
    residual path gives other steps."""
    cms = {"signal": "ntp", "periods": (4, 8), "learn_lr": False}
    model, params, tokens = setup(name, length=16, cms=cms)
    online = LanguageModel(
        model.config.replace(cms={"signal": "online", "norm": "none", "teach_path": "network"})
    )
    out, st = jitted(model, "apply")(params, tokens)
    out_o, st_o = jitted(online, "apply")(params, tokens)
    close(out_o, out, atol=1e-5, rtol=1e-4)
    close(st_o.layers["cms"].params, st.layers["cms"].params, atol=1e-6, rtol=1e-4)
    residual = LanguageModel(online.config.replace(cms={"teach_path": "residual"}))
    _, st_r = jitted(residual, "apply")(params, tokens)
    a, b = st_r.layers["cms"].params[0]["w_up"], st.layers["cms"].params[0]["w_up"]
    assert not np.allclose(np.asarray(a), np.asarray(b), atol=1e-7, rtol=1e-6)


def _rerun_levels(model, params, layers, tokens, taps):
    """The slow twin of `LanguageModel._online_sweep`: the errors from a second pass of the CMS
    levels and the head (the mixers' outputs given), then every CMS re-runs with them (`learn`)."""
    sg = jax.lax.stop_gradient
    mixed = sg(taps["cms"] - taps["input"])
    errors, _ = model.output_errors(
        sg(params), sg(layers), tokens, through_mixer=False, mixed=mixed
    )
    learn = jax.vmap(model.cms.learn)
    return learn(params["layers"]["cms"], layers["cms"], taps["cms"], sg(errors))


@pytest.mark.parametrize(
    ("name", "layers", "cms"),
    [
        ("hope_tiny", 2, {}),
        ("hope_attention_tiny", 2, {}),
        ("hope_tiny", 1, {"variant": "independent", "learn_lr": True}),
        ("hope_tiny", 1, {"variant": "nested", "periods": (4, 0, 8)}),
        ("hope_attention_tiny", 1, {"norm": "none", "learn_lr": True}),
    ],
)
def test_online_sweep_equals_rerunning_the_levels(name, layers, cms, monkeypatch):
    """The online signal's error pass run backward from the chunk forward's cache
    (`ContinuumMemory.sweep`) gives the outputs, states and outer gradients of re-running the
    levels and the head for the errors and the levels again for the steps (decisions D100):
    every CMS variant, a frozen level between live ones, learned and plain rates. The defaults
    with two layers (errors passed back through a layer's levels to the one below), the
    variants with one (the suite's time)."""
    model, params, tokens = setup(name, length=14, cms=cms, n_layers=layers)

    def run(p):
        logits, state = model.apply(p, tokens)
        return jnp.mean(token_nll(logits, tokens)), (logits, state)

    fast = jax.jit(jax.value_and_grad(run, has_aux=True))(params)
    monkeypatch.setattr(LanguageModel, "_online_sweep", _rerun_levels)
    slow = jax.jit(jax.value_and_grad(run, has_aux=True))(params)
    (_, (logits, state)), grads = fast
    (_, (logits_s, state_s)), grads_s = slow
    close(logits, logits_s, atol=1e-5, rtol=1e-4)
    close(state.layers["cms"], state_s.layers["cms"], atol=1e-6, rtol=1e-4)
    close(grads, grads_s, atol=2e-5, rtol=2e-4)
    init = model.init_state(params, 2).layers["cms"].params
    assert not np.allclose(np.asarray(state.layers["cms"].params[0]["w_up"]), init[0]["w_up"])


def test_the_forward_cache_and_the_sweep_refuse_what_they_are_not_for():
    """The forward cache is for a pass where the CMS does not learn, and the sweep is the online
    signal's error pass: each says so."""
    config = get_config("hope_tiny", d_model=16)
    cms = ContinuumMemory(config)
    p = cms.init(jax.random.key(0))
    state = cms.init_state(p, 2)
    z = jax.random.normal(jax.random.key(1), (2, 4, config.d_model))
    errs = tuple(jnp.zeros_like(z) for _ in cms.periods)
    with pytest.raises(ValueError, match="does not learn"):
        cms(p, state, z, Context(cache=True, errors=errs))
    _, _, cache = cms(p, state, z, Context(cache=True))
    teach = ContinuumMemory(config.replace(cms={"signal": "teach"}))
    with pytest.raises(ValueError, match="online signal's error pass"):
        teach.sweep(p, state, cache, z)


def test_online_signal_gradient_equals_the_token_by_token_gradient():
    """The outer gradient of the one-pass signal's chunk-parallel form is the slow twin's: every
    parameter's gradient of the loss through `apply` equals the one through `apply_reference`
    (learned rates, so the rates' first-order path is compared too)."""
    cms = {"signal": "online", "periods": (4, 8), "learn_lr": True}
    model, params, tokens = setup("hope_tiny", length=12, cms=cms)

    def loss(apply):
        return lambda p: jnp.mean(token_nll(apply(p, tokens)[0], tokens))

    g_par = jax.jit(jax.grad(loss(model.apply)))(params)
    g_ref = jax.jit(jax.grad(loss(model.apply_reference)))(params)
    assert float(jnp.abs(g_par["layers"]["cms"]["lr"]).sum()) > 0
    close(g_par, g_ref, atol=2e-5, rtol=2e-4)


def test_online_step_is_first_order_with_learned_rates():
    """The online step's outer gradient reaches the level's learned rate and nothing else: the
    increment does not change with the weights' or inputs' tangents; its rate derivative is the
    finite difference."""
    cms = {"signal": "online", "periods": (4,), "learn_lr": True}
    config = get_config("hope_tiny", cms=cms, d_model=16)
    cms = ContinuumMemory(config)
    p = cms.init(jax.random.key(1))
    state = cms.init_state(p, 2)
    z = jax.random.normal(jax.random.key(2), (2, 4, config.d_model))
    err = (0.1 * jax.random.normal(jax.random.key(3), (2, 4, config.d_model)),)

    def inc(p, theta, z):
        _, incs = cms.forward(p, (theta,), z, errors=err)
        return sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(incs[0]))

    g_p, g_theta, g_z = jax.grad(inc, argnums=(0, 1, 2))(p, state.params[0], z)
    assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree.leaves(g_theta))
    assert float(jnp.abs(g_z).max()) == 0
    assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree.leaves(g_p["levels"]))
    eps = 1e-2
    up = inc({**p, "lr": p["lr"] + eps}, state.params[0], z)
    down = inc({**p, "lr": p["lr"] - eps}, state.params[0], z)
    np.testing.assert_allclose(float(g_p["lr"][0]), float(up - down) / (2 * eps), rtol=2e-2)


def test_online_signal_refuses_the_per_token_rate():
    with pytest.raises(ValueError, match="per-sample rate"):
        get_config("hope_tiny", cms={"signal": "online", "norm": "token"})


def test_cms_rates_are_learned_and_bounded():
    model, params, tokens = setup("hope_attention_paper_tiny", length=8)
    cms = ContinuumMemory(model.config)
    p = jax.tree.map(lambda a: a[0], params["layers"]["cms"])
    np.testing.assert_allclose(np.asarray(cms.rates(p)), model.config.cms.lr, rtol=1e-6)
    big = {**p, "lr": jnp.full_like(p["lr"], 50.0)}
    assert float(cms.rates(big).max()) <= 2 * model.config.cms.lr + 1e-7
    g = jax.grad(model.loss)(params, tokens)
    assert float(jnp.abs(g["layers"]["cms"]["lr"]).sum()) > 0
    fixed = LanguageModel(model.config.replace(cms={"learn_lr": False}))
    assert "lr" not in fixed.init(jax.random.key(0))["layers"]["cms"]


def test_teach_cms_step_is_bounded_at_any_rate():
    """With ``cms.norm`` ("token" or "period") the teach signal's level stays finite and bounded
    for a huge rate over many chunks; without it, it blows up."""
    sizes = []
    for norm in ("none", "token", "period"):
        config = get_config(
            "hope_attention_tiny",
            cms={"signal": "teach", "periods": (8,), "lr": 50.0, "norm": norm},
            d_model=64,
            d_ff=128,
        )
        cms = ContinuumMemory(config)
        p = cms.init(jax.random.key(42))
        state = cms.init_state(p, 2)
        z = jax.random.normal(jax.random.key(43), (2, 8 * 24, 64))
        errs = (0.05 * jax.random.normal(jax.random.key(44), z.shape),)
        y, _ = cms(p, state, z, Context(errors=errs, starts=state.params))
        size = float(jnp.max(jnp.abs(y)))
        sizes.append(size if np.isfinite(size) else np.inf)
    assert sizes[0] > 1e4, sizes
    assert max(sizes[1:]) < 100, sizes


def test_period_norm_bounds_a_chunk_of_alike_inputs():
    """The per-token norm bounds one token's share of a level's step, not the sum over its
    period: on a stream whose inputs repeat (a small vocabulary) the alike shares add up, the
    levels' chunk-to-chunk map stops contracting and the outer gradient through it grows with the
    stream's length (what stopped Hope-Attention from training on drifting facts; decisions
    D86). ``"period"`` bounds the summed step: the gradient stays at its size."""
    sizes = {}
    for norm in ("token", "period"):
        config = get_config(
            "hope_attention_tiny",
            cms={"signal": "teach", "periods": (8, 32), "norm": norm},
            d_model=64,
            d_ff=128,
        )
        cms = ContinuumMemory(config)
        p = cms.init(jax.random.key(45))
        base = jax.random.normal(jax.random.key(46), (2, 1, 64))  # one input, over and over
        w = jax.random.normal(jax.random.key(3), (2, 8, 64))
        for n_chunks in (4, 32):
            z = jnp.tile(base, (1, 8 * n_chunks, 1))
            errs = tuple(0.05 * jax.random.normal(jax.random.key(47 + i), z.shape) for i in (0, 1))

            def last_chunk(p, z=z, errs=errs, cms=cms, w=w):
                state = cms.init_state(p, 2)
                y, _ = cms(p, state, z, Context(errors=errs, starts=state.params))
                return jnp.sum(y[:, -8:] * w)

            g = jax.grad(last_chunk)(p)
            sizes[norm, n_chunks] = float(jnp.sqrt(sum(jnp.sum(a * a) for a in jax.tree.leaves(g))))
    assert sizes["token", 32] > 10 * sizes["token", 4], sizes
    assert sizes["period", 32] < 1.5 * sizes["period", 4], sizes
    # the two agree where the rate is small against the gain (the bound is then inactive)
    for norm in ("token", "period"):
        config = get_config(
            "hope_attention_tiny",
            cms={"signal": "teach", "periods": (8,), "lr": 1e-6, "norm": norm},
        )
        cms = ContinuumMemory(config)
        p = cms.init(jax.random.key(48))
        state = cms.init_state(p, 2)
        z = jax.random.normal(jax.random.key(49), (2, 16, config.d_model))
        errs = (jax.random.normal(jax.random.key(50), z.shape),)
        sizes[norm] = cms(p, state, z, Context(errors=errs, starts=state.params))[1].params[0][
            "w_up"
        ]
    close(sizes["token"], sizes["period"], atol=1e-9, rtol=1e-4)
