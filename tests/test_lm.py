"""The LanguageModel API (models/lm.py): parallel == token by token == streaming, streams continued
from boundaries, the training form's attention sizing, causality and batch isolation, no recompilation,
training steps, token ids checked, what each layer reads."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from model_helpers import (
    LINEAR,
    MODELS,
    check_prefix_then_stream,
    close,
    heads_without_gradient,
    jitted,
    setup,
    setup_model,
    stream,
)

from nested_jax import optim
from nested_jax.memory import SoftmaxState
from nested_jax.models import get_config


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
def test_no_recompilation_on_second_call(name, caplog):
    """New values of the same shapes reuse the compiled apply (the one the tests above built):
    JAX logs no trace or compile for the second call (``jax.log_compiles``)."""
    model, params, tokens = setup_model(name)
    f = jitted(model, "apply")
    f(params, tokens)
    new_params, new_tokens = jax.tree.map(lambda a: a * 1.01, params), (tokens + 1) % 256
    with jax.log_compiles(), caplog.at_level(logging.WARNING, logger="jax"):
        f(new_params, new_tokens)
    assert not [r for r in caplog.records if "Compiling" in r.getMessage()]
    assert not [r for r in caplog.records if "tracing" in r.getMessage()]


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


def test_next_sequence_resets_or_keeps_the_cms():
    for persistent in (False, True):
        model, params, tokens = setup(
            "hope_attention_tiny", length=8, cms={"persistent": persistent}
        )
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


def test_teach_errors_come_from_the_own_chunk_only():
    """Pass 1's output errors of chunk c do not depend on the targets of later chunks."""
    model, params, tokens = setup("hope_tiny", length=16, cms={"signal": "teach", "periods": (8,)})
    state = model.init_state(params, 2)
    errs, _ = model.output_errors(params, state.teach, tokens, cut=8)
    other = tokens.at[:, 9:].set((tokens[:, 9:] + 7) % 256)
    errs2, _ = model.output_errors(params, state.teach, other, cut=8)
    close(errs[0][:, :, :8], errs2[0][:, :, :8], atol=0, rtol=0)
    assert not np.allclose(np.asarray(errs[0][:, :, 8:]), np.asarray(errs2[0][:, :, 8:]))
    assert float(jnp.abs(errs[0][:, :, :8]).sum()) > 0


def test_token_ids_outside_the_vocabulary_are_refused():
    """The embedding lookup would clamp an id >= vocab_size (wrong results, no error): concrete
    tokens are checked in apply / step / loss and in sessions; traced ones (inside jit) are not."""
    from nested_jax import session as ses

    model, params, tokens = setup("tiny", length=4)
    for bad in (tokens.at[0, 2].set(256), tokens.at[1, 0].set(-1)):
        with pytest.raises(ValueError, match=r"token ids must be in \[0, vocab_size=256\)"):
            model.apply(params, bad)
        with pytest.raises(ValueError, match="token ids must be in"):
            ses.absorb(ses.open_session(model, params, batch_size=2), bad)
    logits, _ = jax.jit(model.apply)(params, tokens)  # in range, and under jit: no check
    assert logits.shape == (2, 4, 256)


def test_sample_token_greedy_top_k_and_top_p():
    """The one sampler (CLI, training loop, sessions): greedy is the argmax, and so are top_k=1
    and a tiny top_p at any temperature; otherwise draws stay inside the top_k set."""
    from nested_jax.models import sample_token

    logits = jax.random.normal(jax.random.key(3), (4, 50))
    best = jnp.argmax(logits, axis=-1)
    key = jax.random.key(4)
    np.testing.assert_array_equal(sample_token(logits, key, temperature=0), best)
    np.testing.assert_array_equal(sample_token(logits, key, temperature=2.0, top_k=1), best)
    np.testing.assert_array_equal(sample_token(logits, key, temperature=2.0, top_p=1e-6), best)
    top3 = jax.lax.top_k(logits, 3)[1]
    for k in jax.random.split(key, 20):
        tok = sample_token(logits, k, temperature=5.0, top_k=3)
        assert bool(jnp.all(jnp.any(top3 == tok[:, None], axis=-1)))
