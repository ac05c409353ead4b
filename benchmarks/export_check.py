"""Every registry model's programs exported for GPU and TPU from this CPU (issue 42 item 3).

For each registry model, two programs are exported with ``jax.export`` for the ``cuda`` and
``tpu`` platforms at once (shapes only: nothing is initialised or run): the training step's loss
and gradient (``value_and_grad(model.loss)`` on ``[2, T]`` tokens, ``T`` two of its largest
chunks, so every chunked path is traced) and the streaming ``step`` on three tokens from a fresh
state. An export fails where an operation has no lowering for a platform; beside that, a program
must call no custom call outside `ALLOWED` (a CPU-only library call, e.g. LAPACK, would not run
on an accelerator). The StableHLO size of each program is recorded: it tracks compile time.
With ``compute_dtype="bfloat16"`` (mixed precision, decisions D105) the programs must also hold
bfloat16 matmuls accumulating in float32 (`bf16_dots` counts them): the policy reached the
accelerator program.

The tests run `check` on every registry model (``tests/test_export.py``); the benchmark writes
the sizes: ``python -m benchmarks.run export_check`` (``--models`` to choose; about a minute).
"""

from __future__ import annotations

import math
import re
import time

import jax
from jax import export

from nested_jax.models import LanguageModel, get_config, list_configs

PLATFORMS = ("cuda", "tpu")
# custom calls that every accelerator backend provides (sharding annotations)
ALLOWED = frozenset({"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"})


def _length(model: LanguageModel) -> int:
    """Two of the model's largest chunks (memory chunks, CMS periods), at most its ``max_len``."""
    c = model.config
    sizes = [c.titans.chunk, c.selfmod.chunk, *(p for p in c.cms.periods if p)]
    return min(c.max_len, 2 * max(sizes))


def custom_calls(text: str) -> set[str]:
    """The custom-call targets a StableHLO module's text calls."""
    return set(re.findall(r"stablehlo\.custom_call @([\w.$-]+)", text)) | set(
        re.findall(r'call_target_name = "([^"]+)"', text)
    )


def bf16_dots(text: str) -> int:
    """How many matmuls (``dot_general``) of a StableHLO module's text take bfloat16 operands
    and return float32."""
    pattern = (
        r"stablehlo\.dot_general[^\n]*\(tensor<[^>]*bf16>, tensor<[^>]*bf16>\) -> tensor<[^>]*f32>"
    )
    return len(re.findall(pattern, text))


def check(name: str, platforms: tuple = PLATFORMS, compute_dtype: str = "float32") -> dict:
    """Export ``name``'s training step and streaming step for ``platforms`` (the model's
    matmuls in ``compute_dtype``); raise where one calls a custom call outside `ALLOWED`, or,
    in bfloat16, holds no bfloat16 matmul. Returns the sizes and times per program."""
    model = LanguageModel(get_config(name, compute_dtype=compute_dtype))
    params = jax.eval_shape(model.init, jax.random.key(0))
    t = _length(model)
    programs = {
        "train": (
            jax.jit(jax.value_and_grad(model.loss)),
            (params, jax.ShapeDtypeStruct((2, t), "int32")),
        ),
        "stream": (
            jax.jit(model.step),
            (
                params,
                jax.eval_shape(lambda p: model.init_state(p, 2), params),
                jax.ShapeDtypeStruct((2, 3), "int32"),
            ),
        ),
    }
    row = {"model": name, "compute_dtype": compute_dtype, "tokens": t, "platforms": list(platforms)}
    for kind, (fn, args) in programs.items():
        t0 = time.perf_counter()
        exported = export.export(fn, platforms=platforms)(*args)
        text = exported.mlir_module()
        bad = custom_calls(text) - ALLOWED
        if bad:
            raise AssertionError(
                f"{name}'s {kind} program calls {sorted(bad)}, which {'/'.join(platforms)} "
                "may not provide; express it with jax.numpy / lax operations instead."
            )
        if compute_dtype == "bfloat16":
            row[f"{kind}_bf16_dots"] = n = bf16_dots(text)
            if not n:
                raise AssertionError(
                    f"{name}'s {kind} program in bfloat16 holds no bfloat16 matmul: the "
                    "compute_dtype did not reach it."
                )
        row[f"{kind}_stablehlo_kb"] = math.ceil(len(text) / 1024)
        row[f"{kind}_export_s"] = time.perf_counter() - t0
    return row


def run(quick: bool = False, repeats: int = 5, models=None) -> dict:
    del repeats  # nothing is timed repeatedly: each export runs once
    names = tuple(models or (("tiny", "hope_tiny") if quick else list_configs()))
    rows = []
    for name in names:
        for dtype in ("float32", "bfloat16"):
            rows.append(check(name, compute_dtype=dtype))
            r = rows[-1]
            print(
                f"{name:>26} {dtype:>8}: train {r['train_stablehlo_kb']:5d} kB "
                f"({r['train_export_s']:.1f} s), stream {r['stream_stablehlo_kb']:5d} kB "
                f"({r['stream_export_s']:.1f} s)",
                flush=True,
            )
    return {
        "benchmark": "export_check",
        "config": {"platforms": list(PLATFORMS), "allowed_custom_calls": sorted(ALLOWED)},
        "results": rows,
    }
