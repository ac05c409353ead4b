"""Where Hope's matmul work goes: forward and forward + backward FLOPs of the loss for model variants.

Counted with :func:`benchmarks.flops.matmul_flops` on shapes only (nothing is run or compiled), at
the ``model_throughput`` sizes (d_model 256, 4 layers, 4 heads, batch 1, 512 tokens): Transformer++
with Hope's parameter count, self-modifying Titans (with and without ``first_order``) and Hope with
the default teach signal, the label-free ``"local"`` signal, its CMS frozen and ``first_order``.

Run: ``python -m benchmarks.run flop_split`` (about a minute; ``--quick``: tiny sizes).
"""

from __future__ import annotations

import jax

from benchmarks.flops import matmul_flops
from benchmarks.model_throughput import FULL, QUICK, model_config
from nested_jax.models import LanguageModel, count_params

VARIANTS = (
    ("transformer_pm", {}),
    ("selfmod", {}),
    ("selfmod_paper", {}),
    ("selfmod_paper", {"first_order": True}),
    ("hope", {"cms.periods": (0, 0)}),
    ("hope", {}),
    ("hope_paper", {"cms.periods": (0, 0)}),
    ("hope_paper", {"cms.signal": "local"}),
    ("hope_paper", {}),
    ("hope_paper", {"first_order": True}),
)


def _jsonable(overrides: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}


def run(quick: bool = False, repeats: int = 5) -> dict:
    del repeats  # nothing is timed
    cfg = dict(QUICK if quick else FULL)
    seq = cfg["seqs"][0]
    rows = []
    for kind, overrides in VARIANTS:
        config = model_config(kind, seq, cfg).replace(**overrides)
        model = LanguageModel(config)
        params = jax.eval_shape(model.init, jax.random.key(0))
        tokens = jax.ShapeDtypeStruct((1, seq), "int32")
        fwd = matmul_flops(model.loss, params, tokens)
        both = matmul_flops(jax.value_and_grad(model.loss), params, tokens)
        rows.append(
            {
                "model": kind,
                "overrides": _jsonable(overrides),
                "seq": seq,
                "params": count_params(config),
                "forward_gflop": fwd / 1e9,
                "forward_backward_gflop": both / 1e9,
            }
        )
        print(f"{kind:>15} {overrides!s:34} fwd {fwd / 1e9:7.2f}  fwd+bwd {both / 1e9:7.2f} GFLOP")
    return {"benchmark": "flop_split", "config": {**cfg, "quick": quick}, "results": rows}
