"""Hope and Hope-Attention (issue 4); the CMS is in test_cms.py, self-modifying Titans in
test_self_modifying.py.

The generic model properties (parallel == reference == streaming for the registry's tiny configs,
causality, batch isolation, no recompilation, training lowers the loss) are in test_lm.py;
here: the variants, the reduced cases, the meta-learning gradients and the configs.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from model_helpers import (
    check_prefix_then_stream,
    close,
    heads_without_gradient,
    jitted,
    meta_leaves,
    setup,
)

from nested_jax.models import LanguageModel, get_config
from nested_jax.models.layers import causal_conv, l2_normalize, rms_norm, swiglu

VARIANTS = [
    ("hope_tiny", {"cms": {"variant": "nested", "periods": (4, 0, 8)}, "first_order": True}),
    ("hope_tiny", {"cms": {"variant": "independent", "signal": "local"}}),
    ("hope_attention_tiny", {"cms.variant": "independent"}),
    ("hope_attention_tiny", {"cms": {"signal": "local", "variant": "nested"}}),
    # the cost levers (decisions D95): stacked memories, linear gates, the residual teach path
    (
        "hope_tiny",
        {
            "titans.chunk": 4,
            "selfmod.chunk": 4,
            "selfmod.gates": "linear",
            "cms.teach_path": "residual",
        },
    ),
]


@pytest.mark.parametrize(("name", "overrides"), VARIANTS)
def test_variants_parallel_equals_streaming(name, overrides):
    """Each variant: the parallel form == a parallel prefix (ending mid-chunk) continued by
    token-by-token streaming in pieces of 3 (``step`` is the token-by-token form; the registry's
    default configs also go through ``apply_reference`` in test_lm.py)."""
    model, params, tokens = setup(name, length=11, **overrides)
    par, s_par = jitted(model, "apply")(params, tokens)
    check_prefix_then_stream(model, params, tokens, par, s_par, start=5, piece=3)


# --- CMS -------------------------------------------------------------------------------------


def test_frozen_hope_attention_is_transformer_pp():
    """Hope-Attention with one frozen CMS level is exactly Transformer++ with the same weights."""
    hope, hp, tokens = setup("hope_attention_tiny", length=12, cms={"periods": (0,)})
    tf = LanguageModel(get_config("tiny"))
    lv = hp["layers"]["cms"]["levels"][0]
    layers = {**hp["layers"]["mixer"], "mlp_norm": lv["norm"], "mlp": lv["mlp"]}
    tp = {**hp, "layers": layers}
    close(hope.apply(hp, tokens)[0], tf.apply(tp, tokens)[0])


@pytest.mark.parametrize("name", ["hope_tiny", "hope_paper_tiny"])
def test_reduced_hope_is_linear_attention(name):
    """Hope with CMS frozen and self-modifying Titans reduced to a fixed linear memory (fixed k, v
    memories, eta from a fixed memory or linear map, Hebbian linear main memory) is a
    linear-attention model, written out here."""
    model, params, tokens = setup(
        name,
        length=9,
        selfmod={"main": "linear", "adaptive": False, "unit_values": False},
        cms={"periods": (0,)},
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
        proj, gate = p["proj"], p.get("gate")
        mk = lambda w1, w2, z: z + jax.nn.silu(z @ w2.T) @ w1.T
        heads = []
        for hh in range(c.n_heads):
            z = xm[:, :, hh]
            k = l2_normalize(mk(proj.w1[hh], proj.w2[hh], z))
            v = mk(proj.w1[c.n_heads + hh], proj.w2[c.n_heads + hh], z)
            if gate is None:  # selfmod.gates="linear"
                g = z @ p["w_gates"][hh] + p["b_gate"][hh]
            else:
                g = (jax.nn.silu(z @ gate.w2[hh].T) @ gate.w1[hh].T)[..., 0] + p["b_gate"][hh]
            eta = c.titans.eta_max * jax.nn.sigmoid(g)
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


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("selfmod_tiny", {"selfmod.adaptive_q": True}),
        ("hope_attention_tiny", {"cms": {"variant": "nested", "signal": "local"}}),
    ],
)
def test_outer_gradient_reaches_every_initial_state_and_parameter(name, overrides):
    """(The registry's default configs, Hope's included, are checked in test_lm.py.)"""
    model, params, tokens = setup(name, length=16, **overrides)
    g = jax.jit(jax.grad(model.loss))(params, tokens)
    for path, leaf in jax.tree_util.tree_leaves_with_path(g):
        assert np.all(np.isfinite(np.asarray(leaf))), jax.tree_util.keystr(path)
        assert float(jnp.abs(leaf).sum()) > 0, jax.tree_util.keystr(path)
    meta = meta_leaves(g)
    assert meta, "no initial states found"
    expect = {"proj", "main"} if name != "hope_attention_tiny" else set()
    assert expect <= set(meta)
    assert not heads_without_gradient(g)


def test_stopping_the_gradient_at_self_generated_targets_starves_the_value_memory():
    """``selfmod.target_grad=False`` (the behaviour before decisions D89): ``v_t`` reaches the
    loss only through the self-generated targets, so stopping the gradient there leaves the
    value memory (the second of the k / v heads stacked on ``proj``) with none at all and every
    other memory with some; the forward pass is the same either way. (Hope's self-modifying
    layer without the CMS, one layer: the CMS does not touch the targets, and compiling Hope's
    gradient twice made this the suite's slowest test.)"""
    h = get_config("selfmod_tiny").n_heads
    out = {}
    for tg in (True, False):
        model, params, tokens = setup(
            "selfmod_tiny", length=8, n_layers=1, **{"selfmod.target_grad": tg}
        )
        out[tg] = jitted(model, "apply")(params, tokens)[0]
        dead = heads_without_gradient(jax.jit(jax.grad(model.loss))(params, tokens))
        assert dead == ([] if tg else [("proj", i) for i in range(h, 2 * h)]), dead
    close(out[True], out[False])


@pytest.mark.parametrize("name", ["titans_tiny", "selfmod_tiny", "hope_attention_paper_tiny"])
def test_first_order_keeps_values_and_changes_only_gradients(name):
    """``first_order``: same outputs; gradients still reach the initial states (straight through)
    but no longer through the inner updates, so they differ from the full ones. (The teach
    signal's CMS steps are second order; the default's online steps are first order already.)"""
    model, params, tokens = setup(name, length=8)
    fo = LanguageModel(dataclasses.replace(model.config, first_order=True))
    close(model.apply(params, tokens)[0], fo.apply(params, tokens)[0], atol=1e-5, rtol=1e-5)
    g_full = jax.jit(jax.grad(model.loss))(params, tokens)
    g_fo = jax.jit(jax.grad(fo.loss))(params, tokens)
    for leaf in jax.tree.leaves(g_fo):
        assert np.all(np.isfinite(np.asarray(leaf)))
    m_full, m_fo = meta_leaves(g_full), meta_leaves(g_fo)
    assert m_fo
    for key in m_fo:
        a, b = jax.tree.leaves(m_full[key])[0], jax.tree.leaves(m_fo[key])[0]
        assert float(jnp.abs(b).sum()) > 0, key
        assert not np.allclose(np.asarray(a), np.asarray(b)), key


@pytest.mark.parametrize("name", ["hope_attention_tiny"])
def test_check_grads_through_the_inner_loop(name):
    """Numerical vs autodiff directional derivatives of the loss w.r.t. the initial states of the
    memories (self-modifying Titans) and of the CMS levels (the exact "ntp" signal: through the
    inner gradients, second order; "teach" treats its first pass's errors as constants, so its
    gradient is deliberately not the loss's full derivative)."""
    model, params, tokens = setup(
        name, batch=1, length=8, d_model=16, d_ff=16, cms={"signal": "ntp"}
    )
    meta = meta_leaves(params)

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


def test_residual_teach_path_skips_only_the_mixers_gradient():
    """``cms.teach_path="residual"``: the first pass's errors come back through the residual
    stream, the CMS and the head only. The last layer's errors reach it through no mixer, so they
    equal the full network's; a lower layer's differ (its error no longer passes through the
    mixers above it)."""
    model, params, tokens = setup("hope_tiny", length=16, **{"cms.teach_path": "network"})
    layers = model.init_state(params, tokens.shape[0]).layers
    cut = model.config.cms.chunk
    full, _ = model.output_errors(params, layers, tokens, cut=cut)
    res, _ = model.output_errors(params, layers, tokens, cut=cut, through_mixer=False)
    for f, r in zip(full, res, strict=True):
        np.testing.assert_allclose(r[-1], f[-1], atol=1e-6)
        assert float(jnp.abs(r[0] - f[0]).max()) > 1e-5
    res_model = LanguageModel(model.config.replace(cms={"teach_path": "residual"}))
    a, b = jax.jit(model.loss)(params, tokens), jax.jit(res_model.loss)(params, tokens)
    assert np.isfinite(b) and not np.isclose(a, b)
    assert get_config("hope_tiny").cms.teach_path == "residual"  # the default (decisions D98)


def test_given_mixer_outputs_give_the_residual_errors():
    """``output_errors(..., mixed=...)``, the online signal's error pass (decisions D99): with
    what every mixer added to the stream given, the mixers are not run and the errors equal the
    residual path's, which runs them with their gradient held."""
    model, params, tokens = setup("hope_tiny", length=16)
    layers = model.init_state(params, tokens.shape[0]).layers
    _, (_, _, taps) = model.output_errors(params, layers, tokens, collect=True)
    res, _ = model.output_errors(params, layers, tokens, through_mixer=False)
    given, (_, new, _) = model.output_errors(
        params, layers, tokens, through_mixer=False, mixed=taps["cms"] - taps["input"]
    )
    close(given, res, atol=1e-6, rtol=1e-5)
    close(new["mixer"], layers["mixer"], atol=0, rtol=0)  # not run: its state is kept
