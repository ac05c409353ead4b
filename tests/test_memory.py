"""Associative memories: reference equivalences, fast form == slow twin, gradients, isolation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nested_jax.memory import (
    DGD,
    GD,
    L2,
    DotProduct,
    LinearMemory,
    MLPMemory,
    MLPParams,
    Momentum,
    Rates,
    SoftmaxMemory,
    rule_step,
    stable_step_norm,
    unit_lower_inverse,
)

B, H, D = 2, 2, 4


def _inputs(length, key, d=D, eta_scale=0.5):
    ks = jax.random.split(key, 6)
    n = lambda k, s: jax.random.normal(k, s, jnp.float32)
    q = n(ks[0], (B, length, H, d))
    k = n(ks[1], (B, length, H, d))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = n(ks[2], (B, length, H, d))
    eta = eta_scale * jax.nn.sigmoid(n(ks[3], (B, length, H)))
    alpha = 0.9 + 0.1 * jax.nn.sigmoid(n(ks[4], (B, length, H)))
    beta = 0.5 + 0.4 * jax.nn.sigmoid(n(ks[5], (B, length, H)))
    return q, k, v, eta, alpha, beta


def _state(mem, key=jax.random.key(7)):
    kw = {"scale": 0.3} if isinstance(mem, LinearMemory) else {}
    return mem.init_state(mem.init_params(key, heads=H, d_k=D, d_v=D, **kw), B)


def _close(a, b, atol=2e-5, rtol=2e-4):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


MEMORIES = {
    "linear-hebb-gd": LinearMemory(DotProduct(), GD()),
    "linear-l2-gd": LinearMemory(L2(), GD()),
    "linear-l2-momentum": LinearMemory(L2(), Momentum(0.8)),
    "linear-l2-dgd": LinearMemory(L2(), DGD()),
    "linear-hebb-dgd-momentum": LinearMemory(DotProduct(), DGD(0.7)),
    "mlp-l2-gd": MLPMemory(8),
    "mlp-l2-momentum": MLPMemory(8, rule=Momentum(0.8)),
    "mlp-l2-dgd-momentum": MLPMemory(8, rule=DGD(0.9)),
    "mlp-hebb-nores": MLPMemory(6, objective=DotProduct(), residual=False),
    "mlp-l2-momentum-nlms": MLPMemory(8, rule=Momentum(0.8), step_norm=3.0),
    "mlp-l2-dgd-momentum-nlms": MLPMemory(8, rule=DGD(0.9), step_norm=3.0),
    "mlp-hebb-nores-nlms": MLPMemory(6, objective=DotProduct(), residual=False, step_norm=1.0),
    "softmax": SoftmaxMemory(capacity=32),
    "softmax-window": SoftmaxMemory(capacity=32, window=5),
}


# --------------------------------------------------------------------------- reference systems
def _linear_attention_direct(w0, q, k, v, eta, alpha):
    """y_t = W_{t-1} q_t with W_t = alpha_t W_{t-1} + eta_t v_t k_t^T, written as attention."""
    q, k, v, eta, alpha, w0 = map(np.asarray, (q, k, v, eta, alpha, w0))
    b, t, h, _ = q.shape
    y = np.zeros(v.shape, np.float64)
    for bi in range(b):
        for hi in range(h):
            la = np.cumsum(np.log(alpha[bi, :, hi]))
            for ti in range(t):
                decay0 = np.exp(la[ti - 1]) if ti else 1.0
                out = decay0 * w0[bi, hi] @ q[bi, ti, hi]
                for s in range(ti):
                    dec = np.exp(la[ti - 1] - la[s])
                    out += dec * eta[bi, s, hi] * v[bi, s, hi] * (k[bi, s, hi] @ q[bi, ti, hi])
                y[bi, ti, hi] = out
    return y


@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_hebbian_linear_memory_is_linear_attention(chunk):
    q, k, v, eta, alpha, _ = _inputs(19, jax.random.key(0))
    mem = LinearMemory(DotProduct(), GD())
    st = _state(mem)
    _, y = mem.write_read(st, q, k, v, eta, alpha, chunk_size=chunk)
    np.testing.assert_allclose(
        np.asarray(y), _linear_attention_direct(st.w, q, k, v, eta, alpha), atol=2e-5, rtol=1e-4
    )


def test_hebbian_without_gates_is_plain_causal_linear_attention():
    q, k, v, *_ = _inputs(12, jax.random.key(1))
    mem = LinearMemory(DotProduct(), GD())
    st = mem.init_state(mem.init_params(None, heads=H, d_k=D, d_v=D), B)
    _, y = mem.write_read(st, q, k, v, chunk_size=5)
    scores = jnp.einsum("bthd,bshd->bhts", q, k)
    strict = jnp.tril(jnp.ones((12, 12), bool), k=-1)
    expected = jnp.einsum("bhts,bshd->bthd", jnp.where(strict, scores, 0.0), v)
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), atol=1e-5, rtol=1e-5)


def test_read_after_is_standard_causal_linear_attention():
    """read="after": y_t = M_t q_t (token t sees its own write), no query shift by the caller;
    the chunked, token-by-token and streaming forms agree."""
    q, k, v, *_ = _inputs(12, jax.random.key(1))
    mem = LinearMemory(DotProduct(), GD())
    st = mem.init_state(mem.init_params(None, heads=H, d_k=D, d_v=D), B)
    scores = jnp.einsum("bthd,bshd->bhts", q, k)
    incl = jnp.tril(jnp.ones((12, 12), bool))
    expected = jnp.einsum("bhts,bshd->bthd", jnp.where(incl, scores, 0.0), v)
    for chunk in (1, 5, 12):
        _, y = mem.write_read(st, q, k, v, chunk_size=chunk, read="after")
        np.testing.assert_allclose(np.asarray(y), np.asarray(expected), atol=1e-5, rtol=1e-5)
    _, y_ref = mem.write_read_reference(st, q, k, v, chunk_size=5, read="after")
    np.testing.assert_allclose(np.asarray(y_ref), np.asarray(expected), atol=1e-5, rtol=1e-5)
    _, y_one = mem.write_read_chunk(st, q, k, v, read="after")
    np.testing.assert_allclose(np.asarray(y_one), np.asarray(expected), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["linear-l2-dgd", "mlp-l2-momentum"])
def test_read_after_fast_form_equals_slow_twin_and_stream(name):
    mem = MEMORIES[name]
    q, k, v, eta, alpha, beta = _inputs(11, jax.random.key(31), eta_scale=0.3)
    st = _state(mem)
    kw = dict(chunk_size=4, read="after")
    s_fast, y_fast = mem.write_read(st, q, k, v, eta, alpha, beta, **kw)
    s_ref, y_ref = mem.write_read_reference(st, q, k, v, eta, alpha, beta, **kw)
    _close(s_fast, s_ref)
    _close(y_fast, y_ref)
    # read after = read before with token t's query asked one token later; the states agree
    s_before, y_before = mem.write_read(st, q, k, v, eta, alpha, beta, chunk_size=4)
    _close(s_fast, s_before)
    _close(
        y_fast[:, :-1],
        mem.write_read(
            st,
            jnp.roll(q, 1, 1),
            k,
            v,
            eta,
            alpha,
            beta,
            chunk_size=4,
        )[1][:, 1:],
    )
    assert not np.allclose(np.asarray(y_fast), np.asarray(y_before))
    # streamed in pieces with a start_stream prefix == one call
    stream, y0 = mem.start_stream(
        st, q[:, :6], k[:, :6], v[:, :6], eta[:, :6], alpha[:, :6], beta[:, :6], **kw
    )
    stream, y1 = mem.stream(
        stream, q[:, 6:], k[:, 6:], v[:, 6:], eta[:, 6:], alpha[:, 6:], beta[:, 6:], **kw
    )
    _close(jnp.concatenate([y0, y1], axis=1), y_fast)
    _close(stream.state, s_fast)


def test_read_after_l2_memory_is_deltanet_output():
    """DeltaNet's usual output o_t = W_t q_t (after the write) with read="after", chunked."""
    q, k, v, eta, _, _ = _inputs(9, jax.random.key(2))
    mem = LinearMemory(L2(), GD(), gradient_at="token")
    st = _state(mem)
    _, w_final = _deltanet_direct(st.w, q, k, v, eta)
    # o_t = W_t q_t: read before at t+1 with q_t, the last one from the final state
    y_next, _ = _deltanet_direct(st.w, jnp.roll(q, 1, 1), k, v, eta)
    last = np.einsum("bhvk,bhk->bhv", w_final, np.asarray(q[:, -1], np.float64))
    expected = np.concatenate([y_next[:, 1:], last[:, None]], axis=1)
    _, y = mem.write_read(st, q, k, v, eta, chunk_size=3, read="after")
    np.testing.assert_allclose(np.asarray(y), expected, atol=2e-5, rtol=1e-4)


