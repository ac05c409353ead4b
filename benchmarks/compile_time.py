"""How long a model's training step takes to trace, lower and compile (issue 41: compile time is
user time).

For each case (a registry model, optionally with fields overridden), the training step
(``value_and_grad(model.loss)``, an ``optax.adamw(1e-3)`` update, ``apply_updates``) on tokens
``[8, 128]`` is lowered with ``jax.jit(step).lower(...)`` and compiled with ``.compile()``, each
timed once, with no persistent compilation cache; the StableHLO size of the lowered program is
recorded beside (it tracks compile time). The depth cases check whether the program grows with
``n_layers`` (the layers are one scanned body, so it should not).

Run: ``python -m benchmarks.run compile_time`` (about a minute; ``--quick``: two tiny cases).
"""

from __future__ import annotations

import time

import jax
import optax

from nested_jax.models import LanguageModel, get_config

CASES = (
    ("hope_tiny", {}),
    ("hope_paper_tiny", {}),
    ("hope_tiny", {"n_layers": 1}),
    ("hope_tiny", {"n_layers": 4}),
    ("tiny", {}),
)
QUICK = (("tiny", {"d_model": 16, "d_ff": 16}), ("hope_tiny", {"n_layers": 1, "d_model": 16}))


def measure(name: str, overrides: dict, batch: int = 8, seq: int = 128) -> dict:
    model = LanguageModel(get_config(name, **overrides))
    params = model.init(jax.random.key(0))
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)
    tokens = jax.random.randint(jax.random.key(1), (batch, seq), 0, model.config.vocab_size)

    def step(params, opt_state, tokens):
        loss, g = jax.value_and_grad(model.loss)(params, tokens)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32
            u, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, u), opt_state, loss

    t0 = time.perf_counter()
    lowered = jax.jit(step).lower(params, opt_state, tokens)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return {
        "model": name,
        **overrides,
        "trace_lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "total_s": t2 - t0,
        "stablehlo_kb": round(len(lowered.as_text()) / 1024),
    }


def run(quick: bool = False, repeats: int = 5) -> dict:
    del repeats  # each compile is timed once (a second one would hit JAX's in-memory cache)
    rows = []
    for name, overrides in QUICK if quick else CASES:
        rows.append(measure(name, overrides, *((2, 16) if quick else (8, 128))))
        r = rows[-1]
        print(f"{name} {overrides}: {r['total_s']:.1f} s ({r['stablehlo_kb']} kB)", flush=True)
    return {
        "benchmark": "compile time",
        "method": "jax.jit(step).lower(params, opt_state, tokens) timed, then .compile() timed; "
        "no persistent cache; step = value_and_grad(model.loss) + optax.adamw(1e-3) update + "
        f"apply_updates; tokens [{'2, 16' if quick else '8, 128'}]; one run each",
        "results": rows,
    }
