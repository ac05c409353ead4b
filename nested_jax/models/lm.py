"""Language-model wrapper and the one API every model shares (issue 4).

``model = LanguageModel(config)``;
``params = model.init(key)``; ``state = model.init_state(params, batch_size)``;
``logits, state = model.apply(params, tokens, state=None)`` (the parallel/training form);
``logits, state = model.step(params, state, tokens_chunk)`` (streaming with carried state);
``model.apply_reference(params, tokens)`` (the slow twin: one token at a time through ``step``);
``model.loss(params, tokens)`` (next-token cross-entropy).

Layers are stacked and run under ``lax.scan`` (compile time independent of depth); every layer's
state (its memories) is stacked the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from nested_jax.models.config import ModelConfig
from nested_jax.models.layers import rms_norm
from nested_jax.models.titans import TitansBlock
from nested_jax.models.transformer import TransformerBlock

__all__ = ["LanguageModel"]

_BLOCKS = {"transformer": TransformerBlock, "titans": TitansBlock}


@dataclasses.dataclass(frozen=True)
class LanguageModel:
    """Embeddings -> ``n_layers`` blocks (scanned) -> RMSNorm -> output head."""

    config: ModelConfig

    @property
    def block(self):
        return _BLOCKS[self.config.kind](self.config)

    def init(self, key) -> dict:
        c = self.config
        ke, kl, kh = jax.random.split(key, 3)
        layers = jax.vmap(self.block.init)(jax.random.split(kl, c.n_layers))
        return {
            "embed": 0.02 * jax.random.normal(ke, (c.vocab_size, c.d_model), jnp.float32),
            "layers": layers,
            "final_norm": jnp.ones((c.d_model,), jnp.float32),
            "head": jax.random.normal(kh, (c.d_model, c.vocab_size), jnp.float32) / c.d_model**0.5,
        }

    def init_state(self, params: dict, batch_size: int) -> Any:
        """Every layer's fresh state (from its learned initial memories), stacked over layers."""
        return jax.vmap(lambda p: self.block.init_state(p, batch_size))(params["layers"])

    def _check_tokens(self, tokens):
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(
                f"tokens must be an integer array [batch, seq], got {tokens.dtype} {tokens.shape}."
            )
        if tokens.shape[1] > self.config.max_len:
            raise ValueError(
                f"sequence length {tokens.shape[1]} exceeds the model's max_len "
                f"{self.config.max_len}; raise max_len in the config or stream in chunks."
            )

    def _run(self, params: dict, state: Any, tokens: jax.Array, parallel: bool):
        self._check_tokens(tokens)
        x = params["embed"][tokens]
        block = self.block

        def layer(x, inp):
            p, s = inp
            x, s = block(p, s, x, parallel=parallel)
            return x, s

        x, state = jax.lax.scan(layer, x, (params["layers"], state))
        x = rms_norm(x, params["final_norm"], self.config.norm_eps)
        return x @ params["head"], state

    def step(self, params: dict, state: Any, tokens: jax.Array):
        """Streaming: process ``tokens: [B, C]`` continuing ``state`` (any ``C``, any cut points):
        ``(logits [B, C, V], state)``. Chunked memories run token by token here so that their
        chunk boundaries stay where the parallel form puts them."""
        return self._run(params, state, tokens, parallel=False)

    def apply(self, params: dict, tokens: jax.Array, state: Any = None):
        """The training form: a whole sequence from a fresh state, chunk-parallel. With a carried
        ``state`` it continues the stream exactly (as :meth:`step`)."""
        if state is not None:
            return self.step(params, state, tokens)
        return self._run(params, self.init_state(params, tokens.shape[0]), tokens, parallel=True)

    def apply_reference(self, params: dict, tokens: jax.Array, state: Any = None):
        """Slow twin of :meth:`apply`: one token at a time through :meth:`step` (a scan)."""
        self._check_tokens(tokens)
        if state is None:
            state = self.init_state(params, tokens.shape[0])

        def one(state, tok):
            logits, state = self.step(params, state, tok[:, None])
            return state, logits[:, 0]

        state, logits = jax.lax.scan(one, state, tokens.T)
        return jnp.swapaxes(logits, 0, 1), state

    def loss(self, params: dict, tokens: jax.Array) -> jax.Array:
        """Mean next-token cross-entropy (nats) of ``tokens: [B, T]``."""
        logits, _ = self.apply(params, tokens)
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        target = tokens[:, 1:]
        return -jnp.mean(jnp.take_along_axis(logp, target[..., None], axis=-1))

    def num_params(self, params: dict) -> int:
        return sum(int(a.size) for a in jax.tree.leaves(params))
