"""Multi-frequency runner: masked == nested == Python loop; jit == eager; no recompilation; errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nested_jax import Level, fire, firing_schedule, run_levels, run_levels_reference, scan_chunks


def _update(i):
    """A non-linear level: state {w, c}; output depends on state and input (so order matters)."""

    def update(state, x):
        w, c = state["w"], state["c"]
        y = jnp.tanh(w * x + 0.1 * (i + 1))
        new = {"w": w - 0.3 * (w * x - jnp.sin(x)) * x, "c": c + jnp.sum(x)}
        return new, y

    return update


def _levels(periods):
    return tuple(Level(f"L{i}", p, _update(i)) for i, p in enumerate(periods))


def _states(n, key):
    ks = jax.random.split(key, n)
    return tuple({"w": jax.random.normal(k, (3,)), "c": jnp.zeros(())} for k in ks)


def _xs(length, key):
    return jax.random.normal(key, (length, 3))


def _assert_same(a, b, atol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


PERIODS = [(1,), (1, 3), (2, 4, 8), (1, 5, 7)]


@pytest.mark.parametrize("periods", PERIODS)
@pytest.mark.parametrize("length", [13, 19])
def test_masked_equals_python_loop(periods, length):
    levels = _levels(periods)
    states = _states(len(periods), jax.random.key(1))
    xs = _xs(length, jax.random.key(2))
    ref = run_levels_reference(levels, states, xs)
    fast = run_levels(levels, states, xs, form="masked")
    _assert_same(fast.states, ref.states)
    _assert_same(fast.outputs, ref.outputs)
    np.testing.assert_array_equal(np.asarray(fast.fired), np.asarray(ref.fired))
    np.testing.assert_array_equal(np.asarray(fast.fired), firing_schedule(periods, length))


@pytest.mark.parametrize("periods", [(1,), (1, 3), (2, 4, 8), (4, 2, 8, 2)])
@pytest.mark.parametrize("length", [13, 19, 16])
def test_nested_equals_masked(periods, length):
    levels = _levels(periods)
    states = _states(len(periods), jax.random.key(3))
    xs = _xs(length, jax.random.key(4))
    a = run_levels(levels, states, xs, form="masked")
    b = run_levels(levels, states, xs, form="nested")
    _assert_same(a.states, b.states)
    _assert_same(a.outputs, b.outputs)
    np.testing.assert_array_equal(np.asarray(a.fired), np.asarray(b.fired))


def test_python_loop_is_the_literal_rule():
    """The reference itself against hand-written arithmetic for a scalar accumulating level."""
    lv = Level("sum", 3, lambda s, x: (s + x, s))
    res = run_levels_reference((lv,), (jnp.zeros(()),), jnp.arange(1.0, 8.0))
    # increments 1..7; fires after t=2 (1+2+3=6) and t=5 (4+5+6=15); 7 stays pending
    assert float(res.states[0]) == 21.0
    np.testing.assert_array_equal(np.asarray(res.outputs[0]), [0, 0, 0, 6, 6, 6, 21])


def test_frozen_level_never_updates_but_emits():
    levels = (
        Level("fast", 1, _update(0)),
        Level("frozen", None, _update(1)),
        Level("z", 0, _update(2)),
    )
    states = _states(3, jax.random.key(5))
    xs = _xs(9, jax.random.key(6))
    for form in ("masked", "nested"):
        res = run_levels(levels, states, xs, form=form)
        _assert_same(res.states[1], states[1], atol=0)
        _assert_same(res.states[2], states[2], atol=0)
        assert not np.any(np.asarray(res.fired)[:, 1:])
        assert res.outputs[1].shape == (9, 3)


@pytest.mark.parametrize("form", ["masked", "nested"])
def test_jit_equals_eager_and_no_recompile(form):
    levels = _levels((1, 2, 4))
    states = _states(3, jax.random.key(7))
    xs = _xs(11, jax.random.key(8))
    traces = []

    def fn(states, xs):
        traces.append(1)
        return run_levels(levels, states, xs, form=form)

    jitted = jax.jit(fn)
    out1 = jitted(states, xs)
    out2 = jitted(_states(3, jax.random.key(9)), xs + 1.0)
    assert len(traces) == 1, "second call with the same shapes must not retrace"
    eager = run_levels(levels, states, xs, form=form)
    _assert_same(out1, eager)
    assert not np.allclose(np.asarray(out1.outputs[0]), np.asarray(out2.outputs[0]))


def test_jit_with_levels_static():
    levels = _levels((1, 3))
    states = _states(2, jax.random.key(10))
    xs = _xs(7, jax.random.key(11))
    f = jax.jit(run_levels, static_argnames=("levels", "form"))
    _assert_same(f(levels, states, xs), run_levels(levels, states, xs))


def test_gradients_flow_through_levels():
    levels = _levels((1, 3))
    xs = _xs(8, jax.random.key(12))

    def loss(states):
        return jnp.sum(run_levels(levels, states, xs).outputs[1] ** 2)

    g = jax.grad(loss)(_states(2, jax.random.key(13)))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(g))
    assert float(jnp.abs(g[0]["w"]).sum()) > 0


@pytest.mark.parametrize(
    "period, exc, match",
    [
        (1.5, TypeError, "period must be an int"),
        (-2, ValueError, ">= 0"),
        ("3", TypeError, "int"),
        (True, TypeError, "int"),
    ],
)
def test_bad_period(period, exc, match):
    with pytest.raises(exc, match=match):
        Level("bad", period, _update(0))


def test_numpy_int_period_accepted():
    assert Level("ok", np.int64(4), _update(0)).period == 4


def test_inputs_with_disagreeing_lengths():
    levels = _levels((1,))
    xs = {"a": jnp.ones((5, 3)), "b": jnp.ones((6, 3))}
    with pytest.raises(ValueError, match="disagree on the leading"):
        run_levels(levels, _states(1, jax.random.key(0)), xs)


def test_scalar_input_and_empty():
    levels = _levels((1,))
    with pytest.raises(ValueError, match="leading time axis"):
        run_levels(levels, _states(1, jax.random.key(0)), jnp.ones(()))
    with pytest.raises(ValueError, match="empty"):
        run_levels(levels, _states(1, jax.random.key(0)), jnp.ones((0, 3)))


def test_nested_needs_dividing_periods():
    with pytest.raises(ValueError, match="does not divide"):
        run_levels(
            _levels((2, 3)), _states(2, jax.random.key(0)), _xs(6, jax.random.key(1)), form="nested"
        )


def test_state_count_and_unknown_form():
    with pytest.raises(ValueError, match="one state per level"):
        run_levels(_levels((1, 2)), _states(1, jax.random.key(0)), _xs(4, jax.random.key(1)))
    with pytest.raises(ValueError, match="form must be"):
        run_levels(
            _levels((1,)), _states(1, jax.random.key(0)), _xs(4, jax.random.key(1)), form="fast"
        )
    with pytest.raises(ValueError, match="unique"):
        run_levels(
            (Level("a", 1, _update(0)),) * 2,
            _states(2, jax.random.key(0)),
            _xs(4, jax.random.key(1)),
        )


def test_candidate_shape_change_is_reported():
    bad = Level("grow", 1, lambda s, x: (jnp.concatenate([s, s]), x))
    with pytest.raises(ValueError, match="keep shapes"):
        run_levels((bad,), (jnp.ones(2),), jnp.ones((3, 2)))


@pytest.mark.parametrize(
    "form, periods, cut",
    [
        ("masked", (1, 3), 7),
        ("masked", (2, 4, 8), 5),
        ("masked", (1, 5, 7), 9),
        ("nested", (1, 3), 6),
        ("nested", (2, 4, 8), 8),
    ],
)
def test_stream_in_two_calls_equals_one(form, periods, cut):
    levels = _levels(periods)
    states = _states(len(periods), jax.random.key(20))
    xs = _xs(21, jax.random.key(21))
    whole = run_levels(levels, states, xs, form=form)
    a = run_levels(levels, states, xs[:cut], form=form)
    b = run_levels(levels, a.states, xs[cut:], form=form, pending=a.pending, start=cut)
    _assert_same(b.states, whole.states)
    _assert_same(b.pending, whole.pending)
    _assert_same(jnp.concatenate([a.outputs[-1], b.outputs[-1]]), whole.outputs[-1])
    np.testing.assert_array_equal(
        np.concatenate([np.asarray(a.fired), np.asarray(b.fired)]), np.asarray(whole.fired)
    )
    ref = run_levels_reference(levels, a.states, xs[cut:], pending=a.pending, start=cut)
    _assert_same(ref.states, b.states)


def test_bad_start_and_pending():
    levels = _levels((2, 4))
    states = _states(2, jax.random.key(0))
    xs = _xs(8, jax.random.key(1))
    with pytest.raises(ValueError, match="multiple of the slowest period"):
        run_levels(levels, states, xs, form="nested", start=2)
    with pytest.raises(ValueError, match="start must be"):
        run_levels(levels, states, xs, start=-1)
    with pytest.raises(ValueError, match="pending has"):
        run_levels(levels, states, xs, pending=(states[0],))


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    periods=st.lists(st.one_of(st.none(), st.integers(0, 6)), min_size=1, max_size=3),
    length=st.integers(1, 17),
)
def test_masked_equals_loop_for_random_configs(periods, length):
    levels = _levels(tuple(periods))
    states = _states(len(periods), jax.random.key(length))
    xs = _xs(length, jax.random.key(100 + length))
    ref = run_levels_reference(levels, states, xs)
    fast = run_levels(levels, states, xs)
    _assert_same(fast.states, ref.states)
    _assert_same(fast.outputs, ref.outputs)
    _assert_same(fast.pending, ref.pending)
    np.testing.assert_array_equal(np.asarray(fast.fired), firing_schedule(periods, length))


# --- scan_chunks: the chunk engine under the memories, CMS, self-modifying Titans and the LM ------


def _chunk_fn(w, x, g):
    """A state-dependent chunk step: ``x: [B, C, d]``, ``g: [B, C]`` -> (w', y [B, C, d])."""
    y = jnp.tanh(x @ w) * g[..., None]
    return w - 0.1 * jnp.einsum("bcd,bce->de", x, y), y


def _chunk_loop(w, x, g, c):
    """The slow twin: a Python loop over chunks and the tail."""
    ys, bnd = [], w
    for s in range(0, x.shape[1], c):
        if s + c <= x.shape[1]:
            bnd = None
        w, y = _chunk_fn(w, x[:, s : s + c], g[:, s : s + c])
        ys.append(y)
        bnd = w if bnd is None else bnd
    return w, jnp.concatenate(ys, axis=1), bnd


@pytest.mark.parametrize(("length", "c"), [(12, 4), (14, 4), (3, 4), (7, 1), (4, 4), (6, 4)])
def test_scan_chunks_equals_a_loop_over_chunks_and_the_tail(length, c):
    """Several chunks run in a scan, a single one without a loop (``(4, 4)``, ``(6, 4)``): the
    same values as the loop, with ``prep`` applied either way."""

    kw, kx, kg = jax.random.split(jax.random.key(0), 3)
    w = 0.3 * jax.random.normal(kw, (5, 5))
    x = jax.random.normal(kx, (2, length, 5))
    g = jax.random.uniform(kg, (2, length))
    res = scan_chunks(_chunk_fn, w, (x, g), c, axis=1, remat=True)
    w_ref, y_ref, bnd_ref = _chunk_loop(w, x, g, c)
    np.testing.assert_allclose(res.outputs, y_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res.carry, w_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res.boundary, bnd_ref, rtol=1e-6, atol=1e-6)
    assert res.tail == length % c
    prep = lambda x, g: (2.0 * x, g)  # state-independent work, on the chunks and the tail
    pre = scan_chunks(_chunk_fn, w, (x, g), c, axis=1, prep=prep, remat=True)
    w_ref2, y_ref2, _ = _chunk_loop(w, 2.0 * x, g, c)
    np.testing.assert_allclose(pre.outputs, y_ref2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pre.carry, w_ref2, rtol=1e-6, atol=1e-6)
    # unrolled (at most 3 chunks here, or always): the same values, gradients included
    for upto in (3, 100):
        unrolled = scan_chunks(_chunk_fn, w, (x, g), c, axis=1, remat=True, unroll_upto=upto)
        np.testing.assert_allclose(unrolled.outputs, y_ref, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(unrolled.carry, w_ref, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(unrolled.boundary, bnd_ref, rtol=1e-6, atol=1e-6)
    grad = lambda upto: jax.grad(
        lambda w: jnp.sum(
            jnp.sin(scan_chunks(_chunk_fn, w, (x, g), c, axis=1, unroll_upto=upto).outputs)
        )
    )(w)
    np.testing.assert_allclose(grad(100), grad(0), rtol=1e-5, atol=1e-6)
    # whole=True: one call on every full chunk together (here a different computation: one chunk)
    whole = scan_chunks(_chunk_fn, w, (x, g), c, axis=1, whole=True)
    n = length // c * c
    if n:
        w1, y1 = _chunk_fn(w, x[:, :n], g[:, :n])
        np.testing.assert_allclose(whole.boundary, w1, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(whole.outputs[:, :n], y1, rtol=1e-6, atol=1e-6)


def test_scan_chunks_cut_first_order_and_tail_fn():
    """``cut`` and ``first_order`` keep the values and change only gradients; ``tail_fn`` runs on
    the tail; bad chunk sizes and cuts are refused."""

    w = 0.3 * jax.random.normal(jax.random.key(1), (5, 5))
    x = jax.random.normal(jax.random.key(2), (2, 10, 5))
    g = jnp.ones((2, 10))

    def loss(w, **kw):
        res = scan_chunks(_chunk_fn, w, (x, g), 2, axis=1, **kw)
        return jnp.sum(res.outputs[:, -1] ** 2), res.outputs

    (l0, y0), g0 = jax.value_and_grad(loss, has_aux=True)(w)
    for kw in ({"cut": 4}, {"first_order": True}):
        (l1, y1), g1 = jax.value_and_grad(lambda w, kw=kw: loss(w, **kw), has_aux=True)(w)
        np.testing.assert_allclose(y1, y0, rtol=1e-6, atol=1e-6)
        assert not np.allclose(g1, g0)
    # cut=4 over 10 tokens: the last output (token 9, block 8-9) sees the carry only through
    # chunk 8-9's own start, whose gradient is stopped: no gradient reaches w at all
    (_, _), g_cut = jax.value_and_grad(lambda w: loss(w, cut=4), has_aux=True)(w)
    np.testing.assert_allclose(g_cut, 0.0)
    x9 = jax.random.normal(jax.random.key(3), (2, 9, 5))
    res = scan_chunks(
        _chunk_fn, w, (x9, g[:, :9]), 4, axis=1, tail_fn=lambda w, xt, gt: (w, 0 * xt)
    )
    assert res.tail == 1
    np.testing.assert_array_equal(res.outputs[:, 8:], 0.0)
    np.testing.assert_array_equal(res.carry, res.boundary)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        scan_chunks(_chunk_fn, w, (x, g), 0, axis=1)
    with pytest.raises(ValueError, match="must be 0 or a multiple of chunk_size"):
        scan_chunks(_chunk_fn, w, (x, g), 4, axis=1, cut=6)
    with pytest.raises(ValueError, match="disagree on the time axis"):
        scan_chunks(_chunk_fn, w, (x, g[:, :9]), 4, axis=1)


def test_fire_adds_the_pending_increments_and_clears_them_only_where_the_flag_is_set():

    state, pending = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([0.5, -1.0])}
    for flag in (True, jnp.array(True)):
        s, p = fire(state, pending, flag)
        np.testing.assert_array_equal(s["w"], [1.5, 1.0])
        np.testing.assert_array_equal(p["w"], [0.0, 0.0])
    for flag in (False, jnp.array(False)):
        s, p = fire(state, pending, flag)
        np.testing.assert_array_equal(s["w"], state["w"])
        np.testing.assert_array_equal(p["w"], pending["w"])
    # traced under jit (the CMS fires on a traced position)
    s, p = jax.jit(fire)(state, pending, jnp.array(True))
    np.testing.assert_array_equal(s["w"], [1.5, 1.0])


def test_fire_with_a_commit_and_lazily():
    """A level whose slow state is not a sum passes its own commit (M3's slow momentum); the
    lazy form (``lax.cond``: the commit runs only where the flag is set) gives the same values,
    and under a traced False flag the lazy commit is not executed."""
    state, pending = (jnp.array([1.0, 2.0]), jnp.zeros(2)), jnp.array([0.5, -1.0])
    commit = lambda s, p: (0.9 * s[0] + p, jnp.tanh(0.9 * s[0] + p))
    calls = []

    def counted(s, p):
        jax.debug.callback(lambda: calls.append(1))
        return commit(s, p)

    for flag in (True, False):
        want = fire(state, pending, flag, commit)
        for lazy in (False, True):
            got = jax.jit(lambda f, lazy=lazy: fire(state, pending, f, commit, lazy=lazy))(
                jnp.array(flag)
            )
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    kept, pend = fire(state, pending, False, commit)
    np.testing.assert_array_equal(kept[0], state[0])
    np.testing.assert_array_equal(pend, pending)
    fired, cleared = fire(state, pending, True, commit)
    np.testing.assert_allclose(fired[0], [1.4, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(cleared, [0.0, 0.0])
    lazy_fire = jax.jit(lambda f: fire(state, pending, f, counted, lazy=True))
    jax.block_until_ready(lazy_fire(jnp.array(False)))
    assert calls == []
    jax.block_until_ready(lazy_fire(jnp.array(True)))
    jax.effects_barrier()
    assert calls == [1]


def test_peek_sees_every_pre_firing_state_in_all_three_forms():
    """``peek`` reads every level's pre-firing state before the chain: a literal check on an
    accumulating level (the peeked state moves only when a level fires), then masked == nested
    == reference with a peek that feeds the last level's state to the first."""
    counter = Level("sum", 3, lambda s, x: (s + x[0], x[1]))
    res = run_levels_reference(
        (counter,),
        (jnp.zeros(()),),
        (jnp.arange(1.0, 8.0), jnp.zeros(7)),
        peek=lambda sts, x: (x[0], sts[0]),
    )
    # the state seen at step t: 0 until it fires after t=2 (6), then after t=5 (21)
    np.testing.assert_array_equal(np.asarray(res.outputs[0]), [0, 0, 0, 6, 6, 6, 21])

    def peek(sts, x):  # every state, including a later level's, shifts level 0's input
        return x + sts[-1]["w"] + 0.5 * sts[0]["w"]

    for periods in [(1, 2), (2, 4, 8), (1, 4)]:
        levels = _levels(periods)
        states = _states(len(periods), jax.random.key(11))
        xs = _xs(13, jax.random.key(12))
        ref = run_levels_reference(levels, states, xs, peek=peek)
        plain = run_levels(levels, states, xs)
        assert not np.allclose(np.asarray(ref.outputs[0]), np.asarray(plain.outputs[0]))
        for form in ("masked", "nested"):
            fast = run_levels(levels, states, xs, form=form, peek=peek)
            _assert_same(fast.states, ref.states)
            _assert_same(fast.outputs, ref.outputs)
    with pytest.raises(TypeError, match="peek must be a callable"):
        run_levels(levels, states, xs, peek=3)
