"""Model configuration and the registry of named configs (issue 4)."""

from __future__ import annotations

import dataclasses

__all__ = ["ModelConfig", "get_config", "list_configs"]

KINDS = ("transformer", "titans")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static configuration of a language model.

    Attributes:
      kind: which block the layers are made of (``"transformer"`` = Transformer++).
      vocab_size, d_model, n_layers, n_heads, d_ff: sizes (``d_ff``: SwiGLU hidden width).
      max_len: longest context a state can hold (the attention memory's capacity).
      rope_base, norm_eps: RoPE base and RMSNorm epsilon.
      mem_chunk: chunk size of the neural memory's parallel form (Titans).
      mem_expansion: hidden width of the MLP memory, in multiples of the head dimension.
      eta_max: the memory's largest learning rate (``eta = eta_max * sigmoid(.)``).
      conv_width: width of the causal depthwise convolution on q, k, v.
    """

    kind: str = "transformer"
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 128
    max_len: int = 256
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    mem_chunk: int = 16
    mem_expansion: int = 2
    eta_max: float = 0.1
    conv_width: int = 4

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}.")
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "d_ff",
            "max_len",
            "mem_chunk",
            "mem_expansion",
            "conv_width",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}.")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})."
            )
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"the head dimension d_model / n_heads = {self.d_model // self.n_heads} must be "
                "even (RoPE rotates pairs)."
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


_REGISTRY = {
    # tests: seconds on a CPU
    "tiny": ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=128),
    "titans_tiny": ModelConfig(
        kind="titans",
        vocab_size=256,
        d_model=32,
        n_layers=2,
        n_heads=2,
        d_ff=64,
        max_len=128,
        mem_chunk=4,
    ),
    # CPU experiments: ~10.8M parameters (byte vocabulary)
    "small": ModelConfig(
        vocab_size=256, d_model=384, n_layers=6, n_heads=6, d_ff=1024, max_len=512
    ),
}


def get_config(name: str, **overrides) -> ModelConfig:
    """A named config, optionally with fields replaced: ``get_config("tiny", n_layers=4)``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(_REGISTRY)}.")
    return dataclasses.replace(_REGISTRY[name], **overrides)


def list_configs() -> list[str]:
    return sorted(_REGISTRY)
