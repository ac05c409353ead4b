"""Training throughput of the models at several sequence lengths (issue 4, first part).

One training step = forward + backward + an Adam-as-memory update (equal to optax.adam), jitted,
batch 1, tokens/s = sequence length / median step time. Models: Transformer++ and Titans (LMM)
with the same width, depth and heads (parameter counts reported: Titans has 17% more, in its
gates, output gate and learned initial memories). Hope and Hope-Attention join when they exist.

Run: ``python -m benchmarks.run model_throughput`` (``--quick``: tiny models, short sequences).
"""

from __future__ import annotations

import jax
import optax

from benchmarks.harness import time_jitted
from nested_jax import optim
from nested_jax.models import LanguageModel, get_config

FULL = {"seqs": (512, 2048, 8192), "d_model": 256, "n_layers": 4, "n_heads": 4, "d_ff": 683}
QUICK = {"seqs": (64, 128), "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64}


def run(quick: bool = False, repeats: int = 5) -> dict:
    cfg = QUICK if quick else FULL
    sizes = {k: cfg[k] for k in ("d_model", "n_layers", "n_heads", "d_ff")}
    rows = []
    for seq in cfg["seqs"]:
        per_model = {}
        for kind, name in (("transformer", "tiny"), ("titans", "titans_tiny")):
            model = LanguageModel(get_config(name, max_len=seq, mem_chunk=16, **sizes))
            params = model.init(jax.random.key(0))
            tx = optim.adam_memory(1e-3)
            opt_state = tx.init(params)
            tokens = jax.random.randint(jax.random.key(1), (1, seq), 0, model.config.vocab_size)

            def train_step(params, opt_state, tokens, model=model, tx=tx):
                loss, g = jax.value_and_grad(model.loss)(params, tokens)
                u, opt_state = tx.update(g, opt_state, params)
                return optax.apply_updates(params, u), opt_state, loss

            t = time_jitted(train_step, (params, opt_state, tokens), repeats=repeats)
            per_model[kind] = t
            rows.append(
                {
                    "model": kind,
                    "seq": seq,
                    "params": model.num_params(params),
                    "tokens_per_s": seq / t["median_s"],
                    **t,
                }
            )
            print(
                f"{kind:>12} seq={seq:<5} {t['median_s'] * 1e3:9.1f} ms/step "
                f"{seq / t['median_s']:9.0f} tok/s  compile {t['compile_s']:.1f}s",
                flush=True,
            )
        ratio = per_model["transformer"]["median_s"] / per_model["titans"]["median_s"]
        rows.append({"model": "titans/transformer speed", "seq": seq, "ratio": ratio})
        print(f"{'':>12} seq={seq:<5} Titans speed / Transformer++ speed = {ratio:.2f}", flush=True)
    return {"benchmark": "model_throughput", "config": {**cfg, "quick": quick}, "results": rows}
