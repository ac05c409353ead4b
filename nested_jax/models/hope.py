"""Hope and Hope-Attention (paper §6, arXiv Eqs. 94-97, Fig. 5).

Hope = self-modifying Titans in place of attention, and a Continuum Memory System in place of the
MLP: per layer ``x <- SelfModTitans(x)`` (pre-norm, residual, gated output; see
`self_modifying`), then ``x <- CMS(x)`` (each level a pre-norm residual
SwiGLU; see `cms`). Hope-Attention = the same block with global causal
softmax attention (`Attention`) as the sequence layer, i.e.
Transformer++ + CMS.
"""

from __future__ import annotations

import dataclasses

import jax

from nested_jax.models.cms import ContinuumMemory
from nested_jax.models.config import ModelConfig
from nested_jax.models.layers import Context
from nested_jax.models.self_modifying import SelfModifyingTitans
from nested_jax.models.transformer import Attention

__all__ = ["HopeBlock"]


@dataclasses.dataclass(frozen=True)
class HopeBlock:
    """One Hope (``kind="hope"``) or Hope-Attention (``kind="hope_attention"``) layer.

    Params ``{"mixer": ..., "cms": ...}``; state ``{"mixer": ..., "cms": CMSState}``."""

    config: ModelConfig

    @property
    def mixer(self):
        if self.config.attends:
            return Attention(self.config)
        return SelfModifyingTitans(self.config)

    @property
    def cms(self) -> ContinuumMemory:
        return ContinuumMemory(self.config)

    def init(self, key) -> dict:
        k1, k2 = jax.random.split(key)
        return {"mixer": self.mixer.init(k1), "cms": self.cms.init(k2)}

    def init_state(self, params: dict, batch_size: int) -> dict:
        return {
            "mixer": self.mixer.init_state(params["mixer"], batch_size),
            "cms": self.cms.init_state(params["cms"], batch_size),
        }

    def __call__(self, p: dict, state: dict, x, ctx: Context = Context()):
        """``x: [B, T, D]`` -> ``(x, state)`` (``(x, state, {"cms": CMS input})`` with
        ``ctx.collect``, and ``"cms_cache"``, the CMS's forward cache, with ``ctx.cache``): the
        mixer, then the CMS (which learns from ``ctx.errors`` when the network gives them; see
        `Context`)."""
        if ctx.mixed is not None:  # what the mixer added, given (the online error pass)
            z, ms = x + ctx.mixed, state["mixer"]
        elif ctx.through_mixer:
            z, ms = self.mixer(p["mixer"], state["mixer"], x, ctx)
        else:  # the mixer's output is a constant of the gradient; the residual path is not
            z, ms = self.mixer(p["mixer"], state["mixer"], jax.lax.stop_gradient(x), ctx)
            z = x + jax.lax.stop_gradient(z - jax.lax.stop_gradient(x))
        if ctx.cache:  # the online signal's pass: the CMS's forward cache among the taps
            y, cs, cache = self.cms(p["cms"], state["cms"], z, ctx)
            return y, {"mixer": ms, "cms": cs}, {"cms": z, "cms_cache": cache}
        y, cs = self.cms(p["cms"], state["cms"], z, ctx)
        state = {"mixer": ms, "cms": cs}
        return (y, state, {"cms": z}) if ctx.collect else (y, state)
