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
    if repeats < 5:
        raise ValueError(f"repeats must be >= 5 for a median worth reporting, got {repeats}.")
    jitted = jax.jit(fn)
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - t0)
    return {
        "compile_s": compile_s,
        "median_s": statistics.median(runs),
        "runs_s": runs,
        "memory": compiled_memory(compiled),
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
