"""A deployed model reading a stream: token-by-token ``step`` vs the chunk-parallel one (issue 13).

What :func:`nested_jax.session.absorb` runs per piece: ``LanguageModel.step(params, state, piece)``
continuing a stream, batch 1, forward only, jitted; ``parallel=False`` (every chunked memory and
the CMS token by token, exact from any cut) and ``parallel=True`` (the training form from a
state at a chunk boundary, decisions D72; equal to the former in the tests). Tokens/s = piece
length / median time; compile seconds beside; ratio = token-by-token time / parallel time,
measured in one run. Models: the registry's tiny ones (d_model 32, 2 layers), as deployed in
``experiments/continual_lm``.

Run: ``python -m benchmarks.run session_absorb`` (``--quick``: one small layer, short pieces).
"""

from __future__ import annotations

import functools

import jax

from benchmarks.harness import time_jitted
from nested_jax.models import LanguageModel, get_config

FULL = {
    "pieces": (128, 512),
    "models": ("tiny", "titans_tiny", "hope_attention_tiny", "hope_tiny"),
    "overrides": {"max_len": 512},
}
QUICK = {  # the harness only (Hope's parallel step is tested in tests/test_session.py)
    "pieces": (16,),
    "models": ("tiny", "titans_tiny"),
    "overrides": {"max_len": 16, "n_layers": 1, "d_model": 16, "d_ff": 16},
}


def run(quick: bool = False, repeats: int = 5) -> dict:
    setup = QUICK if quick else FULL
    results = []
    for name in setup["models"]:
        model = LanguageModel(get_config(name, **setup["overrides"]))
        params = model.init(jax.random.key(0))
        state = model.init_state(params, 1)  # a fresh stream: at a boundary
        for n in setup["pieces"]:
            tokens = jax.random.randint(jax.random.key(1), (1, n), 0, 256)
            row = {"model": name, "piece": n}
            for form, parallel in (("token", False), ("parallel", True)):
                step = functools.partial(model.step, parallel=parallel)
                t = time_jitted(step, (params, state, tokens), repeats=repeats)
                row[form] = {**t, "tokens_per_s": n / t["median_s"]}
            row["speedup"] = row["token"]["median_s"] / row["parallel"]["median_s"]
            results.append(row)
    return {"benchmark": "session_absorb", "config": setup, "results": results}
