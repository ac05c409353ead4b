"""What a training step executes as separate operations: the accelerator proxy beside FLOPs.

For every model of ``model_throughput`` (its shapes: d_model 256, 4 layers, 4 heads, batch 1),
the training step (loss, gradient and an AdamW update) is traced, not run, and counted with
:func:`benchmarks.flops.jaxpr_counts`: ``matmuls`` (every ``dot_general``) and ``ops`` (every
primitive equation), loop bodies times their trip counts, beside the matmul FLOPs. On a GPU each
unfused operation is a kernel launch of a few microseconds and a sequential loop's matmuls do not
fuse, so a step of 10^5 small matmuls is launch-bound on any card; on a TPU, small operands leave
the matrix unit idle. The counts are of the traced program; XLA fuses elementwise chains, so
``ops`` over-counts launches while ``matmuls`` is close to what runs one after the other.

Run: ``python -m benchmarks.run launches`` (seconds: nothing is compiled; ``--models``,
``--seqs``, ``--batch`` as for model_throughput; ``--quick``: tiny sizes).
"""

from __future__ import annotations

import jax
import optax

from benchmarks.flops import count_ops
from benchmarks.model_throughput import FULL, QUICK, model_config
from nested_jax.models import LanguageModel, count_params

MODELS = (
    "transformer_pm",
    "titans",
    "selfmod",
    "hope_attention",
    "hope",
    "hope_paper",
    "selfmod_paper",
    "hope_attention_paper",
    "hope_paper_local",
    "hope_paper_ntp",
    "selfmod_paper_c64",
    "hope_paper_c64",
)


def step_counts(config, seq: int, batch: int = 1) -> dict:
    """The counts of one training step of ``config`` on ``[batch, seq]`` tokens."""
    model = LanguageModel(config)
    params = jax.eval_shape(model.init, jax.random.key(0))
    tx = optax.adamw(1e-3, weight_decay=0.1)
    opt_state = jax.eval_shape(tx.init, params)
    tokens = jax.ShapeDtypeStruct((batch, seq), "int32")

    def train_step(params, opt_state, tokens):
        loss, g = jax.value_and_grad(model.loss)(params, tokens)
        with jax.numpy_dtype_promotion("standard"):
            u, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, u), opt_state, loss

    return count_ops(train_step, params, opt_state, tokens)


def run(quick: bool = False, repeats: int = 5, models=None, seqs=None, batch: int = 1) -> dict:
    del repeats  # nothing is timed
    cfg = dict(QUICK if quick else FULL)
    seqs = tuple(seqs or cfg["seqs"][:1])
    models = tuple(models or (MODELS[:5] if quick else MODELS))
    rows = []
    for seq in seqs:
        for kind in models:
            config = model_config(kind, seq, cfg)
            c = step_counts(config, seq, batch)
            rows.append(
                {
                    "model": kind,
                    "seq": seq,
                    "batch": batch,
                    "params": count_params(config),
                    "matmuls": c["matmuls"],
                    "ops": c["ops"],
                    "matmul_gflop": c["matmul_flops"] / 1e9,
                    "unknown_loops": c["unknown_loops"],
                }
            )
            print(
                f"{kind:>15} seq={seq:<5} {c['matmuls']:>9,} matmuls {c['ops']:>10,} ops "
                f"{c['matmul_flops'] / 1e9:8.2f} GFLOP",
                flush=True,
            )
    return {
        "benchmark": "launches",
        "config": {**cfg, "seqs": list(seqs), "models": list(models), "batch": batch},
        "results": rows,
    }