def test_read_order_errors():
    q, k, v, *_ = _inputs(4, jax.random.key(3))
    lin, soft = MEMORIES["linear-l2-gd"], MEMORIES["softmax"]
    with pytest.raises(ValueError, match="read must be"):
        lin.write_read(_state(lin), q, k, v, chunk_size=2, read="later")
    with pytest.raises(ValueError, match='read="before" is not available'):
        soft.write_read(_state(soft), q, k, v, chunk_size=2, read="before")
    # softmax attention already reads after its write: "after" is its default order
    y_after = soft.write_read(_state(soft), q, k, v, chunk_size=2, read="after")[1]
    _close(y_after, soft.write_read(_state(soft), q, k, v, chunk_size=2)[1])


def test_rates_one_value_broadcasts_per_head():
    mem = MEMORIES["linear-l2-momentum"]
    q, k, v, *_ = _inputs(7, jax.random.key(4))
    st = _state(mem)
    eta_h, alpha_h = jnp.array([0.2, 0.5]), jnp.array([0.9, 0.99])
    full = lambda r: jnp.broadcast_to(r, (B, 7, H))
    want = mem.write_read(st, q, k, v, full(eta_h), full(alpha_h), 0.7, chunk_size=3)
    for got in (
        mem.write_read(st, q, k, v, rates=Rates(eta_h, alpha_h, 0.7), chunk_size=3),
        mem.write_read(st, q, k, v, eta_h, alpha_h, 0.7, chunk_size=3),
        mem.write_read_reference(st, q, k, v, rates=Rates(eta_h, alpha_h, 0.7), chunk_size=3),
    ):
        _close(got, want)
    assert Rates(eta=0.5).broadcast((B, 7, H)).eta.shape == (B, 7, H)
    assert Rates(eta=0.5).broadcast((B, 7, H)).alpha is None
    with pytest.raises(ValueError, match="not both"):
        mem.write_read(st, q, k, v, 0.1, rates=Rates(0.2), chunk_size=3)
    with pytest.raises(TypeError, match="Rates"):
        mem.write_read(st, q, k, v, rates=(0.1, 0.2, 0.3), chunk_size=3)
    with pytest.raises(ValueError, match=r"alpha must be a scalar, a per-head value \[heads\]"):
        mem.write_read(st, q, k, v, rates=Rates(alpha=jnp.ones((B, H))), chunk_size=3)


