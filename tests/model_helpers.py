"""Shared helpers of the model tests (test_lm.py, test_hope.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from nested_jax.models import LanguageModel, get_config

ATOL, RTOL = 2e-5, 1e-4

MODELS = ["tiny", "titans_tiny", "selfmod_tiny", "hope_tiny", "hope_attention_tiny"]
# the linear-memory family: Titans layers with a matrix memory (reduced cases; written out below)
LINEAR = ["linear_attention_tiny", "deltanet_tiny", "gated_deltanet_tiny"]


def setup_model(name, **kw):
    """``setup`` with one layer for the memory models (their compile time grows with depth;
    stacking layers is the same scanned code for every kind, tested here with the two-layer
    Transformer++ and in test_cms.py with two-layer Hopes)."""
    return setup(name, **({} if name == "tiny" else {"n_layers": 1}), **kw)


def setup(name, batch=2, length=10, seed=0, **overrides):
    """A registry model (fields overridden), its params and random byte tokens ``[batch, length]``."""
    model = LanguageModel(get_config(name, **overrides))
    params = model.init(jax.random.key(seed))
    tokens = jax.random.randint(jax.random.key(seed + 1), (batch, length), 0, 256)
    return model, params, tokens


_JITTED = {}


def jitted(model, name: str):
    """``jax.jit(getattr(model, name))``, one per (model, method) so that a test calling it
    twice at one shape compiles once (a new ``jax.jit`` of a bound method recompiles)."""
    key = (model, name)
    if key not in _JITTED:
        _JITTED[key] = jax.jit(getattr(model, name))
    return _JITTED[key]


def stream(model, params, tokens, chunk, state=None, start=0):
    """Stream ``tokens[:, start:]`` in pieces of ``chunk`` through a jitted ``step``."""
    state = model.init_state(params, tokens.shape[0]) if state is None else state
    step = jitted(model, "step")
    outs = []
    for s in range(start, tokens.shape[1], chunk):
        logits, state = step(params, state, tokens[:, s : s + chunk])
        outs.append(logits)
    return jnp.concatenate(outs, axis=1), state


def check_prefix_then_stream(model, params, tokens, par, s_par, start, piece):
    """A parallel prefix of ``start`` tokens continued by streaming in pieces of ``piece`` gives
    the parallel outputs ``par`` and state ``s_par`` of the whole sequence."""
    head, state = jitted(model, "apply")(params, tokens[:, :start])
    tail, s_tail = stream(model, params, tokens, piece, state=state, start=start)
    close(par, jnp.concatenate([head, tail], axis=1))
    close(s_par, s_tail)


def close(a, b, atol=ATOL, rtol=RTOL):
    """Every leaf of two pytrees equal within tolerance."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


def meta_leaves(params):
    """The meta-learned initial states (and their leaf paths) of every fast memory and level."""
    layers = params["layers"]
    mixer = layers.get("mixer", layers)  # Titans: the memory is the layer's own
    out = {f"{n}": mixer[n] for n in ("proj", "gate", "main", "memory") if n in mixer}
    if "cms" in layers:
        for i, lv in enumerate(layers["cms"]["levels"]):
            out[f"cms{i}"] = lv["mlp"]
    return out


def heads_without_gradient(grads):
    """The fast memories' heads whose initial state gets no outer gradient: ``[(memory, head)]``.
    Memories of one shape are stacked on the head axis (axis 1, after the layers': self-modifying
    Titans' k / v (/ q) on ``proj``), so a leaf's total hides a memory that learns nothing."""
    dead = []
    for name, tree in meta_leaves(grads).items():
        if name.startswith("cms"):
            continue
        heads = jax.tree.leaves(tree)[0].shape[1]
        for h in range(heads):
            if all(float(jnp.abs(leaf[:, h]).sum()) == 0 for leaf in jax.tree.leaves(tree)):
                dead.append((name, h))
    return dead
