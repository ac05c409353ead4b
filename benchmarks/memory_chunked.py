"""Chunk-parallel vs token-by-token scan for the linear delta memory and the MLP memory.

``linear_delta`` takes inner gradients at the chunk boundary (TTT-style); ``linear_delta_exact`` is
the exact per-token delta rule (DeltaNet) in chunk form (``gradient_at="token"``).

Forward and forward+backward (gradient of a scalar of the outputs w.r.t. q, k, v and the initial
memory) at d=64, one head. The token-by-token baseline is autodiff through a ``lax.scan`` over
tokens (``write_read_reference`` with ``chunk_size=1``: the exact online recurrence). Reports each
median and the ratio token / chunked, all measured in one run.

Run: ``python -m benchmarks.run memory_chunked`` (``--quick`` for a seconds-long smoke run).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

from benchmarks.harness import time_jitted
from nested_jax.memory import GD, L2, LinearMemory, MLPMemory

FULL = {"seqs": (1024, 4096), "batches": (1, 8), "chunks": (16, 64), "d": 64, "hidden": 128}
QUICK = {"seqs": (128,), "batches": (1,), "chunks": (16,), "d": 16, "hidden": 32}


def _memories(cfg):
    return {
        "linear_delta": LinearMemory(L2(), GD()),
        "linear_delta_exact": LinearMemory(L2(), GD(), gradient_at="token"),
        "mlp": MLPMemory(cfg["hidden"], objective=L2(), rule=GD()),
    }


def _inputs(batch, seq, d, key):
    ks = jax.random.split(key, 4)
    q = jax.random.normal(ks[0], (batch, seq, 1, d))
    k = jax.random.normal(ks[1], (batch, seq, 1, d))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = jax.random.normal(ks[2], (batch, seq, 1, d))
    eta = 0.5 * jax.nn.sigmoid(jax.random.normal(ks[3], (batch, seq, 1)))
    return q, k, v, eta


def _fns(mem, chunk, batch, reference):
    call = mem.write_read_reference if reference else mem.write_read

    def forward(params, q, k, v, eta):
        _, y = call(mem.init_state(params, batch), q, k, v, eta, chunk_size=chunk)
        return y

    def loss(params, q, k, v, eta):
        return jnp.mean(forward(params, q, k, v, eta) ** 2)

    fwd_bwd = jax.grad(loss, argnums=(0, 1, 2, 3))
    return {"fwd": forward, "fwd_bwd": fwd_bwd}


def run(quick: bool = False, repeats: int = 5) -> dict:
    cfg = QUICK if quick else FULL
    d = cfg["d"]
    rows = []
    for (name, mem), seq, batch in itertools.product(
        _memories(cfg).items(), cfg["seqs"], cfg["batches"]
    ):
        params = mem.init_params(jax.random.key(0), heads=1, d_k=d, d_v=d)
        args = (params,) + _inputs(batch, seq, d, jax.random.key(1))
        for mode in ("fwd", "fwd_bwd"):
            base = time_jitted(_fns(mem, 1, batch, True)[mode], args, repeats=repeats)
            for chunk in cfg["chunks"]:
                fast = time_jitted(_fns(mem, chunk, batch, False)[mode], args, repeats=repeats)
                row = {
                    "memory": name,
                    "seq": seq,
                    "batch": batch,
                    "chunk": chunk,
                    "mode": mode,
                    "d": d,
                    "hidden": cfg["hidden"] if name == "mlp" else None,
                    "token_scan": base,
                    "chunked": fast,
                    "speedup": base["median_s"] / fast["median_s"],
                }
                rows.append(row)
                print(
                    f"{name:>12} seq={seq:<5} batch={batch} chunk={chunk:<3} {mode:<7} "
                    f"token {base['median_s'] * 1e3:8.2f} ms  chunked {fast['median_s'] * 1e3:8.2f} ms"
                    f"  speedup {row['speedup']:6.1f}x",
                    flush=True,
                )
    return {"benchmark": "memory_chunked", "config": {**cfg, "quick": quick}, "results": rows}
