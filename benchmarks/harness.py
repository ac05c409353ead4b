"""Small benchmark harness: compile time apart, median of >= 5 timed runs after warm-up, JSON out."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax


def machine() -> dict[str, Any]:
    """What ran the benchmark (recorded beside every figure)."""
    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def time_jitted(fn: Callable, args: tuple, *, repeats: int = 5, warmup: int = 1) -> dict[str, Any]:
    """Time ``jax.jit(fn)(*args)``.

    Returns compile seconds (lower + compile, measured on its own), the median and every timed run
    (seconds, each ending in ``block_until_ready``) and the compiled memory analysis.
    """
    return time_interleaved({"fn": (fn, args)}, repeats=repeats, warmup=warmup)["fn"]


def time_interleaved(
    cases: dict[str, tuple[Callable, tuple]], *, repeats: int = 5, rounds: int = 1, warmup: int = 1
) -> dict[str, dict[str, Any]]:
    """Time several jitted functions ``{name: (fn, args)}`` against each other: all are compiled
    first, then each round times every case ``repeats`` times in turn (the order reversed every
    other round), so that with ``rounds > 1`` every case sees the same spells of machine state
    and their ratios are steadier than from back-to-back blocks. Returns, per name,
    `time_jitted`'s fields (the median over every timed run of every round)."""
    if repeats < 5:
        raise ValueError(f"repeats must be >= 5 for a median worth reporting, got {repeats}.")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}.")
    compiled = {}
    for name, (fn, args) in cases.items():
        t0 = time.perf_counter()
        exe = jax.jit(fn).lower(*args).compile()
        compiled[name] = (exe, args, time.perf_counter() - t0)
        for _ in range(warmup):
            jax.block_until_ready(exe(*args))
    runs = {name: [] for name in cases}
    names = list(cases)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            exe, args, _ = compiled[name]
            for _ in range(repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(exe(*args))
                runs[name].append(time.perf_counter() - t0)
    return {
        name: {
            "compile_s": compiled[name][2],
            "median_s": statistics.median(runs[name]),
            "runs_s": runs[name],
            "memory": compiled_memory(compiled[name][0]),
        }
        for name in cases
    }


def compiled_memory(compiled) -> dict[str, int] | None:
    """XLA's memory analysis of a compiled function (peak, temporaries, arguments, outputs in
    bytes), or None where the backend does not provide it. A static figure: what the executable
    needs, not what the process's allocator happened to hold."""
    try:
        m = compiled.memory_analysis()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    if m is None:
        return None
    fields = (
        "peak_memory_in_bytes",
        "temp_size_in_bytes",
        "argument_size_in_bytes",
        "output_size_in_bytes",
    )
    return {f.replace("_in_bytes", "").replace("_size", ""): int(getattr(m, f, 0)) for f in fields}


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the machine) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), **payload}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path
