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


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m benchmarks.table PATH.json")
    with open(argv[0]) as f:
        data = json.load(f)
    if data.get("benchmark") != "memory_chunked":
        raise SystemExit(f"no table format for benchmark {data.get('benchmark')!r}")
    print(memory_chunked_table(data))


if __name__ == "__main__":
    main()