def _deltanet_direct(w0, q, k, v, eta, alpha=None):
    """Gated DeltaNet written out: y_t = W_{t-1} q_t, W_t = W_{t-1}(alpha I - eta k k^T) + eta v k^T."""
    qn, kn, vn, en = (np.asarray(a, np.float64) for a in (q, k, v, eta))
    an = np.ones_like(en) if alpha is None else np.asarray(alpha, np.float64)
    w = np.asarray(w0, np.float64).copy()
    y = np.zeros(vn.shape)
    for t in range(qn.shape[1]):
        for bi in range(qn.shape[0]):
            for hi in range(qn.shape[2]):
                y[bi, t, hi] = w[bi, hi] @ qn[bi, t, hi]
                kk, e = kn[bi, t, hi], en[bi, t, hi]
                decay = an[bi, t, hi] * np.eye(kk.shape[0]) - e * np.outer(kk, kk)
                w[bi, hi] = w[bi, hi] @ decay + e * np.outer(vn[bi, t, hi], kk)
    return y, w


def test_l2_linear_memory_is_deltanet():
    q, k, v, eta, _, _ = _inputs(15, jax.random.key(2))
    mem = LinearMemory(L2(), GD())
    st = _state(mem)
    y_ref, w = _deltanet_direct(st.w, q, k, v, eta)
    for fn in (mem.write_read, mem.write_read_reference):
        s, y = fn(st, q, k, v, eta, chunk_size=1)
        np.testing.assert_allclose(np.asarray(y), y_ref, atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(np.asarray(s.w), w, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("window", [None, 4])
def test_softmax_memory_is_causal_softmax_attention(window):
    q, k, v, *_ = _inputs(13, jax.random.key(3))
    mem = SoftmaxMemory(capacity=16, window=window)
    _, y = mem.write_read(_state(mem), q, k, v, chunk_size=4)
    t = jnp.arange(13)
    mask = t[:, None] >= t[None, :]
    if window is not None:
        mask = mask & (t[:, None] - t[None, :] < window)
    logits = jnp.einsum("bthd,bshd->bhts", q, k) / D**0.5
    p = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
    expected = jnp.einsum("bhts,bshd->bthd", p, v)
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), atol=1e-5, rtol=1e-5)
    if window is None:
        ref = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-5, rtol=1e-5)


def test_softmax_memory_minimises_weighted_regression():
    """M* = argmin_M sum_i exp(<k_i, q>/sqrt d) ||v_i - M||^2, solved as weighted least squares."""
    q, k, v, *_ = _inputs(9, jax.random.key(4))
    mem = SoftmaxMemory(capacity=16)
    _, y = mem.write_read(_state(mem), q, k, v, chunk_size=9)
    qn, kn, vn = (np.asarray(a, np.float64) for a in (q, k, v))
    for t in (0, 4, 8):
        s = np.exp(kn[0, : t + 1, 0] @ qn[0, t, 0] / np.sqrt(D))
        a = np.concatenate([np.sqrt(si) * np.eye(D) for si in s])
        rhs = np.concatenate(
            [np.sqrt(si) * vi for si, vi in zip(s, vn[0, : t + 1, 0], strict=True)]
        )
        m_star = np.linalg.lstsq(a, rhs, rcond=None)[0]
        np.testing.assert_allclose(np.asarray(y[0, t, 0]), m_star, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- DGD algebra
def test_dgd_closed_form_is_exact_proximal_step():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 4))
    x = rng.normal(size=4)
    u = rng.normal(size=5)
    eta = 0.7
    # argmin_W 1/2 ||W x - u||^2 + 1/(2 eta) ||W - W_t||^2  <=>  W (I/eta + x x^T) = W_t/eta + u x^T
    exact = np.linalg.solve((np.eye(4) / eta + np.outer(x, x)).T, (w / eta + np.outer(u, x)).T).T
    # closed form with D = grad of the dot-product loss -<W x, u>: G = -u x^T
    g = -np.outer(u, x)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    got, _ = rule_step(DGD(), f32(w), None, f32(g), f32(x), f32(eta), f32(1.0), f32(0.0))
    np.testing.assert_allclose(np.asarray(got), exact, atol=1e-5, rtol=1e-5)


