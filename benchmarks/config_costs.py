"""What each named training config costs: compile time and seconds per training step (issue 14).

For every named config of ``nested-jax configs`` (``quickstart``, ``shakespeare_transformer``,
``shakespeare_hope``, ``wikipedia_hope_small``): the model and optimizer the config trains, one
jitted training step (:func:`nested_jax.train.step.train_step`: forward, backward, clipping,
the optimizer, the NaN guard) on a batch of the config's shape (random tokens of its vocabulary),
full XLA optimisation. Compile seconds (lower + compile, on its own), the median step of >= 5
runs after warm-up, tokens per second. What a user of that config waits for on this machine
(the ``nested-jax`` command also keeps compiled programs in a persistent cache, so a second run
skips most of the compile; not measured here). The README's cost table is this JSON.

``wikipedia_hope_small`` (Hope, d_model 384, 6 layers, 16 x 512 BPE tokens per step) takes
minutes per step on 2 CPU cores: it is timed once after compiling (``"timed_runs": 1``, no
warm-up, no median; a step that runs out of the host's memory is recorded with the error and
XLA's memory analysis), the others as every benchmark here. ``--quick`` checks the harness on the
Transformer++ config shrunk to one small layer.

Run: ``python -m benchmarks.run config_costs`` (``--configs NAME ...`` to pick).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from benchmarks.harness import compiled_memory, time_jitted
from nested_jax.models import LanguageModel
from nested_jax.train.config import get_train_config, list_train_configs, model_config
from nested_jax.train.optimizers import make_optimizer
from nested_jax.train.step import init_train_state, train_step

SLOW = ("wikipedia_hope_small",)  # one timed step each (see the module docstring)


def _time_once(fn, args) -> dict:
    import time

    jitted = jax.jit(fn)
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    memory = compiled_memory(compiled)
    t0 = time.perf_counter()
    try:
        jax.block_until_ready(compiled(*args))
    except jax.errors.JaxRuntimeError as e:  # e.g. a step that needs more memory than the host
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        error = str(e).splitlines()[0]
        return {
            "compile_s": compile_s,
            "median_s": None,
            "runs_s": [],
            "memory": memory,
            "error": error,
        }
    step_s = time.perf_counter() - t0
    return {"compile_s": compile_s, "median_s": step_s, "runs_s": [step_s], "memory": memory}


def run(quick: bool = False, repeats: int = 5, configs=None) -> dict:
    names = ["shakespeare_transformer"] if quick else list(configs or list_train_configs())
    shrink = (
        [
            "model.n_layers=1",
            "model.d_model=16",
            "model.d_ff=16",
            "data.batch_size=2",
            "data.seq_len=16",
        ]
        if quick
        else []
    )
    results = []
    for name in names:
        cfg = get_train_config(name, shrink)
        vocab = 256 if cfg.data.tokenizer == "byte" else cfg.data.bpe_vocab
        model = LanguageModel(model_config(cfg, vocab))
        opt = make_optimizer(cfg.optim, cfg.steps)
        state = init_train_state(model, opt, jax.random.key(0))
        b, t = cfg.data.batch_size, cfg.data.seq_len
        batch = jax.random.randint(jax.random.key(1), (b, t), 0, vocab, jnp.int32)
        step = functools.partial(train_step, model, opt)
        if name in SLOW and not quick:
            res = _time_once(step, (state, batch))
        else:
            res = time_jitted(step, (state, batch), repeats=repeats)
        results.append(
            {
                "config": name,
                "model": cfg.model,
                "kind": model.config.kind,
                "params": model.num_params(state.params),
                "optimizer": cfg.optim.name,
                "batch": b,
                "seq_len": t,
                "tokens_per_step": b * t,
                **res,
                "timed_runs": len(res["runs_s"]),
                "tokens_per_s": b * t / res["median_s"] if res["median_s"] else None,
            }
        )
        took = res.get("error") or f"{res['median_s']:.3f} s/step"
        print(f"{name}: compile {res['compile_s']:.1f} s, {took}", flush=True)
    return {"benchmark": "config_costs", "config": {"quick": quick}, "results": results}
