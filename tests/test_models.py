"""Models: parallel == token-by-token == streaming, causality, isolation, training, configs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from model_helpers import (
    check_prefix_then_stream,
    close,
    heads_without_gradient,
    jitted,
    setup,
    stream,
)

from nested_jax import optim
from nested_jax.memory import SoftmaxState
from nested_jax.models import CMSConfig, LanguageModel, ModelConfig, get_config, list_configs
from nested_jax.models.layers import causal_conv, rms_norm, rope, swiglu

MODELS = ["tiny", "titans_tiny", "selfmod_tiny", "hope_tiny", "hope_attention_tiny"]
# the linear-memory family: Titans layers with a matrix memory (reduced cases; written out below)
LINEAR = ["linear_attention_tiny", "deltanet_tiny", "gated_deltanet_tiny"]


def setup_model(name, **kw):
    """``setup`` with one layer for the memory models (their compile time grows with depth;
    stacking layers is the same scanned code for every kind, tested here with the two-layer
    Transformer++ and in test_cms.py with two-layer Hopes)."""
    return setup(name, **({} if name == "tiny" else {"n_layers": 1}), **kw)


@pytest.mark.parametrize("name", MODELS + LINEAR)
def test_parallel_equals_reference_equals_streaming(name):
    """Three-way equivalence, streaming in pieces that divide the length (1) and that do not (3),
    and continuing a parallel prefix that ends mid-chunk."""
    model, params, tokens = setup_model(name)
    par, s_par = jitted(model, "apply")(params, tokens)
    ref, s_ref = jitted(model, "apply_reference")(params, tokens)
    close(par, ref)
    close(s_par, s_ref)
    for chunk in (1, 3):
        streamed, s_stream = stream(model, params, tokens, chunk)
        close(par, streamed)
        close(s_par, s_stream)
    check_prefix_then_stream(model, params, tokens, par, s_par, start=7, piece=3)


@pytest.mark.parametrize("name", ["tiny", "titans_tiny", "hope_attention_tiny"])
def test_parallel_step_continues_a_stream_from_a_boundary(name):
    """``step(parallel=True)`` from a state that has read a multiple of ``boundary`` tokens
    equals the token-by-token step (what sessions use to read long streams fast; Hope's is
    tested through sessions in test_session.py: pieces of 1 token == pieces of 8)."""
    model, params, _ = setup_model(name)
    n = max(model.boundary, 4)
    assert n % model.boundary == 0
    tokens = jax.random.randint(jax.random.key(3), (2, 2 * n), 0, 256)
    fast = jax.jit(functools.partial(model.step, parallel=True))
    s0 = model.init_state(params, 2)
    a, s1 = fast(params, s0, tokens[:, :n])
    assert model.at_boundary(s0) and model.at_boundary(s1)
    if model.boundary > 1:  # one token later it is not
        assert not model.at_boundary(jitted(model, "step")(params, s1, tokens[:, n : n + 1])[1])
    b, s2 = fast(params, s1, tokens[:, n:])  # the same compiled program, a carried state
    ref, s_ref = stream(model, params, tokens, 2 * n)
    close(jnp.concatenate([a, b], axis=1), ref)
    close(s2, s_ref)


def test_transformer_block_is_a_plain_transformer():
    """The block (attention through SoftmaxMemory) equals a Transformer++ layer written directly."""
    model, params, tokens = setup("tiny", length=12)
    c = model.config
    p = jax.tree.map(lambda a: a[0], params["layers"])
    x = params["embed"][tokens]
    got, _ = model.block(p, model.block.init_state(p, 2), x)
    h = rms_norm(x, p["attn_norm"])
    pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
    split = lambda a: a.reshape(2, 12, c.n_heads, c.head_dim)
    q, k = rope(split(h @ p["wq"]), pos), rope(split(h @ p["wk"]), pos)
    att = jax.nn.dot_product_attention(q, k, split(h @ p["wv"]), is_causal=True)
    y = x + att.reshape(2, 12, -1) @ p["wo"]
    y = y + swiglu(p["mlp"], rms_norm(y, p["mlp_norm"]))
    np.testing.assert_allclose(np.asarray(got), np.asarray(y), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["tiny", "hope_attention_tiny"])
def test_training_form_attends_over_the_sequence_not_max_len(name):
    """From a fresh state the attention memories hold the sequence only: the training step's
    work does not grow with ``max_len`` (it did: every query scored ``max_len`` slots), and the
    returned state is the full-capacity one that ``step`` continues (the three-way test above
    checks its values)."""
    flops = {}
    for max_len in (16, 128):
        model, params, tokens = setup_model(name, length=16, max_len=max_len)
        lowered = jax.jit(model.loss).lower(params, tokens)
        flops[max_len] = lowered.compile().cost_analysis()["flops"]
        _, state = jitted(model, "apply")(params, tokens)
        caps = {
            s.pos.shape[-1]
            for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, SoftmaxState))
            if isinstance(s, SoftmaxState)
        }
        assert caps == {max_len}
    assert flops[128] == pytest.approx(flops[16], rel=0.02)


def test_sliding_window_attention_sees_the_last_window_tokens():
    """``attn_window=w``: each position's logits (one layer) equal full attention's over the
    last ``w`` tokens alone; streamed in pieces of ``c`` through a ring buffer of only
    ``w + c - 1`` slots it equals the parallel form."""
    w, n = 4, 12
    model, params, tokens = setup("tiny", n_layers=1, length=n)
    win = LanguageModel(model.config.replace(attn_window=w))
    par, _ = jax.jit(win.apply)(params, tokens)
    full = jax.jit(model.apply)
    for p in range(n):
        alone, _ = full(params, tokens[:, max(0, p - w + 1) : p + 1])
        close(par[:, p], alone[:, -1])
    c = 3
    ring = LanguageModel(model.config.replace(attn_window=w, max_len=w + c - 1))
    streamed, _ = stream(ring, params, tokens, c)
    close(par, streamed)
    with pytest.raises(ValueError, match="attn_window"):
        get_config("tiny", attn_window=0)
    # the ring buffer needs max_len >= T + w - 1 for T tokens at once: the error says so
    short = LanguageModel(model.config.replace(attn_window=w, max_len=n))
    with pytest.raises(ValueError, match="max_len >= T \\+ attn_window - 1"):
        short.apply(params, tokens)


@pytest.mark.parametrize("name", MODELS)
def test_causality_and_batch_isolation(name):
    model, params, tokens = setup_model(name)  # the default test shape: apply compiled once
    f = lambda t: jitted(model, "apply")(params, t)[0]
    base = f(tokens)
    t0 = 7
    changed = f(tokens.at[1, t0].set((tokens[1, t0] + 1) % 256))
    np.testing.assert_array_equal(np.asarray(changed[:, :t0]), np.asarray(base[:, :t0]))
    np.testing.assert_array_equal(np.asarray(changed[0]), np.asarray(base[0]))
    assert not np.allclose(np.asarray(changed[1, t0:]), np.asarray(base[1, t0:]))


@pytest.mark.parametrize("name", MODELS)
def test_no_recompilation_on_second_call(name):
    """New values of the same shapes reuse the compiled apply (the one the tests above built)."""
    model, params, tokens = setup_model(name)
    f = jitted(model, "apply")
    f(params, tokens)
    n = f._cache_size()  # other tests in this process may have called it at other shapes
    f(jax.tree.map(lambda a: a * 1.01, params), (tokens + 1) % 256)
    assert f._cache_size() == n


@pytest.mark.parametrize("name", MODELS)
def test_two_training_steps_lower_the_loss_and_gradients_reach_every_parameter(name):
    model, params, tokens = setup_model(name, batch=4, length=16)
    tx = optim.adam_memory(1e-2)
    state = tx.init(params)

    @jax.jit
    def train_step(params, state):
        loss, g = jax.value_and_grad(model.loss)(params, tokens)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state, loss, g

    params, state, l0, g = train_step(params, state)
    for path, leaf in jax.tree_util.tree_leaves_with_path(g):
        assert np.all(np.isfinite(np.asarray(leaf))), jax.tree_util.keystr(path)
        assert float(jnp.abs(leaf).sum()) > 0, jax.tree_util.keystr(path)
    assert not heads_without_gradient(g)  # every memory of a stack learns, the value one too
    params, state, l1, _ = train_step(params, state)
    l2 = model.loss(params, tokens)
    assert float(l2) < float(l1) < float(l0)


def test_registry_sizes():
    assert {"tiny", "small"} <= set(list_configs())
    small = LanguageModel(get_config("small"))
    n = small.num_params(jax.eval_shape(small.init, jax.random.key(0)))
    assert 9e6 < n < 12e6
    assert get_config("tiny", n_layers=3).n_layers == 3


def test_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="unknown config"):
        get_config("huge")
    with pytest.raises(ValueError, match="kind must be"):
        ModelConfig(kind="rnn")
    with pytest.raises(ValueError, match="divisible by n_heads"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="must be\\s+even"):
        ModelConfig(d_model=30, n_heads=2)
    with pytest.raises(ValueError, match="positive int"):
        ModelConfig(n_layers=0)
    model, params, tokens = setup("tiny")
    with pytest.raises(ValueError, match="integer array"):
        model.apply(params, tokens.astype(jnp.float32))
    with pytest.raises(ValueError, match="exceeds the model's max_len"):
        model.apply(params, jnp.zeros((1, 129), jnp.int32))


def test_token_nll_and_matched_d_ff():
    """``token_nll`` is the per-position next-token loss the models, the teach signal and the
    experiments share; ``matched_d_ff`` finds the MLP width of a parameter count."""
    from nested_jax.models import count_params, matched_d_ff, token_nll

    logits = jax.random.normal(jax.random.key(0), (2, 5, 7))
    tokens = jax.random.randint(jax.random.key(1), (2, 5), 0, 7)
    nll = token_nll(logits, tokens)
    logp = jax.nn.log_softmax(logits, axis=-1)
    for b in range(2):
        for t in range(4):
            assert float(nll[b, t]) == pytest.approx(-float(logp[b, t, tokens[b, t + 1]]), 1e-6)
    config = get_config("tiny")
    target = count_params(get_config("tiny", d_ff=100))
    assert matched_d_ff(config, target) == 100
    assert matched_d_ff(config, target, multiple=8) == 96  # 96 and 104 are 4 units away: smaller
    assert count_params(get_config("tiny", d_ff=104)) > target
    with pytest.raises(ValueError, match="multiple"):
        matched_d_ff(config, target, multiple=0)


def test_configs_say_what_their_blocks_have():
    """``has_cms`` and ``attends`` (used instead of tests on ``kind``) for every registry kind."""
    want = {
        "tiny": (False, True),
        "titans_tiny": (False, False),
        "selfmod_tiny": (False, False),
        "hope_tiny": (True, False),
        "hope_attention_tiny": (True, True),
    }
    for name, (has_cms, attends) in want.items():
        c = get_config(name)
        assert (c.has_cms, c.attends) == (has_cms, attends), name
        model = LanguageModel(c)
        assert ("cms" in model.init(jax.random.key(0))["layers"]) == has_cms, name


def test_model_config_has_sub_configs_and_reads_old_runs():
    """Titans / self-modifying / CMS settings live in sub-configs; replace() takes a field, a
    sub-config dict or a dotted path; flat names of older runs are migrated, or refused with
    their new name."""
    from nested_jax.models.config import migrate_model_json

    cfg = get_config("hope_tiny")
    assert isinstance(cfg.cms, CMSConfig) and cfg.cms.periods == (4, 8) and cfg.cms.chunk == 4
    a = cfg.replace(cms={"signal": "ntp"}, n_layers=3)
    b = cfg.replace(**{"cms.signal": "ntp", "n_layers": 3})
    assert a == b and a.cms.signal == "ntp" and a.cms.periods == (4, 8) and a.n_layers == 3
    assert get_config("hope_tiny", cms={"signal": "ntp"}, n_layers=3) == a
    assert cfg.replace(cms=CMSConfig(periods=(8,))).cms.signal == "teach"
    assert ModelConfig.from_json(a.to_json()) == a
    with pytest.raises(ValueError, match="'cms_signal' is now 'cms.signal'"):
        cfg.replace(cms_signal="ntp")
    with pytest.raises(ValueError, match="unknown field 'cms.colour'"):
        cfg.replace(cms={"colour": 1})
    with pytest.raises(TypeError, match="cms must be a CMSConfig"):
        ModelConfig(cms=(8, 16))
    # a switch that is not a bool is refused by name, not read as a truth value
    for field, bad in (
        ("selfmod.target_grad", 0),
        ("selfmod.self_values", "false"),
        ("titans.inner_norm", None),
        ("cms.persistent", 1),
        ("first_order", "no"),
    ):
        with pytest.raises(TypeError, match=f"{field} must be True or False"):
            cfg.replace(**{field: bad})
    assert cfg.replace(**{"selfmod.target_grad": False}).selfmod.target_grad is False
    old = {k: v for k, v in cfg.to_json().items() if k not in ("titans", "selfmod", "cms")}
    old.update(mem_chunk=4, sm_chunk=2, cms_periods=[4, 8], cms_signal="ntp")
    assert migrate_model_json(old)["cms"] == {"periods": [4, 8], "signal": "ntp"}
    assert ModelConfig.from_json(old) == cfg.replace(cms={"signal": "ntp"})
    # a run saved before attn_window and the ablation switches existed reads as the same model
    # (its checkpoint still matches); one saved before inner_norm does not (its default changed)
    now = cfg.to_json()
    before = {k: v for k, v in now.items() if k != "attn_window"}
    added = ("rule", "retention", "self_values")
    before["selfmod"] = {k: v for k, v in now["selfmod"].items() if k not in added}
    memory_fields = ("memory", "objective", "rule", "retention")  # the Titans layer's memory
    before["titans"] = {
        k: v for k, v in now["titans"].items() if k != "inner_norm" and k not in memory_fields
    }
    migrated = migrate_model_json(before)
    assert migrated["selfmod"] == now["selfmod"] and migrated["attn_window"] is None
    assert "inner_norm" not in migrated["titans"]
    assert {k: migrated["titans"][k] for k in memory_fields} == {
        k: now["titans"][k] for k in memory_fields
    }
    flat = {}
    for head, v in before.items():
        flat.update({f"{head}.{k}": x for k, x in v.items()} if isinstance(v, dict) else {head: v})
    assert migrate_model_json(flat)["selfmod.rule"] == "dgd"  # checkpoints' flat form too
    assert "titans.inner_norm" not in migrate_model_json(flat)
    # nor one saved before the momentum gate was capped (D82): its gate meant something else
    flat.pop("titans.beta_max")
    assert "titans.beta_max" not in migrate_model_json(flat)


@pytest.mark.parametrize("name", ["selfmod_tiny", "hope_tiny"])
def test_layer_inputs_and_what_the_self_modifying_memories_generate(name):
    """``layer_inputs`` is the residual stream of the training form: layer 0 reads the
    embeddings; collecting it leaves the logits unchanged (Hope: the teach signal's final pass);
    without a CMS each layer maps its input to the next one's. ``generated`` gives what the
    memories write: unit keys, rates inside their bounds."""
    from nested_jax.models.self_modifying import SelfModifyingTitans

    small = dict(n_layers=2, d_model=16, d_ff=16, max_len=32)
    model, params, tokens = setup(name, length=20, **small)
    state = model.init_state(params, 2)

    def both(p, t):  # one program: the training form, and the same pass collecting the inputs
        return model.apply(p, t)[0], *model.layer_inputs(p, t, with_logits=True)

    want, logits, inputs = jax.jit(both)(params, tokens)
    close(logits, want)
    assert inputs.shape == (2, 2, 20, 16)
    close(inputs[0], params["embed"][tokens])
    if name == "selfmod_tiny":  # without the logits: the same inputs
        close(model.layer_inputs(params, tokens), inputs)
    layer = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
    p0, s0 = layer(params["layers"], 0), layer(state.layers, 0)
    if name == "selfmod_tiny":
        nxt, _ = model.block(p0, s0, inputs[0])
        close(nxt, inputs[1])
    mixer = SelfModifyingTitans(model.config)
    mp, ms = (p0["mixer"], s0["mixer"]) if name == "hope_tiny" else (p0["mixer"], s0)
    g = mixer.generated(mp, ms, inputs[0])
    assert g["k"].shape == g["v"].shape == (2, 20, 2, 8) and g["eta"].shape == (2, 20, 2)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(g["k"]), axis=-1), 1.0, atol=1e-5)
    eta, alpha = np.asarray(g["eta"]), np.asarray(g["alpha"])
    assert np.all((eta > 0) & (eta < model.config.titans.eta_max)) and np.all(
        (alpha > 0) & (alpha < 1)
    )


@pytest.mark.parametrize("name", LINEAR)
def test_linear_memory_titans_layers_are_deltanet_and_linear_attention(name):
    """A Titans layer with a matrix memory and the GD rule is, written out token by token:
    DeltaNet ``W_t = W_{t-1} (alpha_t I - eta_t k_t k_t^T) + eta_t v_t k_t^T`` (``alpha = 1``
    ungated), or linear attention ``W_t = alpha_t W_{t-1} + eta_t v_t k_t^T``; token ``t`` reads
    ``W_{t-1} q_t`` (the prediction of ``v_t``, as every memory here)."""
    model, params, tokens = setup(name, length=11, n_layers=1)
    c = model.config
    assert c.titans.memory == "linear" and c.titans.rule == "gd"
    p = jax.tree.map(lambda a: a[0], params["layers"])
    x = params["embed"][tokens]
    got, _ = model.block(p, model.block.init_state(p, 2), x)
    b, t, d, nh, hd = 2, 11, c.d_model, c.n_heads, c.head_dim
    h = rms_norm(x, p["norm"])
    hist = jnp.zeros((b, c.titans.conv_width - 1, 3 * d))
    qkv = jax.nn.silu(causal_conv(p["conv"], h @ p["wqkv"], hist)[0]).reshape(b, t, 3, nh, hd)
    unit = lambda a: a / jnp.sqrt(jnp.sum(a * a, -1, keepdims=True) + 1e-6)
    q, k, v = unit(qkv[:, :, 0]), unit(qkv[:, :, 1]), qkv[:, :, 2]
    gates = (h @ p["w_gates"] + p["b_gates"][None, None]).reshape(b, t, 3, nh)
    eta = c.titans.eta_max * jax.nn.sigmoid(gates[:, :, 0])
    alpha = jax.nn.sigmoid(gates[:, :, 1]) if c.titans.retention else jnp.ones_like(eta)
    w = jnp.broadcast_to(p["memory"].w, (b, nh, hd, hd))
    ys = []
    for i in range(t):
        ys.append(jnp.einsum("bhvk,bhk->bhv", w, q[:, i]))
        e, a = eta[:, i, :, None, None], alpha[:, i, :, None, None]
        outer = v[:, i, :, :, None] * k[:, i, :, None, :]
        if c.titans.objective == "l2":  # the delta rule
            kk = k[:, i, :, :, None] * k[:, i, :, None, :]
            w = w @ (a * jnp.eye(hd)[None, None] - e * kk) + e * outer
        else:  # Hebbian
            w = a * w + e * outer
    y = jnp.stack(ys, axis=1).reshape(b, t, d)
    y = rms_norm(y, p["out_norm"]) * jax.nn.silu(h @ p["w_gate_out"])
    want = x + y @ p["wo"]
    want = want + swiglu(p["mlp"], rms_norm(want, p["mlp_norm"]))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-4)


def test_titans_memory_options_are_checked():
    with pytest.raises(ValueError, match="titans.memory must be one of"):
        get_config("titans_tiny", titans={"memory": "deep"})
    with pytest.raises(ValueError, match="titans.rule must be one of"):
        get_config("titans_tiny", **{"titans.rule": "dgd"})
    with pytest.raises(ValueError, match="kind='titans'"):
        get_config("hope_tiny", **{"titans.memory": "linear"})
    # the deep memory with other objectives / rules builds and is finite
    model, params, tokens = setup(
        "titans_tiny", n_layers=1, titans={"rule": "gd", "objective": "dot"}
    )
    assert model.block.memory.objective.__class__.__name__ == "DotProduct"
    assert np.all(np.isfinite(np.asarray(jitted(model, "apply")(params, tokens)[0])))


def test_titans_momentum_gate_is_capped_where_the_step_bound_is_computed():
    """The momentum gate ``beta = beta_max sigmoid(.)`` never exceeds ``titans.beta_max``, and the
    inner steps' normalisation (NLMS) is computed at ``beta_max``: the bound then holds for every
    gate value. (An uncapped gate normalised at 0.9 learned beta ~ 0.9995 on a run of repeated
    bytes in the language-modelling grid and the momentum grew without bound; decisions D82.)
    With every gate saturated (largest rate, no forgetting, largest momentum) the memory state
    stays bounded on repeated and on changing bytes."""
    from nested_jax.memory import stable_step_norm

    model, params, _ = setup("titans_tiny", n_layers=1, max_len=512, titans={"chunk": 16})
    c = model.config.titans
    assert model.block.memory.step_norm == stable_step_norm(16, c.beta_max)
    lp = jax.tree.map(lambda a: a[0], params["layers"])
    h = model.config.n_heads
    beta0 = c.beta_max * jax.nn.sigmoid(lp["b_gates"][2 * h :])
    np.testing.assert_allclose(np.asarray(beta0), 0.9, rtol=1e-6)  # 0.9 at init, as before
    saturated = {
        **params,
        "layers": {
            **params["layers"],
            "b_gates": jnp.full_like(params["layers"]["b_gates"], 30.0),
            "w_gates": jnp.zeros_like(params["layers"]["w_gates"]),
        },
    }
    for text in (b" " * 512, b"To be, or not to be: " * 23 + b"x" * 6):
        tokens = jnp.asarray(np.frombuffer(text, np.uint8).astype(np.int32))[None]
        logits, state = jitted(model, "apply")(saturated, tokens)
        memory = state.layers["memory"].state  # weights and momenta, [layer, batch, ...]
        big = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(memory))
        assert np.all(np.isfinite(np.asarray(logits))) and big < 10.0, big
    with pytest.raises(ValueError, match="beta_max"):
        get_config("titans_tiny", **{"titans.beta_max": 1.0})


def test_step_bound_scales_every_deep_memorys_normalisation():
    """``titans.step_bound`` divides the NLMS strength of Titans' memory and of every memory of
    self-modifying Titans / Hope (main, k / v / q, eta / alpha): ``nu = C / ((1 - beta) bound)``;
    1 is the default and what earlier runs used; outside (0, 2] it is refused."""
    from nested_jax.memory import stable_step_norm
    from nested_jax.models.self_modifying import SelfModifyingTitans

    for bound in (1.0, 2.0):
        model, _, _ = setup("titans_tiny", n_layers=1, **{"titans.step_bound": bound})
        chunk = model.config.titans.chunk
        assert model.block.memory.step_norm == pytest.approx(chunk / 0.05 / bound)
        c = get_config("hope_tiny", **{"titans.step_bound": bound, "selfmod.momentum": None})
        layer = SelfModifyingTitans(c)
        assert layer.main_memory.step_norm == pytest.approx(4 / bound)
        assert layer.proj_memory.step_norm == pytest.approx(2 / bound)
        assert layer.gate_memory.step_norm == pytest.approx(2 / bound)
    for bad in (0.0, 2.5):
        with pytest.raises(ValueError, match="titans.step_bound must be in"):
            get_config("hope_tiny", **{"titans.step_bound": bad})
    with pytest.raises(ValueError, match="step bound must be in"):
        stable_step_norm(4, 0.9, 3.0)
