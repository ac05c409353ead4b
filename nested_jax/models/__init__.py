"""Models built from the memory primitives (paper §4-§6; issue 4).

Where things are:
  config.py       ModelConfig and the registry of named configs (tiny, small)
  layers.py       RMSNorm, RoPE, SwiGLU, initialisers
  transformer.py  Transformer++ block (attention = SoftmaxMemory)
  titans.py       Titans (LMM) block (deep MLPMemory with momentum and forgetting, short conv)
  lm.py           LanguageModel: the one API (init, init_state, apply, step, apply_reference, loss)
"""

from nested_jax.models.config import ModelConfig, get_config, list_configs
from nested_jax.models.lm import LanguageModel
from nested_jax.models.titans import TitansBlock
from nested_jax.models.transformer import TransformerBlock

__all__ = [
    "LanguageModel",
    "ModelConfig",
    "TitansBlock",
    "TransformerBlock",
    "get_config",
    "list_configs",
]
