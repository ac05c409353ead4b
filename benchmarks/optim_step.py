"""Optimizer step time relative to optax.adamw and optax.contrib.muon (issue 3).

A tree of 40 matrices of shape [256, 1024] (10.5M parameters); one step = ``update`` plus
``apply_updates``, jitted. Every optimizer is timed in the same run; ratios are to AdamW and Muon.
Targets from the issue: M3 <= 1.5x Muon, DMGD (hidden width 2x) <= 3x AdamW.

Run: ``python -m benchmarks.run optim_step`` (``--quick``: 4 matrices of [32, 64]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from benchmarks.harness import time_jitted
from nested_jax import optim

FULL = {"n_matrices": 40, "shape": (256, 1024)}
QUICK = {"n_matrices": 4, "shape": (32, 64)}


def _optimizers():
    return {
        "adamw": optax.adamw(1e-3),
        "muon": optax.contrib.muon(1e-3),
        "momentum_memory": optim.momentum_memory(1e-3),
        "delta_momentum": optim.delta_momentum(1e-3),
        "adam_memory": optim.adam_memory(1e-3),
        "preconditioned_diagonal": optim.preconditioned_momentum(1e-3, preconditioner="diagonal"),
        "m3": optim.m3(1e-3),
        "dmgd_hidden_2x": optim.dmgd(1e-3, hidden_factor=2.0),
        "dmgd_hidden_8": optim.dmgd(1e-3, hidden=8),
    }


def run(quick: bool = False, repeats: int = 5) -> dict:
    cfg = QUICK if quick else FULL
    keys = jax.random.split(jax.random.key(0), cfg["n_matrices"])
    params = {f"w{i}": 0.02 * jax.random.normal(k, cfg["shape"]) for i, k in enumerate(keys)}
    grads = jax.tree.map(lambda p: jnp.sin(p * 50.0), params)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    rows = {}
    # optax's own transforms are not clean under strict promotion; the benchmark runs standard
    with jax.numpy_dtype_promotion("standard"):
        for name, tx in _optimizers().items():
            state = tx.init(params)

            def step(p, s, g, tx=tx):
                u, s = tx.update(g, s, p)
                return optax.apply_updates(p, u), s

            rows[name] = time_jitted(step, (params, state, grads), repeats=repeats)
            print(f"{name:>24}: {rows[name]['median_s'] * 1e3:9.2f} ms", flush=True)
    base_a, base_m = rows["adamw"]["median_s"], rows["muon"]["median_s"]
    results = [
        {"optimizer": k, **v, "vs_adamw": v["median_s"] / base_a, "vs_muon": v["median_s"] / base_m}
        for k, v in rows.items()
    ]
    return {
        "benchmark": "optim_step",
        "config": {**cfg, "n_params": n_params, "quick": quick},
        "results": results,
    }
