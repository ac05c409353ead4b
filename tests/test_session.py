"""Sessions: a deployed model keeps learning; any cut of a stream is one call; save / restore is
exact; foreign sessions are refused; a non-finite memory rolls back; the memory is O(1)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_jax import session as ses
from nested_jax.models import LanguageModel, get_config

# One layer and the label-free CMS signal keep compiles short; the session code does not depend
# on the signal (the models' streaming == parallel for every signal is tested in test_cms.py).
CONFIG = get_config(
    "hope_tiny", d_model=16, d_ff=16, max_len=16, n_layers=1, cms={"signal": "local"}
)


@pytest.fixture(scope="module")
def trained():
    model = LanguageModel(CONFIG)
    return model, model.init(jax.random.key(0))


def _tokens(n, seed=1, batch=1):
    return jax.random.randint(jax.random.key(seed), (batch, n), 0, 256)


def _close(a, b, **kw):
    kw = kw or dict(atol=1e-5, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def test_any_cut_of_a_stream_is_one_call_and_scores_next_tokens(trained):
    model, params = trained
    toks = _tokens(24)
    s0 = ses.open_session(model, params)
    whole = ses.absorb(s0, toks, piece=8)
    a = ses.absorb(s0, toks[:, :5], piece=8)
    b = ses.absorb(a.session, toks[:, 5:], piece=8)
    _close(b.session.state, whole.session.state)
    _close(jnp.concatenate([a.nll, b.nll], axis=1), whole.nll)
    assert int(whole.session.position) == 24 and whole.rolled_back == 0
    # pieces of 8 from a boundary run chunk-parallel; pieces of one token, token by token
    one = ses.absorb(s0, toks, piece=1)
    _close(one.session.state, whole.session.state)
    _close(one.nll, whole.nll)
    # the scores are the model's own next-token losses over the stream (first: uniform prior)
    logits, _ = model.step(params, model.init_state(params, 1), toks[:, :16])
    logp = jax.nn.log_softmax(logits, axis=-1)
    want = -jnp.take_along_axis(logp[:, :-1], toks[:, 1:16, None], axis=-1)[..., 0]
    _close(whole.nll[:, 1:16], want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(float(whole.nll[0, 0]), np.log(256), rtol=1e-6)


def test_policy_decides_which_levels_learn_and_when_memory_resets(trained):
    model, params = trained
    toks = _tokens(16, seed=2)
    drift = {}
    for learn in ("all", "fast", "none"):
        s = ses.absorb(ses.open_session(model, params, policy=ses.Policy(learn)), toks, piece=8)
        drift[learn] = ses.cms_drift(s.session)
        assert drift[learn].shape == (CONFIG.n_layers, len(CONFIG.cms.periods))
    assert np.all(drift["all"] > 0) and np.all(drift["fast"] == 0) and np.all(drift["none"] == 0)
    only_slow = ses.Policy(cms_levels=(False, True))
    s = ses.absorb(ses.open_session(model, params, policy=only_slow), toks, piece=8).session
    d = ses.cms_drift(s)
    assert np.all(d[:, 0] == 0) and np.all(d[:, 1] > 0)
    # the trained config is untouched; the session runs the policy's
    assert model.config.cms.periods == (4, 8) and s.model.config.cms.periods == (0, 8)
    with pytest.raises(ValueError, match="cms_levels has 1 entries"):
        ses.open_session(model, params, policy=ses.Policy(cms_levels=(True,)))
    with pytest.raises(ValueError, match="policy learn"):
        ses.Policy("some")
    # reset: "document" restarts at every document end, "never" keeps the memory
    for reset, kept in (("never", True), ("document", False)):
        s = ses.open_session(model, params, policy=ses.Policy(reset=reset))
        s = ses.end_document(ses.absorb(s, toks, piece=8).session)
        fresh = ses.open_session(model, params, policy=ses.Policy(reset=reset))
        same = all(
            np.allclose(x, y)
            for x, y in zip(jax.tree.leaves(s.state), jax.tree.leaves(fresh.state), strict=True)
        )
        assert same != kept
    # per kind: the fast memories restart per document while the CMS consolidates (= the
    # model's next_sequence with a persistent CMS), or the other way round
    read = ses.absorb(ses.open_session(model, params), toks, piece=8).session
    pol = ses.Policy(reset="never", cms_reset="document")
    s = dataclasses.replace(ses.open_session(model, params, policy=pol), state=read.state)
    s = ses.end_document(s)
    _close(s.state.layers["cms"], model.init_state(params, 1).layers["cms"], atol=0, rtol=0)
    _close(s.state.layers["mixer"], read.state.layers["mixer"], atol=0, rtol=0)
    consolidating = LanguageModel(CONFIG.replace(cms={"persistent": True}))
    pol = ses.Policy(reset="document", cms_reset="never")
    s = dataclasses.replace(ses.open_session(model, params, policy=pol), state=read.state)
    _close(
        ses.end_document(s).state, consolidating.next_sequence(params, read.state), atol=0, rtol=0
    )
    # after resetting one kind only, the chunks need not line up: absorb stays exact
    keep_fast = ses.Policy(reset="never", cms_reset="document")
    s = ses.open_session(model, params, policy=keep_fast)
    s = ses.end_document(ses.absorb(s, toks[:, :5], piece=8).session)
    assert not model.at_boundary(s.state)
    _close(ses.absorb(s, toks, piece=8).nll, ses.absorb(s, toks, piece=1).nll)
    # the same with the next-token signal (a CMS chunk in progress restarts at the boundary)
    ntp = CONFIG.replace(cms={"signal": "ntp"})
    state = jax.tree.map(lambda a: a + 1, LanguageModel(ntp).init_state(params, 1))
    s = dataclasses.replace(ses.open_session(ntp, params, policy=pol), state=state)
    want = LanguageModel(ntp.replace(cms={"persistent": True})).next_sequence(params, state)
    _close(ses.end_document(s).state, want, atol=0, rtol=0)
    # only the CMS learns: the sequence memories' learning rate is zero, the CMS's periods kept
    cms_only = ses.Policy(memories=False).model_config(model.config)
    assert cms_only.titans.eta_max == 0 and cms_only.cms.periods == (4, 8)
    assert ses.Policy("fast", memories=True).model_config(model.config).titans.eta_max > 0
    with pytest.raises(ValueError, match="policy cms_reset"):
        ses.Policy(cms_reset="sometimes")
    assert ses.Policy.from_json({"learn": "fast", "cms_levels": None, "reset": "never"}) == (
        ses.Policy("fast")
    )


def test_save_restore_is_exact_and_foreign_sessions_are_refused(trained, tmp_path):
    model, params = trained
    toks = _tokens(20, seed=3)
    live = ses.absorb(ses.open_session(model, params), toks[:, :12], piece=8).session
    ses.save_session(live, tmp_path, "notes", tokenizer="bytes")
    assert [r["name"] for r in ses.list_sessions(tmp_path)] == ["notes"]
    assert ses.list_sessions(tmp_path)[0]["position"] == 12
    back = ses.load_session(tmp_path, "notes", model, params, tokenizer="bytes")
    _close(back.state, live.state, atol=0, rtol=0)
    # what the restored session does next is exactly what the live one would have done
    go_live = ses.absorb(live, toks[:, 12:], piece=8)
    go_back = ses.absorb(back, toks[:, 12:], piece=8)
    _close(go_back.nll, go_live.nll, atol=0, rtol=0)
    _close(go_back.session.state, go_live.session.state, atol=0, rtol=0)
    other = jax.tree.map(lambda a: a + 1e-3, params)
    with pytest.raises(ses.SessionMismatchError, match="trained weights"):
        ses.load_session(tmp_path, "notes", model, other, tokenizer="bytes")
    with pytest.raises(ses.SessionMismatchError, match="tokenizer"):
        ses.load_session(tmp_path, "notes", model, params, tokenizer="bpe")
    with pytest.raises(ses.SessionMismatchError, match="model config"):
        ses.load_session(
            tmp_path, "notes", CONFIG.replace(cms={"lr": 0.5}), params, tokenizer="bytes"
        )
    with pytest.raises(FileNotFoundError, match="no session 'other'"):
        ses.load_session(tmp_path, "other", model, params)
    with pytest.raises(ValueError, match="plain non-empty name"):
        ses.save_session(live, tmp_path, "../x")


def test_non_finite_memory_rolls_back_and_memory_stays_flat(trained, caplog):
    model, params = trained
    s = ses.absorb(ses.open_session(model, params), _tokens(8, seed=4), piece=8).session
    bad = dict(params, embed=params["embed"].at[7].set(jnp.inf))
    poisoned = dataclasses.replace(s, params=bad)
    toks = jnp.full((1, 8), 7, jnp.int32)
    with caplog.at_level("WARNING", logger="nested_jax.session"):
        out = ses.absorb(poisoned, toks, piece=8)
    assert out.rolled_back == 1 and "rolled back" in caplog.text
    _close(out.session.state, s.state, atol=0, rtol=0)
    assert int(out.session.position) == 8 and bool(jnp.all(jnp.isnan(out.nll)))
    # a stream 50x the training length: the memory's size does not grow
    size = lambda st: sum(int(x.size) for x in jax.tree.leaves(st))
    long = ses.absorb(s, _tokens(50 * CONFIG.max_len, seed=5), piece=CONFIG.max_len)
    assert size(long.session.state) == size(s.state) and long.rolled_back == 0
    assert bool(jnp.all(jnp.isfinite(long.nll)))


def test_generate_reads_the_prompt_and_learns_from_what_it_writes(trained):
    model, params = trained
    s = ses.open_session(model, params)
    prompt = _tokens(5, seed=6)[0]
    s1, out = ses.generate(s, prompt, 6, key=jax.random.key(0), temperature=0)
    s2, again = ses.generate(s, prompt, 6, key=jax.random.key(9), temperature=0)
    np.testing.assert_array_equal(out, again)  # greedy: no randomness
    assert out.shape == (1, 6) and int(s1.position) == 11
    # writing is reading: the session equals one that absorbed prompt + output
    _close(s1.state, ses.absorb(s, jnp.concatenate([prompt[None], out], axis=1)).session.state)
    _, sampled = ses.generate(s, prompt, 4, key=jax.random.key(1), top_k=5, top_p=0.9)
    assert sampled.shape == (1, 4) and int(jnp.max(sampled)) < 256
    with pytest.raises(ValueError, match="top_p"):
        ses.generate(s, prompt, 1, key=jax.random.key(0), top_p=0.0)


def test_a_fact_from_an_earlier_call_is_recalled_only_when_memory_persists():
    """A small Transformer++ trained here for 150 steps to copy a string it has seen (its memory
    is the attention cache, carried in the session): the string read in one call is recalled in
    the next when the memory persists, and not after the memory is reset between the calls."""
    import optax

    model = LanguageModel(get_config("tiny", max_len=64))
    n = 12

    def copies(key, b=16):
        s = jax.random.randint(key, (b, n), 65, 91)  # capital letters
        return jnp.concatenate([s, jnp.full((b, 1), 10), s], axis=1)

    def loss(p, toks):
        logp = jax.nn.log_softmax(model.apply(p, toks)[0][:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, toks[:, 1:, None], axis=-1)[:, n:, 0])

    opt = optax.adam(3e-3)

    @jax.jit
    def step(p, st, key):
        g = jax.grad(loss)(p, copies(key))
        u, st = opt.update(g, st, p)
        return optax.apply_updates(p, u), st

    params = model.init(jax.random.key(0))
    with jax.numpy_dtype_promotion("standard"):  # optax.adam mixes float ** int32
        st = opt.init(params)
        for i in range(150):
            params, st = step(params, st, jax.random.key(i + 1))
    fact = copies(jax.random.key(10_000), b=1)  # an unseen string, then its copy
    recalled = {}
    for reset in ("never", "document"):
        s = ses.open_session(model, params, policy=ses.Policy(reset=reset))
        s = ses.end_document(ses.absorb(s, fact[:, : n + 1]).session)  # call 1: the fact
        recalled[reset] = float(jnp.mean(ses.absorb(s, fact[:, n + 1 :]).nll[:, 1:]))  # call 2
    assert recalled["never"] < 0.1 < 2.0 < recalled["document"], recalled


def test_each_new_piece_shape_is_announced_once(trained, monkeypatch, caplog):
    """A session says when a piece of a new length or form is about to compile (what a user
    waits for) and says nothing for shapes it has run."""
    import logging

    model, params = trained
    lengths = []
    real = ses._absorb_piece

    def spy(session, chunk, parallel):
        lengths.append((chunk.shape[1], parallel))
        return real(session, chunk, parallel)

    monkeypatch.setattr(ses, "_absorb_piece", spy)
    policy = ses.Policy(cms_levels=(True, True))  # a policy of this test only: fresh shapes
    s0 = ses.open_session(model, params, policy=policy)
    with caplog.at_level(logging.INFO, logger="nested_jax.session"):
        first = ses.absorb(s0, _tokens(23), piece=16)
    assert lengths == [(16, True), (7, True)]  # from boundaries: chunk-parallel
    assert caplog.text.count("compiling the session step") == 2
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nested_jax.session"):
        again = ses.absorb(s0, _tokens(23), piece=16)
    assert "compiling" not in caplog.text
    _close(again.session.state, first.session.state)
