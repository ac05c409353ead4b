"""Levels demo: a two-level associative memory learning a drifting map in context.

The stream is key/value pairs ``v_t = (A + Delta_c) k_t + noise`` where ``A`` is a persistent map and
``Delta_c`` a context-specific perturbation that changes every ``context_len`` tokens. Two levels of
one nested system, run by :func:`nested_jax.run_levels` inside one ``lax.scan``:

* ``slow``: a linear L2 memory with period ``slow_period``: it accumulates its per-token gradient
  steps (all taken at the state its chunk began with) and applies them every ``slow_period`` tokens.
  It should consolidate the persistent map ``A``.
* ``fast``: a linear memory updated every token with Delta Gradient Descent and retention, writing
  the *residual* the slow level leaves (knowledge flows slow -> fast through its outputs). It should
  track the current context's perturbation.

The prediction for ``v_t`` is ``slow(k_t) + fast(k_t)``, read before ``v_t`` is written. The script
prints what each level did and how the combined system compares with each level alone.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from nested_jax.levels import Level, run_levels
from nested_jax.memory import DGD, GD, L2, LinearMemory


def make_stream(key, *, length: int, dim: int, context_len: int, drift: float, noise: float):
    """Keys ``[T, d]`` (unit norm), values ``[T, d]``, the persistent map and the per-token map."""
    k_a, k_d, k_k, k_n = jax.random.split(key, 4)
    a = jax.random.normal(k_a, (dim, dim)) / dim**0.5
    n_ctx = -(-length // context_len)
    deltas = drift * jax.random.normal(k_d, (n_ctx, dim, dim)) / dim**0.5
    maps = a[None] + jnp.repeat(deltas, context_len, axis=0)[:length]
    keys = jax.random.normal(k_k, (length, dim))
    keys = keys / jnp.linalg.norm(keys, axis=-1, keepdims=True)
    values = jnp.einsum("tij,tj->ti", maps, keys) + noise * jax.random.normal(k_n, (length, dim))
    return keys, values, a, maps


def build_levels(*, slow_period: int, slow_lr: float, fast_lr: float, fast_retention: float):
    slow_mem = LinearMemory(L2(), GD())
    fast_mem = LinearMemory(L2(), DGD())
    one = lambda a: a[None, None]  # [d] -> [batch=1, heads=1, d]

    def slow_update(state, x):
        k, v = x
        pred = slow_mem.read(state, one(k))[0, 0]
        new = slow_mem.write(state, one(k), one(v), slow_lr)
        return new, (k, v, pred)

    def fast_update(state, x):
        k, v, slow_pred = x
        fast_pred = fast_mem.read(state, one(k))[0, 0]
        new = fast_mem.write(state, one(k), one(v - slow_pred), fast_lr, fast_retention)
        return new, {"slow": slow_pred, "fast": fast_pred, "both": slow_pred + fast_pred}

    levels = (Level("slow", slow_period, slow_update), Level("fast", 1, fast_update))
    return levels, slow_mem, fast_mem


def run(
    *,
    length: int = 8192,
    dim: int = 16,
    context_len: int = 256,
    slow_period: int = 16,
    slow_lr: float = 0.02,
    fast_lr: float = 1.0,
    fast_retention: float = 0.995,
    drift: float = 0.5,
    noise: float = 0.05,
    seed: int = 0,
) -> dict:
    """Run the demo and return its summary (also used by the tests)."""
    keys, values, a, maps = make_stream(
        jax.random.key(seed),
        length=length,
        dim=dim,
        context_len=context_len,
        drift=drift,
        noise=noise,
    )
    levels, slow_mem, fast_mem = build_levels(
        slow_period=slow_period, slow_lr=slow_lr, fast_lr=fast_lr, fast_retention=fast_retention
    )
    zero = LinearMemory().init_params(None, heads=1, d_k=dim, d_v=dim)
    states = (slow_mem.init_state(zero, 1), fast_mem.init_state(zero, 1))

    runner = jax.jit(lambda s, xs: run_levels(levels, s, xs))
    t0 = time.perf_counter()
    res = jax.block_until_ready(runner(states, (keys, values)))
    seconds = time.perf_counter() - t0

    out = res.outputs[1]
    tail = slice(length // 2, None)  # second half: after the slow level has had time to learn
    mse = lambda p: float(jnp.mean(jnp.sum((p[tail] - values[tail]) ** 2, -1)))
    slow_w = res.states[0].w[0, 0]
    fast_w = res.states[1].w[0, 0]
    rel = lambda m, ref: float(jnp.linalg.norm(m - ref) / jnp.linalg.norm(ref))
    fired = res.fired.sum(axis=0)
    return {
        "seconds": seconds,
        "tokens": length,
        "fired": {lv.name: int(n) for lv, n in zip(levels, fired, strict=True)},
        "mse": {
            "predict zero": mse(jnp.zeros_like(values)),
            "fast alone": mse(out["fast"]),
            "slow alone": mse(out["slow"]),
            "slow + fast": mse(out["both"]),
        },
        "slow_vs_persistent_map": rel(slow_w, a),
        "fast_vs_last_context_perturbation": rel(fast_w, maps[-1] - slow_w),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m experiments.levels_demo.run", description=__doc__.split("\n")[0]
    )
    p.add_argument("--length", type=int, default=8192, help="tokens in the stream")
    p.add_argument("--slow-period", type=int, default=16, help="tokens between slow-level updates")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.length < 2 * args.slow_period:
        p.error(
            f"--length ({args.length}) must be at least twice --slow-period ({args.slow_period})"
        )
    if args.slow_period < 1:
        p.error("--slow-period must be >= 1")

    print(f"nested_jax levels demo on {jax.devices()[0].platform.upper()}: two levels, one scan")
    s = run(length=args.length, slow_period=args.slow_period, seed=args.seed)
    print(f"  stream: {s['tokens']} tokens, d=16, context switches every 256 tokens")
    print(f"  compiled + ran in {s['seconds']:.2f}s")
    print("  level 'slow' (linear L2 memory, GD accumulated over its period):")
    print(f"    fired {s['fired']['slow']} times (every {args.slow_period} tokens)")
    print(f"    distance to the persistent map A: {s['slow_vs_persistent_map']:.3f} (relative)")
    print("  level 'fast' (linear memory, DGD with retention, writes the slow level's residual):")
    print(f"    fired {s['fired']['fast']} times (every token)")
    print(
        "    distance to the last context's perturbation: "
        f"{s['fast_vs_last_context_perturbation']:.3f} (relative)"
    )
    print("  prediction error (mean squared, second half of the stream):")
    for name, val in s["mse"].items():
        print(f"    {name:<13} {val:.4f}")
    print("  (the fast level alone only holds the residual; the nest needs both levels)")
    return s


if __name__ == "__main__":
    main()