def test_hebbian_dgd_write_is_proximal_delta_step():
    """LinearMemory(DotProduct, DGD) writes argmin_W 1/2||W k - v||^2 + 1/(2 eta)||W - W_t||^2."""
    mem = LinearMemory(DotProduct(), DGD())
    st = _state(mem)
    k = jax.random.normal(jax.random.key(5), (B, H, D))
    v = jax.random.normal(jax.random.key(6), (B, H, D))
    eta = jnp.full((B, H), 0.4)
    new = mem.write(st, k, v, eta)
    w, kn, vn = (np.asarray(a, np.float64) for a in (st.w, k, v))
    for bi in range(B):
        for hi in range(H):
            x = kn[bi, hi]
            lhs = np.eye(D) / 0.4 + np.outer(x, x)
            exact = np.linalg.solve(lhs.T, (w[bi, hi] / 0.4 + np.outer(vn[bi, hi], x)).T).T
            np.testing.assert_allclose(np.asarray(new.w[bi, hi]), exact, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("block", [4, 16])
def test_unit_lower_inverse_matches_numpy(block):
    # up to `block` rows the squarings alone; above, blocks merged in pairs (64 = 4 blocks of
    # 16, the default chunk's size; 17, 33 and 100 are padded up to a power of two of blocks)
    inverse = jax.jit(unit_lower_inverse, static_argnames="block")  # op by op: ~8x the time
    for c in (1, 2, 3, 5, 16, 17, 33, 64, 100):
        low = np.tril(np.random.default_rng(c).normal(size=(2, c, c)), k=-1) * 0.3
        got = inverse(jnp.asarray(low, jnp.float32), block=block)
        np.testing.assert_allclose(np.asarray(got), np.linalg.inv(np.eye(c) + low), atol=1e-4)


def test_unit_lower_inverse_differentiates_in_a_scan_at_full_optimization():
    """The blocked inverse as the models run it (batched, inside a scan, differentiated),
    compiled with XLA's optimisations on (the suite switches most of them off): a first version
    that cut the blocks with ``jnp.diagonal`` failed XLA's own verification here (jax 0.10)."""

    def loss(x):
        def body(c, xc):
            low = jnp.tril(xc @ jnp.swapaxes(xc, -1, -2), -1) * 0.01
            return c + jnp.sum(unit_lower_inverse(low) @ xc), None

        return jax.lax.scan(body, jnp.zeros(()), x)[0]

    x = jax.random.normal(jax.random.key(0), (3, 2, 3, 32, 8))
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        got = jax.jit(jax.grad(loss))(x)
    finally:
        jax.config.update("jax_disable_most_optimizations", True)
    want = jax.grad(loss)(x)  # the same, at the suite's settings
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ chunk-parallel == reference
# (chunks of 19 hold the whole sequence: above 16 rows DGD's triangular inverse merges blocks)
@pytest.mark.parametrize("name", list(MEMORIES))
@pytest.mark.parametrize("chunk", [1, 4, 16, 19])
def test_chunked_equals_token_by_token(name, chunk):
    mem = MEMORIES[name]
    q, k, v, eta, alpha, beta = _inputs(19, jax.random.key(8), eta_scale=0.3)
    st = _state(mem)
    run = lambda f: jax.jit(functools.partial(f, chunk_size=chunk))(st, q, k, v, eta, alpha, beta)
    s1, y1 = run(mem.write_read)
    s2, y2 = run(mem.write_read_reference)
    _close(y1, y2)
    _close(s1, s2)


@pytest.mark.parametrize(
    "name",
    [
        "linear-l2-gd",
        "linear-l2-dgd",
        "linear-hebb-dgd-momentum",
        "mlp-l2-gd",
        "mlp-l2-dgd-momentum",
        "mlp-l2-dgd-momentum-nlms",
        "softmax-window",
    ],
)
@pytest.mark.parametrize("chunk", [1, 4, 16, 19])
def test_chunked_gradients_equal_token_by_token(name, chunk):
    mem = MEMORIES[name]
    q, k, v, eta, alpha, beta = _inputs(19, jax.random.key(9), eta_scale=0.3)
    st = _state(mem)
    probe = jax.random.normal(jax.random.key(10), v.shape)

    def loss(fn, st, q, k, v, eta, alpha, beta):
        s, y = fn(st, q, k, v, eta, alpha, beta, chunk_size=chunk)
        floats = [x for x in jax.tree.leaves(s) if jnp.issubdtype(x.dtype, jnp.floating)]
        return jnp.sum(y * probe) + sum(0.1 * jnp.sum(jnp.sin(x)) for x in floats)

    # the softmax memory has integer positions in its state and no rates: differentiate q, k, v
    argnums = (1, 2, 3) if isinstance(mem, SoftmaxMemory) else (0, 1, 2, 3, 4, 5, 6)
    g1 = jax.jit(jax.grad(functools.partial(loss, mem.write_read), argnums))(
        st, q, k, v, eta, alpha, beta
    )
    g2 = jax.jit(jax.grad(functools.partial(loss, mem.write_read_reference), argnums))(
        st, q, k, v, eta, alpha, beta
    )
    _close(g1, g2, atol=1e-4, rtol=1e-3)
    assert float(jnp.abs(g1[argnums.index(2)]).sum()) > 0  # gradient reaches the keys


@pytest.mark.parametrize("chunk", [1, 3])
def test_mlp_memory_check_grads_through_three_inner_steps(chunk):
    """Three inner writes: three sequential steps (chunk 1) or one chunk of three (chunk 3)."""
    mem = MLPMemory(5, rule=DGD(0.9))
    q, k, v, eta, alpha, beta = _inputs(3, jax.random.key(11), eta_scale=0.3)
    params = mem.init_params(jax.random.key(12), heads=H, d_k=D, d_v=D)

    def f(params, q, k, v, eta):
        st = mem.init_state(params, B)
        _, y = mem.write_read(st, q, k, v, eta, alpha, beta, chunk_size=chunk)
        return y

    with jax.numpy_dtype_promotion("standard"):
        check_grads(f, (params, q, k, v, eta), order=1, modes=("rev",), atol=2e-2, rtol=2e-2)


def test_gradient_reaches_initial_memory():
    mem = MLPMemory(8, rule=Momentum(0.9))
    q, k, v, eta, alpha, beta = _inputs(10, jax.random.key(13), eta_scale=0.3)
    params = mem.init_params(jax.random.key(14), heads=H, d_k=D, d_v=D)

    def loss(p):
        _, y = mem.write_read(mem.init_state(p, B), q, k, v, eta, alpha, beta, chunk_size=4)
        return jnp.mean((y - v) ** 2)

    g = jax.grad(loss)(params)
    for leaf in jax.tree.leaves(g):
        assert np.all(np.isfinite(np.asarray(leaf))) and float(jnp.abs(leaf).sum()) > 0


# ------------------------------------------------------------------ causality and isolation
@pytest.mark.parametrize("name", ["linear-l2-dgd", "mlp-l2-momentum", "softmax", "softmax-window"])
def test_causality_and_batch_isolation(name):
    mem = MEMORIES[name]
    q, k, v, eta, alpha, beta = _inputs(16, jax.random.key(15), eta_scale=0.3)
    st = _state(mem)
    f = jax.jit(lambda q, k, v: mem.write_read(st, q, k, v, eta, alpha, beta, chunk_size=4)[1])
    y = f(q, k, v)
    t0 = 9
    # perturb one future token (k and v) of sample 1: earlier outputs unchanged, later ones change
    y2 = f(q, k.at[1, t0].multiply(-1.0), v.at[1, t0].add(3.0))
    np.testing.assert_array_equal(np.asarray(y2[:, :t0]), np.asarray(y[:, :t0]))
    if mem.inclusive:
        assert not np.allclose(np.asarray(y2[1, t0]), np.asarray(y[1, t0]))
    else:
        np.testing.assert_array_equal(np.asarray(y2[:, t0]), np.asarray(y[:, t0]))
    assert not np.allclose(np.asarray(y2[1, t0 + 1 :]), np.asarray(y[1, t0 + 1 :]))
    # sample 0 is untouched by any change to sample 1
    np.testing.assert_array_equal(np.asarray(y2[0]), np.asarray(y[0]))
    y3 = f(q.at[1].add(1.0), k.at[1].multiply(0.5), v.at[1].add(-2.0))
    np.testing.assert_array_equal(np.asarray(y3[0]), np.asarray(y[0]))


# ------------------------------------------------------------------------- token-level API
def test_token_write_read_matches_sequence_api():
    mem = MEMORIES["linear-l2-momentum"]
    q, k, v, eta, alpha, beta = _inputs(5, jax.random.key(16))
    st = _state(mem)
    s_seq, y_seq = mem.write_read(st, q, k, v, eta, alpha, beta, chunk_size=1)
    s = st
    for t in range(5):
        np.testing.assert_allclose(
            np.asarray(mem.read(s, q[:, t])), np.asarray(y_seq[:, t]), atol=1e-5, rtol=1e-5
        )
        s = mem.write(s, k[:, t], v[:, t], eta[:, t], alpha[:, t], beta[:, t])
    _close(s, s_seq)


def test_streaming_chunks_carry_state():
    """Two calls on halves == one call on the whole (state carried between calls)."""
    mem = MEMORIES["mlp-l2-dgd-momentum"]
    q, k, v, eta, alpha, beta = _inputs(16, jax.random.key(17), eta_scale=0.3)
    st = _state(mem)
    s_all, y_all = mem.write_read(st, q, k, v, eta, alpha, beta, chunk_size=4)
    cut = lambda a, sl: a[:, sl]
    s_a, y_a = mem.write_read(
        st, *(cut(a, slice(0, 8)) for a in (q, k, v, eta, alpha, beta)), chunk_size=4
    )
    s_b, y_b = mem.write_read(
        s_a, *(cut(a, slice(8, 16)) for a in (q, k, v, eta, alpha, beta)), chunk_size=4
    )
    _close(jnp.concatenate([y_a, y_b], axis=1), y_all)
    _close(s_b, s_all)


# ---------------------------------------------------------------------------------- errors
def test_bad_inputs_are_reported():
    mem = MEMORIES["linear-l2-gd"]
    q, k, v, eta, *_ = _inputs(6, jax.random.key(18))
    st = _state(mem)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        mem.write_read(st, q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match=r"\[batch, seq, heads, dim\]"):
        mem.write_read(st, q[0], k, v, chunk_size=2)
    with pytest.raises(ValueError, match="must agree"):
        mem.write_read(st, q, k[:, :5], v, chunk_size=2)
    with pytest.raises(ValueError, match="eta must be a scalar"):
        mem.write_read(st, q, k, v, eta[:, :3], chunk_size=2)
    with pytest.raises(ValueError, match="d_k == d_v"):
        MLPMemory(4).init_params(jax.random.key(0), heads=1, d_k=3, d_v=5)
    with pytest.raises(ValueError, match="hidden must be"):
        MLPMemory(0)
    with pytest.raises(TypeError, match="rule must be"):
        LinearMemory(rule="sgd")
    with pytest.raises(ValueError, match="beta must be"):
        Momentum(1.5)
    with pytest.raises(ValueError, match="capacity"):
        SoftmaxMemory(capacity=4, window=4).write_read(
            _state(SoftmaxMemory(capacity=4, window=4)),
            q,
            k,
            v,
            chunk_size=3,
        )


def test_specs_are_hashable_for_jit_static_args():
    for mem in MEMORIES.values():
        hash(mem)
    assert LinearMemory(L2(), GD()) == LinearMemory(L2(), GD())


@pytest.mark.parametrize("chunk", [1, 4, 16, 19])
def test_exact_delta_rule_chunked_is_gated_deltanet_for_any_chunk(chunk):
    """gradient_at='token': W_t = W_{t-1}(alpha I - eta k k^T) + eta v k^T, exactly, chunked."""
    q, k, v, eta, alpha, _ = _inputs(19, jax.random.key(30))
    mem = LinearMemory(L2(), GD(), gradient_at="token")
    st = _state(mem)
    y_ref, w = _deltanet_direct(st.w, q, k, v, eta, alpha)
    for fn in (mem.write_read, mem.write_read_reference):
        s, y = fn(st, q, k, v, eta, alpha, chunk_size=chunk)
        np.testing.assert_allclose(np.asarray(y), y_ref, atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(np.asarray(s.w), w, atol=2e-5, rtol=1e-4)
    # and its gradients equal the token-by-token scan's
    f = lambda fn, k, v: jnp.sum(jnp.sin(fn(st, q, k, v, eta, alpha, chunk_size=chunk)[1]))
    g1 = jax.grad(functools.partial(f, mem.write_read), argnums=(0, 1))(k, v)
    g2 = jax.grad(functools.partial(f, mem.write_read_reference), argnums=(0, 1))(k, v)
    _close(g1, g2, atol=1e-4, rtol=1e-3)


def test_exact_mode_rejects_unsupported_rules():
    with pytest.raises(ValueError, match="GD rule only"):
        LinearMemory(L2(), Momentum(0.9), gradient_at="token")
    with pytest.raises(ValueError, match="gradient_at must be"):
        LinearMemory(gradient_at="chunk")


@pytest.mark.parametrize("name", ["linear-l2-dgd", "mlp-l2-momentum", "softmax-window"])
def test_write_read_chunk_is_one_chunk_in_the_sequence_layout(name):
    mem = MEMORIES[name]
    q, k, v, eta, alpha, beta = _inputs(7, jax.random.key(31), eta_scale=0.3)
    st = _state(mem)
    s1, y1 = mem.write_read_chunk(st, q, k, v, eta, alpha, beta)
    s2, y2 = mem.write_read(st, q, k, v, eta, alpha, beta, chunk_size=7)
    assert y1.shape == v.shape
    _close(y1, y2, atol=1e-6, rtol=1e-6)  # same math; XLA fuses differently inside a scan
    _close(s1, s2, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "name", ["linear-l2-dgd", "linear-hebb-dgd-momentum", "mlp-l2-dgd-momentum", "softmax-window"]
)
@pytest.mark.parametrize("cuts", [(5, 3, 11), (1, 18), (4, 4, 4, 7)])
def test_stream_in_pieces_equals_write_read(name, cuts):
    """Streaming arbitrary pieces keeps the chunk boundaries of the parallel form (chunk 4)."""
    mem = MEMORIES[name]
    q, k, v, eta, alpha, beta = _inputs(19, jax.random.key(40), eta_scale=0.3)
    st = _state(mem)
    s_all, y_all = mem.write_read(st, q, k, v, eta, alpha, beta, chunk_size=4)
    stream = mem.init_stream(st)
    ys, start = [], 0
    for n in cuts:
        sl = lambda a, start=start, n=n: a[:, start : start + n]
        stream, y = mem.stream(stream, *(sl(a) for a in (q, k, v, eta, alpha, beta)), chunk_size=4)
        ys.append(y)
        start += n
    _close(jnp.concatenate(ys, axis=1), y_all)
    _close(stream.state, s_all)
    assert int(stream.offset) == 19 % 4


@pytest.mark.parametrize("name", ["linear-l2-dgd", "mlp-l2-momentum", "softmax"])
@pytest.mark.parametrize("first", [4, 6, 3])
def test_start_stream_then_stream_equals_write_read(name, first):
    """A chunk-parallel prompt (start_stream) continued token by token (stream) == write_read."""
    mem = MEMORIES[name]
    q, k, v, eta, alpha, beta = _inputs(13, jax.random.key(41), eta_scale=0.3)
    st = _state(mem)
    s_all, y_all = mem.write_read(st, q, k, v, eta, alpha, beta, chunk_size=4)
    head = lambda a: a[:, :first]
    tail = lambda a: a[:, first:]
    stream, y1 = mem.start_stream(st, *(head(a) for a in (q, k, v, eta, alpha, beta)), chunk_size=4)
    assert int(stream.offset) == first % 4
    stream, y2 = mem.stream(stream, *(tail(a) for a in (q, k, v, eta, alpha, beta)), chunk_size=4)
    _close(jnp.concatenate([y1, y2], axis=1), y_all)
    _close(stream.state, s_all)


def test_first_order_keeps_values_and_cuts_the_gradient_through_updates():
    mem = MLPMemory(8, rule=DGD(0.9))
    q, k, v, eta, alpha, beta = _inputs(12, jax.random.key(21), eta_scale=0.3)
    params = mem.init_params(jax.random.key(22), heads=H, d_k=D, d_v=D)

    def loss(p, k, first_order):
        st = mem.init_state(p, B)
        _, y = mem.write_read(st, q, k, v, eta, alpha, beta, chunk_size=4, first_order=first_order)
        return jnp.mean(y**2)

    np.testing.assert_allclose(loss(params, k, True), loss(params, k, False), rtol=1e-6)
    g_full = jax.grad(loss, argnums=(0, 1))(params, k, False)
    g_fo = jax.grad(loss, argnums=(0, 1))(params, k, True)
    # the last chunk's keys (12 tokens, chunk 4) only act through reads inside their own chunk,
    # which first_order keeps exact; earlier keys also acted through carried updates
    np.testing.assert_allclose(g_fo[1][:, 8:], g_full[1][:, 8:], atol=1e-6)
    assert not np.allclose(np.asarray(g_fo[1][:, :8]), np.asarray(g_full[1][:, :8]))
    assert not np.allclose(np.asarray(g_fo[0].w2), np.asarray(g_full[0].w2))
    assert float(jnp.abs(g_fo[0].w2).sum()) > 0


def test_normalized_write_bounds_the_step_by_the_memory_gain():
    """One write of the normalised memory (GD): both layers step along their gradients with
    ``r = eta / (1 + nu eta (||h||^2 + ||k||^2 sum_j act'(p_j)^2 ||W1[:, j]||^2))``, and the output
    at the key moves along the error by less than ``1 / nu`` of it, even at a huge ``eta``."""
    nu = 2.0
    mem = MLPMemory(8, rule=GD(), step_norm=nu)
    st = _state(mem)
    st = st._replace(w1=st.w1 * 30.0)  # a large second layer: W2's share of the step dominates
    _, k, v, eta, _, _ = _inputs(1, jax.random.key(30), eta_scale=1e4)
    k, v, eta = k[:, 0], v[:, 0], eta[:, 0]
    new = mem.write(st, k, v, eta)
    g1, g2 = jax.grad(
        lambda w1, w2: jnp.sum(mem.objective.loss(mem.apply(MLPParams(w1, w2), k), v)),
        argnums=(0, 1),
    )(st.w1, st.w2)
    pre = jnp.einsum("bhjk,bhk->bhj", st.w2, k)
    h = jax.nn.silu(pre)
    dact = jax.vmap(jax.vmap(jax.vmap(jax.grad(jax.nn.silu))))(pre)
    g = jnp.sum(dact**2 * jnp.sum(st.w1**2, axis=-2), -1)
    gain = jnp.sum(h * h, -1) + jnp.sum(k * k, -1) * g
    r = (eta / (1 + nu * eta * gain))[..., None, None]
    _close(new.w1, st.w1 - r * g1)
    _close(new.w2, st.w2 - r * g2)
    err = mem.read(st, k) - v
    moved = jnp.sum((mem.read(st, k) - mem.read(new, k)) * err, -1) / jnp.sum(err * err, -1)
    assert float(moved.max()) < 1 / nu + 1e-3, moved  # first order; a tiny curvature margin
    assert float(moved.min()) > 0


def test_step_bound_above_one_lets_a_write_overshoot_its_target():
    """``stable_step_norm(..., bound=2)`` (``nu = 1/2``): one write at a large rate moves the
    output at its key past the target, so the error along the old error changes sign on every
    head (the deep memory's negative eigenvalue); with ``bound = 1/2`` (``nu = 2``) it does not."""
    _, k, v, eta, _, _ = _inputs(1, jax.random.key(30), eta_scale=1e4)
    k, v, eta = k[:, 0], v[:, 0], eta[:, 0]
    left = {}
    for bound in (0.5, 2.0):
        mem = MLPMemory(8, rule=GD(), step_norm=stable_step_norm(1, None, bound))
        st = _state(mem)
        err = mem.read(st, k) - v
        after = mem.read(mem.write(st, k, v, eta), k) - v
        left[bound] = jnp.sum(after * err, -1) / jnp.sum(err * err, -1)
    assert float(left[0.5].min()) > 0, left  # short of the target: the error keeps its sign
    assert float(left[2.0].max()) < 0, left  # past it: the error flips


def test_dgd_write_stays_short_of_its_target_at_any_rate_or_bound():
    """DGD cannot overshoot (decisions D88): at rates from 1 to 10^4 times ``_inputs``' and step
    bounds 1 and 2, one DGD write moves the output at its key toward the target but by less than
    half the error (its decay of ``W2`` along ``k`` erases the layer's response to the key), where
    plain GD at the same rate and bound 2 passes the target (the test above)."""
    _, k, v, eta, _, _ = _inputs(1, jax.random.key(30), eta_scale=1.0)
    k, v, eta = k[:, 0], v[:, 0], eta[:, 0]
    for bound in (1.0, 2.0):
        mem = MLPMemory(8, rule=DGD(None), step_norm=stable_step_norm(1, None, bound))
        st = _state(mem)
        err = mem.read(st, k) - v
        for scale in (1.0, 1e2, 1e4):
            after = mem.read(mem.write(st, k, v, eta * scale), k) - v
            moved = 1.0 - jnp.sum(after * err, -1) / jnp.sum(err * err, -1)
            assert float(moved.min()) > 0.0 and float(moved.max()) < 0.5, (bound, scale, moved)


def test_normalized_memory_is_stable_at_any_rate():
    """Far above the plain memory's stability bound (hidden 128, momentum 0.9: eta <~ 0.01) the
    plain memory blows up while the normalised one (``nu = C / (1 - beta)``) stays bounded,
    chunked and token by token."""
    n = 256
    q, k, v, _, alpha, _ = _inputs(n, jax.random.key(31), d=16)
    eta = jnp.full(k.shape[:3], 2.0)
    sizes = []
    for nu in (0.0, stable_step_norm(8, 0.9)):
        mem = MLPMemory(128, rule=DGD(0.9), step_norm=nu)
        st = mem.init_state(mem.init_params(jax.random.key(32), heads=H, d_k=16, d_v=16), B)
        s, y = jax.jit(functools.partial(mem.write_read, chunk_size=8))(st, q, k, v, eta, alpha)
        size = float(jnp.max(jnp.abs(y)))
        sizes.append(size if np.isfinite(size) else np.inf)
        if nu:
            _, y_ref = jax.jit(functools.partial(mem.write_read_reference, chunk_size=8))(
                st, q, k, v, eta, alpha
            )
            _close(y, y_ref, atol=1e-4, rtol=1e-3)
    assert sizes[0] > 1e6, sizes  # the plain memory diverged
    assert sizes[1] < 100.0, sizes  # values are ~N(0, 1): the normalised one tracks them


@pytest.mark.parametrize("name", ["mlp-l2-dgd-momentum", "linear-l2-dgd", "softmax"])
def test_gradient_cut_keeps_values_and_blocks_gradients_between_blocks(name):
    """``gradient_cut=8``: same outputs; an output in block [8, 16) has no gradient with respect
    to keys or values of block [0, 8), and keeps its gradient inside its own block."""
    mem = MEMORIES[name]
    q, k, v, eta, alpha, beta = _inputs(16, jax.random.key(33), eta_scale=0.3)
    st = _state(mem)

    def out(k, v, cut):
        if isinstance(mem, SoftmaxMemory):
            return mem.write_read_chunk(st, q, k, v, gradient_cut=cut)[1]
        return mem.write_read(st, q, k, v, eta, alpha, beta, chunk_size=4, gradient_cut=cut)[1]

    exact = not isinstance(mem, SoftmaxMemory)  # attention sums two einsums: rounding only
    _close(out(k, v, 8), out(k, v, 0), **({"atol": 0, "rtol": 0} if exact else {}))
    loss = lambda k, v, cut: jnp.sum(out(k, v, cut)[:, 8:] ** 2)
    gk, gv = jax.grad(loss, argnums=(0, 1))(k, v, 8)
    assert float(jnp.abs(gk[:, :8]).sum() + jnp.abs(gv[:, :8]).sum()) == 0.0
    assert float(jnp.abs(gk[:, 8:]).sum()) > 0
    gk0, _ = jax.grad(loss, argnums=(0, 1))(k, v, 0)
    assert float(jnp.abs(gk0[:, :8]).sum()) > 0  # without the cut the gradient reaches back
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        if isinstance(mem, SoftmaxMemory):
            raise ValueError("gradient_cut must be a multiple of chunk_size")  # no chunks here
        mem.write_read(st, q, k, v, chunk_size=4, gradient_cut=6)


@pytest.mark.parametrize("name", ["linear-l2-momentum", "mlp-l2-dgd-momentum"])
def test_heads_first_chunk_api_equals_write_read_chunk(name):
    """``write_chunk`` (heads-first layout, no read) gives ``write_read_chunk``'s state, and the
    MLP memory's ``apply_chunk`` is its ``apply`` token by token."""
    mem = MEMORIES[name]
    state = _state(mem)
    q, k, v, eta, alpha, beta = _inputs(6, jax.random.key(3))
    want, _ = mem.write_read_chunk(state, q, k, v, eta, alpha, beta)
    hf = lambda a: jnp.swapaxes(a, 1, 2)  # [B, C, H, ...] -> [B, H, C, ...]
    got = mem.write_chunk(state, hf(k), hf(v), Rates(hf(eta), hf(alpha), hf(beta)))
    _close(got, want)
    if isinstance(mem, MLPMemory):
        z = hf(q)  # [B, H, C, d]
        per_token = jax.vmap(lambda zt: mem.apply(state, zt), in_axes=2, out_axes=2)(z)
        _close(mem.apply_chunk(state, z), per_token)


def test_every_memory_has_one_state_protocol():
    """``init_state(init_params(key, heads=, d_k=, d_v=), batch)`` for every memory, attention
    included (its params are only the context's shapes); the old softmax call is a clear error."""
    for name, mem in MEMORIES.items():
        st = mem.init_state(mem.init_params(jax.random.key(0), heads=H, d_k=D, d_v=D), B)
        for leaf in jax.tree.leaves(st):
            assert leaf.shape[0] == B, name
    with pytest.raises(TypeError, match="takes \\(params, batch_size\\)"):
        SoftmaxMemory(capacity=4).init_state(B, B)


@pytest.mark.parametrize(
    "mem",
    [LinearMemory(L2(), GD()), MLPMemory(8), MLPMemory(8, self_target=True), SoftmaxMemory(16)],
    ids=["linear", "mlp", "mlp_self_target", "softmax"],
)
def test_inputs_of_the_wrong_width_are_one_clear_error(mem):
    """Keys, values or heads that do not fit the state fail before any matmul, saying which."""
    if isinstance(mem, SoftmaxMemory):
        state = mem.init_state(mem.init_params(heads=2, d_k=4, d_v=4), 1)
    else:
        state = mem.init_state(mem.init_params(jax.random.key(0), heads=2, d_k=4, d_v=4), 1)
    x = jnp.ones((1, 3, 2, 4))
    mem.write_read(state, x, x, x, 0.1, chunk_size=2)  # the right widths run
    bad = ((jnp.ones((1, 3, 2, 5)), x), (x, jnp.ones((1, 3, 2, 6))), (x[:, :, :1], x[:, :, :1]))
    for k, v in bad:
        with pytest.raises(ValueError, match="state takes 2 heads of keys of width 4"):
            mem.write_read(state, k, k, v, 0.1, chunk_size=2)
        with pytest.raises(ValueError, match="state takes 2 heads of keys of width 4"):
            mem.write_read_reference(state, k, k, v, 0.1, chunk_size=2)
        with pytest.raises(ValueError, match="state takes 2 heads of keys of width 4"):
            mem.stream(mem.init_stream(state), k, k, v, 0.1, chunk_size=2)


@pytest.mark.parametrize(
    "mem",
    [MLPMemory(8, rule=DGD(0.9), step_norm=3.0, self_target=True), MLPMemory(8, rule=GD())],
    ids=["dgd-momentum-nlms-self-target", "gd"],
)
def test_mlp_chunk_reads_only_the_heads_it_is_given_queries_for(mem):
    """Queries for the first ``r`` of ``H`` heads: every head writes as before and the reads are
    the full call's first ``r`` heads (the stacked memories of self-modifying Titans)."""
    b, h, c, d, r = 2, 3, 5, 4, 1
    params = mem.init_params(jax.random.key(0), heads=h, d_k=d, d_v=d)
    state = mem.init_state(params, b)
    ks = jax.random.split(jax.random.key(1), 5)
    q, k, v = (jax.random.normal(ks[i], (b, h, c, d)) / 2 for i in range(3))
    eta = 0.05 * jax.random.uniform(ks[3], (b, h, c))
    alpha = 0.9 + 0.1 * jax.random.uniform(ks[4], (b, h, c))
    beta = jnp.full((b, h, c), 0.9)
    rates = Rates(eta, alpha, beta)
    full_state, full_y = mem.write_read_heads(state, q, k, v, rates)
    part_state, part_y = mem.write_read_heads(state, q[:, :r], k, v, rates)
    assert part_y.shape == (b, r, c, d)
    np.testing.assert_allclose(part_y, full_y[:, :r], atol=1e-6)
    for a, e in zip(jax.tree.leaves(part_state), jax.tree.leaves(full_state), strict=True):
        np.testing.assert_allclose(a, e, atol=1e-6)
