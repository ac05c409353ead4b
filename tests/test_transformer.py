"""Transformer++ (models/transformer.py): the block is a plain Transformer++ layer; sliding-window
attention sees the last window of tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import (
    close,
    setup,
    stream,
)

from nested_jax.models import LanguageModel, get_config
from nested_jax.models.layers import rms_norm, rope, swiglu


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
