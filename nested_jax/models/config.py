"""Model configuration and the registry of named configs (issue 4)."""

from __future__ import annotations

import dataclasses

__all__ = ["ModelConfig", "get_config", "list_configs"]

KINDS = ("transformer", "titans", "selfmod", "hope", "hope_attention")
CMS_VARIANTS = ("sequential", "nested", "independent")
CMS_SIGNALS = ("ntp", "teach", "local")
SM_MAINS = ("mlp", "linear")


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
      inner_norm: normalise the deep (MLP) memories' inner steps (NLMS, ``MLPMemory(step_norm=
        C / (1 - beta))`` with each memory's chunk size ``C`` and momentum ``beta``), so that no
        ``eta_max`` makes them diverge (Titans and self-modifying Titans; ``False``: plain rates).

    Self-modifying Titans (``kind="selfmod"``, and the sequence layer of ``"hope"``; spec §5.2):
      sm_chunk: chunk size of the k / v / eta / alpha (/ q) memories (``mem_chunk``: the main one).
      sm_adaptive_q: q from its own memory (NeurIPS reading) instead of a fixed projection (arXiv).
      sm_momentum: momentum of every memory's DGD rule (``None``: no momentum).
      sm_main: ``"mlp"`` (default: residual MLP memory, L2, DGD, self-generated targets) or
        ``"linear"`` (a linear Hebbian memory with its given values: linear attention; the reduced
        case used to test the wiring).
      sm_adaptive: whether the k / v / eta / alpha memories learn in context (``False``: they stay at
        their meta-learned initial state, i.e. fixed projections).
      sm_unit_values: L2-normalise the generated values ``v_t`` (as the keys). The value memory's
        self-generated target is ``M_v(v_t)`` with ``v_t = M_v(x_t)``, so its gain squares from
        chunk to chunk and explodes once above 1; unit values make it neutral (decisions D51).

    Continuum Memory System (``kind="hope"`` / ``"hope_attention"``; spec §4):
      cms_periods: one period per level, in tokens (``0`` = frozen). Non-frozen periods must be
        multiples of the smallest one.
      cms_variant: ``"sequential"`` (default), ``"nested"`` or ``"independent"``.
      cms_signal: ``"teach"`` (default: two passes, each level's output errors from one parallel
        forward/backward at the sequence-start CMS weights, gradients blocked between CMS chunks,
        then each level learns chunk by chunk from them), ``"ntp"`` (the exact next-token loss
        gradient of each chunk, the whole network re-run per chunk and differentiated through:
        the reference, 2-4x slower) or ``"local"`` (label-free).
      cms_lr: the levels' inner learning rate (with ``cms_learn_lr``: its value at init; each
        level then learns its own, bounded by ``2 cms_lr``).
      cms_learn_lr: learn each level's rate (``2 cms_lr sigmoid(rho)``) instead of fixing it.
      cms_norm: with ``"teach"``, normalise each token's rate by the level's gain at its input
        (``lr / (1 + lr gain / (C - 1))``; decisions D54), so no width or rate diverges.
      cms_persistent: :meth:`LanguageModel.next_sequence` keeps the CMS weights (deployed /
        continual mode) instead of resetting them to their learned initial values.

      first_order: stop outer gradients through inner updates (all memories and CMS levels).
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
    inner_norm: bool = True
    sm_chunk: int = 4
    sm_adaptive_q: bool = False
    sm_momentum: float | None = 0.9
    sm_main: str = "mlp"
    sm_adaptive: bool = True
    sm_unit_values: bool = True
    cms_periods: tuple = (8, 32)
    cms_variant: str = "sequential"
    cms_signal: str = "teach"
    cms_lr: float = 0.1
    cms_learn_lr: bool = True
    cms_norm: bool = True
    cms_persistent: bool = False
    first_order: bool = False

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
            "sm_chunk",
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

        if self.sm_main not in SM_MAINS:
            raise ValueError(f"sm_main must be one of {SM_MAINS}, got {self.sm_main!r}.")
        if self.sm_momentum is not None and not 0.0 <= self.sm_momentum < 1.0:
            raise ValueError(f"sm_momentum must be None or in [0, 1), got {self.sm_momentum}.")
        self._check_cms()

    def _check_cms(self):
        if self.cms_variant not in CMS_VARIANTS:
            raise ValueError(
                f"cms_variant must be one of {CMS_VARIANTS}, got {self.cms_variant!r}."
            )
        if self.cms_signal not in CMS_SIGNALS:
            raise ValueError(f"cms_signal must be one of {CMS_SIGNALS}, got {self.cms_signal!r}.")
        periods = tuple(self.cms_periods)
        if not periods or any(
            isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in periods
        ):
            raise ValueError(
                f"cms_periods must be a non-empty tuple of ints >= 0 (0 = frozen), got {periods!r}."
            )
        object.__setattr__(self, "cms_periods", periods)
        live = [p for p in periods if p]
        if live and any(p % min(live) for p in live):
            raise ValueError(
                f"every non-frozen CMS period must be a multiple of the smallest, got {periods}; "
                "e.g. (8, 32, 128)."
            )
        ordered = sorted(live)
        if self.cms_variant == "nested" and any(
            b % a for a, b in zip(ordered, ordered[1:], strict=False)
        ):
            raise ValueError(
                f"the nested CMS needs each period to divide the next larger one; got {periods}."
            )
        if not self.cms_lr >= 0:
            raise ValueError(f"cms_lr must be >= 0, got {self.cms_lr}.")
        sig = self.cms_signal
        if self.has_cms and sig in ("ntp", "teach") and live:
            c = min(live)
            if c < 2:
                raise ValueError(
                    f"cms_signal={sig!r} needs the smallest CMS period >= 2 (a chunk's next-token "
                    f"loss uses the pairs inside it); got {c}."
                )
            if self.kind == "hope" and (c % self.mem_chunk or c % self.sm_chunk):
                raise ValueError(
                    f"cms_signal={sig!r} recomputes each CMS chunk in parallel from a memory chunk "
                    f"boundary, so the smallest CMS period ({c}) must be a multiple of mem_chunk "
                    f"({self.mem_chunk}) and sm_chunk ({self.sm_chunk})."
                )

    @property
    def has_cms(self) -> bool:
        """Whether the blocks end in a Continuum Memory System (Hope, Hope-Attention)."""
        return self.kind in ("hope", "hope_attention")

    @property
    def attends(self) -> bool:
        """Whether the sequence mixer is softmax attention, whose context is bounded by
        ``max_len`` (Transformer++, Hope-Attention); the memories' is not."""
        return self.kind in ("transformer", "hope_attention")

    @property
    def cms_chunk(self) -> int:
        """The CMS's step in tokens: the smallest non-frozen period (0 when all are frozen)."""
        live = [p for p in self.cms_periods if p]
        return min(live) if live else 0

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


