"""Models built from the memory primitives (paper §4-§6).

Where things are:
  config.py          ModelConfig (with TitansConfig, SelfModConfig, CMSConfig) and the registry
                     of named configs (tiny ... hope_1.3b)
  layers.py          RMSNorm, RoPE, SwiGLU, L2 normalisation, initialisers
  transformer.py     Attention (= SoftmaxMemory) and the Transformer++ block
  titans.py          Titans (LMM) block (deep MLPMemory with momentum and forgetting, short conv)
  self_modifying.py  self-modifying Titans (k, v, eta, alpha memories, self-generated targets)
  cms.py             Continuum Memory System (levels of fast MLPs at different periods)
  hope.py            Hope (self-modifying Titans + CMS) and Hope-Attention (attention + CMS)
  lm.py              LanguageModel: the one API (init, init_state, apply, step, apply_reference,
                     loss, next_sequence); drives the CMS's next-token-loss inner loop
"""

from nested_jax.models.cms import CMSState, ContinuumMemory
from nested_jax.models.config import (
    CMSConfig,
    ModelConfig,
    SelfModConfig,
    TitansConfig,
    get_config,
    list_configs,
)
from nested_jax.models.hope import HopeBlock
from nested_jax.models.lm import (
    LanguageModel,
    LMState,
    count_params,
    matched_d_ff,
    sample_token,
    token_nll,
)
from nested_jax.models.self_modifying import SelfModifyingBlock, SelfModifyingTitans
from nested_jax.models.titans import TitansBlock
from nested_jax.models.transformer import Attention, TransformerBlock

__all__ = [
    "Attention",
    "CMSState",
    "ContinuumMemory",
    "HopeBlock",
    "LanguageModel",
    "CMSConfig",
    "ModelConfig",
    "SelfModConfig",
    "TitansConfig",
    "LMState",
    "SelfModifyingBlock",
    "SelfModifyingTitans",
    "TitansBlock",
    "TransformerBlock",
    "count_params",
    "get_config",
    "list_configs",
    "matched_d_ff",
    "sample_token",
    "token_nll",
]
