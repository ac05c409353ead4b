"""The SwiGLU memory (memory/swiglu.py): a CMS level's memory, learning from external errors."""

import jax
import jax.numpy as jnp
import pytest
from model_helpers import close

from nested_jax.memory import SwiGLUMemory, nlms_rate
from nested_jax.models.layers import swiglu

MEM = SwiGLUMemory(8, 16)


def _state(seed=0, batch=2):
    return MEM.init_state(MEM.init_params(jax.random.key(seed)), batch)


def test_apply_is_a_swiglu_mlp_per_sample():
    state = _state()
    n = jax.random.normal(jax.random.key(1), (2, 5, 8))
    for s in range(2):
        close(MEM.apply(state, n)[s], swiglu(jax.tree.map(lambda a, s=s: a[s], state), n[s]))


def test_write_is_minus_the_gradient_of_the_errors_inner_product():
    """increment = -grad_theta sum_t <M_theta(n_t), e_t>, with e computed from the outputs."""
    state = _state(2)
    n = jax.random.normal(jax.random.key(3), (2, 4, 8))
    target = jax.random.normal(jax.random.key(4), (2, 4, 8))
    out, inc = MEM.write(state, n, lambda out: 0.3 * (out - target))
    close(out, MEM.apply(state, n))
    e = 0.3 * (MEM.apply(state, n) - target)
    g = jax.grad(lambda th: jnp.sum(MEM.apply(th, n) * e))(state)
    close(inc, jax.tree.map(jnp.negative, g), atol=1e-6, rtol=1e-5)
    new = MEM.write_chunk(state, n, out - target, 0.3)
    close(new, jax.tree.map(jnp.add, state, inc), atol=1e-6, rtol=1e-5)


def test_backward_from_the_cache_is_the_vjp_of_the_forward():
    """`backward` from `apply_cached`'s cache: ``d_n`` is the input's vector-Jacobian product,
    the increment minus the weights' one (``write``'s), the gain `gain`; no gradient through
    any of them."""
    state = _state(11)
    n = jax.random.normal(jax.random.key(12), (2, 4, 8))
    e = jax.random.normal(jax.random.key(13), (2, 4, 8))
    out, cache = MEM.apply_cached(state, n)
    close(out, MEM.apply(state, n))
    d_n, inc, gain = MEM.backward(state, n, cache, e)
    _, pull = jax.vjp(MEM.apply, state, n)
    d_state, want_d_n = pull(e)
    close(d_n, want_d_n, atol=1e-6, rtol=1e-5)
    close(inc, jax.tree.map(jnp.negative, d_state), atol=1e-6, rtol=1e-5)
    close(gain, MEM.gain(state, n), atol=1e-6, rtol=1e-5)

    def loss(state, n):
        out, cache = MEM.apply_cached(state, n)
        d_n, inc, gain = MEM.backward(state, n, cache, e)
        return jnp.sum(jnp.sin(d_n)) + jnp.sum(jnp.sin(inc["w_gate"])) + jnp.sum(gain)

    g = jax.grad(loss, argnums=(0, 1))(state, n)
    assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree.leaves(g))


def test_read_and_step_is_apply_write_and_gain_from_one_forward():
    """`read_and_step` gives `apply`'s output (with its gradient), `write`'s increment and
    `gain`, the last two as constants of the outer gradient."""
    state = _state(8)
    n = jax.random.normal(jax.random.key(9), (2, 4, 8))
    e = jax.random.normal(jax.random.key(10), (2, 4, 8))
    out, inc, gain = MEM.read_and_step(state, n, e)
    close(out, MEM.apply(state, n))
    close(inc, MEM.write(state, n, lambda out: e)[1], atol=1e-6, rtol=1e-5)
    close(gain, MEM.gain(state, n), atol=1e-6, rtol=1e-5)

    def loss(state, n, which):
        out, inc, gain = MEM.read_and_step(state, n, e)
        return jnp.sum(jnp.sin((out, inc["w_up"], gain)[which]))

    g_out = jax.grad(loss, argnums=(0, 1))(state, n, 0)
    want = jax.grad(lambda s, n: jnp.sum(jnp.sin(MEM.apply(s, n))), argnums=(0, 1))(state, n)
    close(g_out, want, atol=1e-6, rtol=1e-5)
    for which in (1, 2):  # the step and the gain carry no gradient
        g = jax.grad(loss, argnums=(0, 1))(state, n, which)
        assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree.leaves(g))


def test_samples_learn_apart():
    state = _state(5)
    n = jax.random.normal(jax.random.key(6), (2, 4, 8))
    e = jax.random.normal(jax.random.key(7), (2, 4, 8))
    new = MEM.write_chunk(state, n, e.at[1].set(0.0))
    close(jax.tree.map(lambda a: a[1], new), jax.tree.map(lambda a: a[1], state), atol=0, rtol=0)


def test_gain_bounds_a_gradient_step():
    """A rate-r step of <M(n), e> on all three matrices moves the output at n along e by
    r * (its projection) <= r * gain * ||e||^2 (first order: tiny r)."""
    p = _state(40, batch=1)
    for s in range(4):
        n = jax.random.normal(jax.random.key(41 + s), (1, 1, 8))
        e = jax.random.normal(jax.random.key(51 + s), (1, 1, 8))
        r = 1e-4
        new = MEM.write_chunk(p, n, e, r)
        moved = -jnp.sum((MEM.apply(new, n) - MEM.apply(p, n)) * e) / r
        bound = MEM.gain(p, n)[0, 0] * jnp.sum(e * e)
        assert 0 < float(moved) <= float(bound) * 1.01, (moved, bound)


def test_a_normalised_step_never_overshoots_its_target():
    """With the NLMS rate ``nlms_rate(eta, gain)`` a step towards a target at a huge ``eta``
    moves the output by at most the error (first order: small errors)."""
    p = _state(60, batch=1)
    n = jax.random.normal(jax.random.key(61), (1, 1, 8))
    target = MEM.apply(p, n) + 1e-3 * jax.random.normal(jax.random.key(62), (1, 1, 8))
    err = MEM.apply(p, n) - target
    rate = nlms_rate(1e6, MEM.gain(p, n))[..., None]
    new = MEM.write_chunk(p, n, err, rate)
    moved = MEM.apply(p, n) - MEM.apply(new, n)
    assert float(jnp.sum(moved * err)) <= float(jnp.sum(err * err)) * 1.01


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError, match="positive int"):
        SwiGLUMemory(bad, 4)