_TINY = {"vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "max_len": 128}
# Paper scale (arXiv §9: 760M / 30B tokens and 1.3B / 100B tokens; 32K vocabulary, 4K context).
# Widths, depths, heads, levels and chunk sizes are not reported (spec §6, §11): these follow the
# Titans paper's model shapes and are declarative (for accelerators).
_PAPER = {
    "kind": "hope",
    "vocab_size": 32000,
    "max_len": 4096,
    "mem_chunk": 64,
    "sm_chunk": 8,
    "cms_periods": (64, 256, 1024),
}

_REGISTRY = {
    # tests: seconds on a CPU
    "tiny": ModelConfig(**_TINY),
    "titans_tiny": ModelConfig(kind="titans", mem_chunk=4, **_TINY),
    "selfmod_tiny": ModelConfig(kind="selfmod", mem_chunk=4, sm_chunk=2, **_TINY),
    "hope_tiny": ModelConfig(kind="hope", mem_chunk=4, sm_chunk=2, cms_periods=(4, 8), **_TINY),
    "hope_attention_tiny": ModelConfig(kind="hope_attention", cms_periods=(4, 8), **_TINY),
    # CPU experiments: ~10.8M parameters (byte vocabulary)
    "small": ModelConfig(
        vocab_size=256, d_model=384, n_layers=6, n_heads=6, d_ff=1024, max_len=512
    ),
    "hope_small": ModelConfig(
        kind="hope",
        vocab_size=256,
        d_model=384,
        n_layers=6,
        n_heads=6,
        d_ff=384,
        max_len=512,
        mem_chunk=16,
        sm_chunk=8,
        cms_periods=(16, 64),
    ),
    "hope_760m": ModelConfig(d_model=1536, n_layers=24, n_heads=12, d_ff=1152, **_PAPER),
    "hope_1.3b": ModelConfig(d_model=2048, n_layers=18, n_heads=16, d_ff=2560, **_PAPER),
}


def get_config(name: str, **overrides) -> ModelConfig:
    """A named config, optionally with fields replaced: ``get_config("tiny", n_layers=4)``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(_REGISTRY)}.")
    return dataclasses.replace(_REGISTRY[name], **overrides)


def list_configs() -> list[str]:
    return sorted(_REGISTRY)
