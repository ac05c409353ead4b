"""Flax NNX wrappers: the same numbers as the functional blocks and memories, in an NNX model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import nested_jax.nnx as njx
from nested_jax.memory import DGD, L2, LinearMemory, MLPMemory
from nested_jax.models import get_config
from nested_jax.models.hope import HopeBlock
from nested_jax.models.self_modifying import SelfModifyingBlock

TOL = dict(atol=2e-5, rtol=2e-4)


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL)


# A small local-signal Hope: its CMS learns inside the block (no language-model loss needed).
CONFIG = get_config("hope_tiny", d_model=16, d_ff=16, max_len=16, cms={"signal": "local"})


def test_hope_block_equals_the_functional_block_and_carries_its_memory():
    block = njx.hope_block(CONFIG, batch_size=2, rngs=nnx.Rngs(0))
    fn = HopeBlock(CONFIG)
    params = block.get_params()
    x = jax.random.normal(jax.random.key(1), (2, 8, 16))
    want, st = fn(params, fn.init_state(params, 2), x)
    _close(block(x), want)
    _close(block.memory_state.get_value(), st)
    # carry=True continues from the stored state: two calls == one call over both halves
    block.reset()
    y1 = block(x[:, :4], carry=True)
    y2 = block(x[:, 4:], carry=True)
    _close(jnp.concatenate([y1, y2], axis=1), want)
    _close(block.memory_state.get_value(), st)
    with pytest.raises(ValueError, match="carry=True continues the stored state of batch 2"):
        block(x[:1], carry=True)
    with pytest.raises(ValueError, match="hope_block needs kind"):
        njx.hope_block(get_config("tiny"), batch_size=1, rngs=nnx.Rngs(0))


def test_a_hope_block_trains_inside_a_flax_model():
    """The outer gradient (nnx.grad through the block's inner learning) equals jax.grad of the
    functional form, and an nnx.Optimizer step on a user's model with a Hope block lowers its loss."""

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.inp = nnx.Linear(4, 16, rngs=rngs)
            self.hope = njx.self_modifying_block(
                get_config("selfmod_tiny", d_model=16, d_ff=16, max_len=16),
                batch_size=2,
                rngs=rngs,
            )
            self.out = nnx.Linear(16, 4, rngs=rngs)

        def __call__(self, x):
            return self.out(self.hope(self.inp(x)))

    model = Model(nnx.Rngs(3))
    x = jax.random.normal(jax.random.key(4), (2, 8, 4))
    target = jnp.roll(x, 1, axis=1)
    loss = lambda m: jnp.mean((m(x) - target) ** 2)

    fn = SelfModifyingBlock(model.hope.block.config)

    def functional_loss(p):
        h = model.inp(x)
        y, _ = fn(p, fn.init_state(p, 2), h)
        return jnp.mean((model.out(y) - target) ** 2)

    g_nnx = model.hope.as_params(nnx.grad(loss)(model).hope.params.get_value())
    g_fn = jax.grad(functional_loss)(model.hope.get_params())
    _close(g_nnx, g_fn)
    assert any(float(jnp.abs(a).sum()) > 0 for a in jax.tree.leaves(g_fn))

    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        value, grads = nnx.value_and_grad(loss)(model)
        opt.update(model, grads)
        return value

    with jax.numpy_dtype_promotion("standard"):  # optax.adam mixes float ** int32
        first = float(step(model, opt))
        for _ in range(4):
            last = float(step(model, opt))
    assert np.isfinite(last) and last < first
    # the fast state is a MemoryState, not a parameter of the optimizer
    assert nnx.state(model, njx.MemoryState) and not any(
        isinstance(v, njx.MemoryState)
        for v in jax.tree.leaves(
            nnx.state(model, nnx.Param), is_leaf=lambda v: isinstance(v, nnx.Variable)
        )
    )


@pytest.mark.parametrize("memory", [LinearMemory(L2(), DGD(0.5)), MLPMemory(8)])
def test_memory_layer_equals_write_read(memory):
    layer = njx.MemoryLayer(
        memory, heads=2, d_k=4, d_v=4, chunk_size=3, batch_size=2, rngs=nnx.Rngs(5), read="after"
    )
    ks = jax.random.split(jax.random.key(6), 4)
    q, k, v = (jax.random.normal(kk, (2, 7, 2, 4)) for kk in ks[:3])
    eta = 0.3 * jax.nn.sigmoid(jax.random.normal(ks[3], (2, 7, 2)))
    params = layer.get_params()
    st, want = memory.write_read(
        memory.init_state(params, 2), q, k, v, eta, chunk_size=3, read="after"
    )
    _close(layer(q, k, v, eta), want)
    _close(layer.memory_state.get_value(), st)
    layer.reset()
    y1 = layer(q[:, :3], k[:, :3], v[:, :3], eta[:, :3], carry=True)  # whole chunks per call
    y2 = layer(q[:, 3:], k[:, 3:], v[:, 3:], eta[:, 3:], carry=True)
    _close(jnp.concatenate([y1, y2], axis=1), want)
    with pytest.raises(TypeError, match="memory must be"):
        njx.MemoryLayer("dgd", heads=1, d_k=2, d_v=2, chunk_size=1, batch_size=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="read must be"):
        njx.MemoryLayer(
            memory, heads=1, d_k=2, d_v=2, chunk_size=1, batch_size=1, rngs=nnx.Rngs(0), read="x"
        )
