"""Print a benchmark JSON as a markdown table: ``python -m benchmarks.table PATH``."""

from __future__ import annotations

import json
import sys


def memory_chunked_table(data: dict) -> str:
    m = data["machine"]
    lines = [
        f"Machine: {m['cpu_count']} CPU cores ({m['processor']}), {m['platform']}, "
        f"jax {m['jax']}. Times are medians of >= 5 runs after warm-up, compile excluded.",
        "",
        "| memory | seq | batch | chunk | mode | token scan (ms) | chunked (ms) | speedup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        lines.append(
            f"| {r['memory']} | {r['seq']} | {r['batch']} | {r['chunk']} | {r['mode']} | "
            f"{r['token_scan']['median_s'] * 1e3:.2f} | {r['chunked']['median_s'] * 1e3:.2f} | "
            f"{r['speedup']:.1f}x |"
        )
    return "\n".join(lines)


def optim_step_table(data: dict) -> str:
    m = data["machine"]
    c = data["config"]
    lines = [
        f"Machine: {m['cpu_count']} CPU cores ({m['processor']}), {m['platform']}, jax {m['jax']}. "
        f"{c['n_matrices']} matrices of {tuple(c['shape'])} ({c['n_params'] / 1e6:.1f}M params); "
        "median of >= 5 jitted steps after warm-up.",
        "",
        "| optimizer | step (ms) | vs AdamW | vs Muon | compile (s) |",
        "|---|---|---|---|---|",
    ]
    for r in data["results"]:
        lines.append(
            f"| {r['optimizer']} | {r['median_s'] * 1e3:.1f} | {r['vs_adamw']:.2f}x | "
            f"{r['vs_muon']:.2f}x | {r['compile_s']:.2f} |"
        )
    return "\n".join(lines)


def model_throughput_table(data: dict) -> str:
    m = data["machine"]
    c = data["config"]
    lines = [
        f"Machine: {m['cpu_count']} CPU cores ({m['processor']}), {m['platform']}, jax {m['jax']}. "
        f"d_model {c['d_model']}, {c['n_layers']} layers, {c['n_heads']} heads, batch 1; one step = "
        "forward + backward + Adam update; median of >= 5 steps after warm-up.",
        "",
        "| model | seq | params | step (ms) | tokens/s | ms per token | compile (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        if "ratio" in r:
            lines.append(
                f"| Titans speed / Transformer++ speed | {r['seq']} | | | "
                f"**{r['ratio']:.2f}x** | | |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['seq']} | {r['params'] / 1e6:.2f}M | {r['median_s'] * 1e3:.0f} | "
            f"{r['tokens_per_s']:.0f} | {r['median_s'] * 1e3 / r['seq']:.3f} | {r['compile_s']:.1f} |"
        )
    return "\n".join(lines)


TABLES = {
    "memory_chunked": memory_chunked_table,
    "optim_step": optim_step_table,
    "model_throughput": model_throughput_table,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m benchmarks.table PATH.json")
    with open(argv[0]) as f:
        data = json.load(f)
    if data.get("benchmark") not in TABLES:
        raise SystemExit(f"no table format for benchmark {data.get('benchmark')!r}")
    print(TABLES[data["benchmark"]](data))


if __name__ == "__main__":
    main()
