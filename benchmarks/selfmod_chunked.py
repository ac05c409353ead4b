"""Self-modifying Titans: chunk-parallel training form vs the token-by-token reference (issue 4).

The same language model (``kind="selfmod"``: self-modifying Titans layers + SwiGLU), the same
parameters and tokens; the loss and its gradient w.r.t. every parameter (forward + backward)
computed with :meth:`LanguageModel.apply` (chunk-parallel: memories generate and write a chunk at
a time, gradients at chunk boundaries) and with :meth:`LanguageModel.apply_reference` (one token
at a time through the streaming ``step``: the slow twin, equal to 1e-5 in the tests). Ratio =
reference time / chunked time, measured in one run.

Run: ``python -m benchmarks.run selfmod_chunked`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks.harness import time_jitted
from nested_jax.models import LanguageModel, get_config, token_nll

FULL = {
    "seqs": (512, 2048),
    "d_model": 128,
    "n_layers": 2,
    "n_heads": 2,
    "d_ff": 256,
    "chunks": ((16, 8), (64, 16)),
}
QUICK = {"seqs": (64,), "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "chunks": ((8, 4),)}


def _loss(model, apply_fn):
    def loss(params, tokens):
        logits, _ = apply_fn(params, tokens)
        return jnp.mean(token_nll(logits, tokens))

    return jax.value_and_grad(loss)


def run(quick: bool = False, repeats: int = 5) -> dict:
    cfg = QUICK if quick else FULL
    sizes = {k: cfg[k] for k in ("d_model", "n_layers", "n_heads", "d_ff")}
    rows = []
    for seq in cfg["seqs"]:
        for mem_chunk, sm_chunk in cfg["chunks"]:
            config = get_config(
                "selfmod_tiny",
                max_len=seq,
                titans={"chunk": mem_chunk},
                selfmod={"chunk": sm_chunk},
                **sizes,
            )
            model = LanguageModel(config)
            params = model.init(jax.random.key(0))
            tokens = jax.random.randint(jax.random.key(1), (1, seq), 0, config.vocab_size)
            times = {}
            for form, fn in (("chunked", model.apply), ("reference", model.apply_reference)):
                t = time_jitted(_loss(model, fn), (params, tokens), repeats=repeats)
                times[form] = t
                rows.append(
                    {"form": form, "seq": seq, "mem_chunk": mem_chunk, "sm_chunk": sm_chunk, **t}
                )
            ratio = times["reference"]["median_s"] / times["chunked"]["median_s"]
            rows.append(
                {
                    "form": "speedup",
                    "seq": seq,
                    "mem_chunk": mem_chunk,
                    "sm_chunk": sm_chunk,
                    "ratio": ratio,
                }
            )
            print(
                f"seq={seq:<5} chunks={mem_chunk}/{sm_chunk}: chunked "
                f"{times['chunked']['median_s'] * 1e3:.1f} ms, reference "
                f"{times['reference']['median_s'] * 1e3:.1f} ms, speedup {ratio:.1f}x",
                flush=True,
            )
    return {"benchmark": "selfmod_chunked", "config": {**cfg, "quick": quick}, "results": rows}
