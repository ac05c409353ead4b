"""Print a benchmark JSON as a markdown table: ``python -m benchmarks.table PATH``."""

from __future__ import annotations

import json
import sys


def _machine(m: dict) -> str:
    return (
        f"Machine: {m['cpu_count']} CPU cores ({m['processor']}), {m['platform']}, jax {m['jax']}."
    )


def _table(caption: str, columns: list[str], rows: list[list[str]]) -> str:
    lines = [caption, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def memory_chunked_table(data: dict) -> str:
    rows = [
        [
            r["memory"],
            str(r["seq"]),
            str(r["batch"]),
            str(r["chunk"]),
            r["mode"],
            f"{r['token_scan']['median_s'] * 1e3:.2f}",
            f"{r['chunked']['median_s'] * 1e3:.2f}",
            f"{r['speedup']:.1f}x",
        ]
        for r in data["results"]
    ]
    return _table(
        _machine(data["machine"]) + " Medians of >= 5 runs after warm-up, compile excluded.",
        ["memory", "seq", "batch", "chunk", "mode", "token scan (ms)", "chunked (ms)", "speedup"],
        rows,
    )


def optim_step_table(data: dict) -> str:
    c = data["config"]
    rows = [
        [
            r["optimizer"],
            f"{r['median_s'] * 1e3:.1f}",
            f"{r['vs_adamw']:.2f}x",
            f"{r['vs_muon']:.2f}x",
            f"{r['compile_s']:.2f}",
        ]
        for r in data["results"]
    ]
    caption = (
        f"{_machine(data['machine'])} {c['n_matrices']} matrices of {tuple(c['shape'])} "
        f"({c['n_params'] / 1e6:.1f}M params); median of >= 5 jitted steps after warm-up."
    )
    return _table(caption, ["optimizer", "step (ms)", "vs AdamW", "vs Muon", "compile (s)"], rows)


def _buffers_mib(r: dict) -> str:
    """The executable's buffers (arguments + outputs + temporaries), an upper bound on its
    footprint, from XLA's compiled memory analysis."""
    m = r.get("memory")
    if not m:
        return "n/a"
    return f"{(m['argument'] + m['output'] + m['temp']) / 2**20:.0f}"


def model_throughput_table(data: dict) -> str:
    c = data["config"]
    rows = []
    for r in data["results"]:
        if "ratio" in r:
            name, base = r["model"].removesuffix(" speed").split("/")
            base = "Transformer++" + (" (params matched)" if base == "transformer_pm" else "")
            label = f"{name.replace('_', '-')} speed / {base} speed"
            rows.append([label, str(r["seq"])] + [""] * 9)
            rows[-1][4] = f"**{r['ratio']:.2f}x**"
            continue
        rows.append(
            [
                r["model"],
                str(r["seq"]),
                f"{r['params'] / 1e6:.2f}M",
                f"{r['median_s'] * 1e3:.0f}",
                f"{r['tokens_per_s']:.0f}",
                f"{r['median_s'] * 1e3 / r['seq']:.3f}",
                f"{r['cost_per_token_vs_shortest']:.2f}x"
                if "cost_per_token_vs_shortest" in r
                else "",
                f"{r['matmul_gflop_per_step']:.1f}" if "matmul_gflop_per_step" in r else "",
                f"{r['matmul_gflop_per_s']:.1f}" if "matmul_gflop_per_s" in r else "",
                _buffers_mib(r),
                f"{r['compile_s']:.1f}",
            ]
        )
    caption = (
        f"{_machine(data['machine'])} d_model {c['d_model']}, {c['n_layers']} layers, "
        f"{c['n_heads']} heads, batch {c.get('batch', 1)}; one step = forward + backward + "
        "optimizer update; median of "
        ">= 5 steps after warm-up. Matmul GFLOP: counted on the step's jaxpr, loop bodies times "
        "their trip counts (GFLOP/s: achieved, over the median step). Buffers: XLA's compiled "
        "arguments + outputs + temporaries."
    )
    columns = [
        "model",
        "seq",
        "params",
        "step (ms)",
        "tokens/s",
        "ms per token",
        "per token vs shortest",
        "matmul GFLOP",
        "GFLOP/s",
        "buffers (MiB)",
        "compile (s)",
    ]
    return _table(caption, columns, rows)


def selfmod_chunked_table(data: dict) -> str:
    c = data["config"]
    rows, times = [], {}
    for r in data["results"]:
        key = (r["seq"], r["mem_chunk"], r["sm_chunk"])
        if r["form"] == "speedup":
            t = times[key]
            rows.append(
                [
                    str(r["seq"]),
                    f"{r['mem_chunk']} / {r['sm_chunk']}",
                    f"{t['reference'] * 1e3:.0f}",
                    f"{t['chunked'] * 1e3:.0f}",
                    f"**{r['ratio']:.1f}x**",
                ]
            )
        else:
            times.setdefault(key, {})[r["form"]] = r["median_s"]
    caption = (
        f"{_machine(data['machine'])} Self-modifying Titans LM, d_model {c['d_model']}, "
        f"{c['n_layers']} layers, {c['n_heads']} heads, batch 1; loss + gradient w.r.t. every "
        "parameter; medians of >= 5 runs after warm-up."
    )
    columns = ["seq", "chunks (main / others)", "reference (ms)", "chunked (ms)", "speedup"]
    return _table(caption, columns, rows)


def flop_split_table(data: dict) -> str:
    c = data["config"]
    rows = [
        [
            r["model"],
            ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "default",
            f"{r['params'] / 1e6:.2f}M",
            f"{r['forward_gflop']:.2f}",
            f"{r['forward_backward_gflop']:.2f}",
        ]
        for r in data["results"]
    ]
    caption = (
        f"{_machine(data['machine'])} d_model {c['d_model']}, {c['n_layers']} layers, "
        f"{c['n_heads']} heads, batch 1, {data['results'][0]['seq']} tokens; matmul GFLOP counted "
        "on the jaxpr (loop bodies times trip counts), nothing timed."
    )
    columns = ["model", "overrides", "params", "forward GFLOP", "forward + backward GFLOP"]
    return _table(caption, columns, rows)


def memory_ab_table(data: dict) -> str:
    cases = [k for k in data["runs"][0] if k != "code"]
    rows = [[r["code"]] + [f"{r[k]:.1f}" for k in cases] for r in data["runs"]]
    caption = f"{_machine(data['machine'])} {data['method']} Finding: {data['finding']}."
    return _table(caption, ["code"] + [f"{k} (ms)" for k in cases], rows)


def session_absorb_table(data: dict) -> str:
    rows = [
        [
            r["model"],
            str(r["piece"]),
            f"{r['token']['tokens_per_s']:.0f}",
            f"{r['parallel']['tokens_per_s']:.0f}",
            f"{r['speedup']:.1f}x",
            f"{r['token']['compile_s']:.1f}",
            f"{r['parallel']['compile_s']:.1f}",
        ]
        for r in data["results"]
    ]
    return _table(
        _machine(data["machine"]) + " Batch 1, forward only; medians of >= 5 runs, compile apart.",
        [
            "model",
            "piece",
            "token-by-token tok/s",
            "parallel tok/s",
            "speedup",
            "compile token (s)",
            "compile parallel (s)",
        ],
        rows,
    )


def _step_cell(r: dict) -> str:
    if r.get("error"):
        m = r.get("memory") or {}
        need = m.get("temp", 0) + m.get("argument", 0) + m.get("output", 0)
        need = f" (XLA: {need / 2**30:.0f} GiB of buffers)" if need else ""
        return f"out of memory{need}"
    return f"{r['median_s']:.3f}" + (" (one run)" if r.get("timed_runs", 5) == 1 else "")


def config_costs_table(data: dict) -> str:
    rows = [
        [
            f"`{r['config']}`",
            f"{r['model']} ({r['params'] / 1e6:.2f}M)",
            r["optimizer"],
            f"{r['batch']} x {r['seq_len']}",
            f"{r['compile_s']:.0f}",
            _step_cell(r),
            f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else "-",
        ]
        for r in data["results"]
    ]
    return _table(
        _machine(data["machine"]) + " One training step (full optimisation); median of >= 5"
        " timed runs after warm-up unless marked.",
        [
            "config",
            "model (parameters)",
            "optimizer",
            "batch",
            "compile (s)",
            "s / step",
            "tokens/s",
        ],
        rows,
    )


def ab_table(data: dict) -> str:
    rows = [
        [
            r["model"],
            str(r["seq"]),
            f"{r['base_tokens_per_s']:,.0f}",
            f"{r['this_tokens_per_s']:,.0f}",
            f"{r['speed_this_over_base']:.2f}",
            f"{r['base_matmul_gflop']:.2f} -> {r['this_matmul_gflop']:.2f}",
            f"{r['base_compile_s']:.1f} -> {r['this_compile_s']:.1f}",
        ]
        for r in data["results"]
    ]
    caption = (
        f"{_machine(data['machine'])} Base {data['base_commit'][:8]}, this "
        f"{data['this_commit'][:8]}; medians over {data['config']['rounds']} alternating rounds."
    )
    cols = ["model", "seq", "base tok/s", "this tok/s", "this / base", "GFLOP", "compile (s)"]
    return _table(caption, cols, rows)


def launches_table(data: dict) -> str:
    rows = [
        [
            r["model"],
            str(r["seq"]),
            f"{r['params']:,}",
            f"{r['matmuls']:,}",
            f"{r['ops']:,}",
            f"{r['matmul_gflop']:.2f}",
        ]
        for r in data["results"]
    ]
    caption = (
        f"{_machine(data['machine'])} Per training step (loss, gradient, AdamW), traced: loop "
        "bodies times their trip counts."
    )
    return _table(caption, ["model", "seq", "params", "matmuls", "ops", "matmul GFLOP"], rows)


def accelerator_table(data: dict) -> str:
    rows = []
    for r in data["results"]:
        if "tokens_per_s" in r:
            rows.append(
                [
                    r["model"],
                    str(r["seq"]),
                    str(r["batch"]),
                    f"{r['tokens_per_s']:,.0f}",
                    f"{r['compile_s']:.1f}",
                    f"{r['matmul_gflop_per_s']:.1f}",
                    f"{r['matmuls']:,}",
                ]
            )
        else:
            rows.append([r["model"], str(r["seq"]), str(r["batch"]), "-", "-", "-", "-"])
            rows[-1][3] = r.get("error", r.get("skipped", ""))[:60]
    caption = f"{_machine(data['machine'])} Device: {data['machine'].get('device_kind')}."
    cols = ["model", "seq", "batch", "tokens/s", "compile (s)", "GFLOP/s", "matmuls"]
    return _table(caption, cols, rows)


def session_cuts_table(data: dict) -> str:
    rows = [
        [r["variant"], r["commit"], *(f"{x:.1f}" for x in r["call_s"]), f"{r['total_s']:.1f}"]
        for r in data["results"]
    ]
    n = len(data["results"][0]["call_s"])
    cols = ["variant", "commit", *(f"call {i + 1} (s)" for i in range(n)), "total (s)"]
    return _table(_machine(data["machine"]) + " " + data["method"], cols, rows)


def launches_levers_table(data: dict) -> str:
    rows = [
        [r["hope"], f"{r['matmuls']:,}", f"{r['ops']:,}", f"{r['matmul_gflop']:.1f}"]
        for r in data["results"]
    ]
    return _table(
        f"{_machine(data['machine'])} {data['shape']}.", ["Hope", "matmuls", "ops", "GFLOP"], rows
    )


def compile_time_table(data: dict) -> str:
    rows = [
        [
            r["model"] + (f" ({r['n_layers']} layers)" if "n_layers" in r else ""),
            f"{r['trace_lower_s']:.1f}",
            f"{r['compile_s']:.1f}",
            f"{r['total_s']:.1f}",
            str(r["stablehlo_kb"]),
        ]
        for r in data["results"]
    ]
    cols = ["model", "trace + lower (s)", "compile (s)", "total (s)", "StableHLO (kB)"]
    return _table(f"{_machine(data['machine'])} {data['method']}", cols, rows)


def export_check_table(data: dict) -> str:
    bf16 = lambda r, k: str(r.get(f"{k}_bf16_dots", "")) or "-"
    rows = [
        [
            r["model"],
            r.get("compute_dtype", "float32"),
            str(r["tokens"]),
            str(r["train_stablehlo_kb"]),
            str(r["stream_stablehlo_kb"]),
            f"{r['train_export_s']:.1f}",
            f"{bf16(r, 'train')} / {bf16(r, 'stream')}",
        ]
        for r in data["results"]
    ]
    cols = [
        "model",
        "matmuls in",
        "tokens",
        "train step (kB)",
        "streaming step (kB)",
        "train export (s)",
        "bf16 matmuls (train / stream)",
    ]
    plats = "/".join(data["config"]["platforms"])
    caption = f"{_machine(data['machine'])} StableHLO exported for {plats} (every export passed)."
    return _table(caption, cols, rows)


def sharding_plan_table(data: dict) -> str:
    rows = [
        [
            f"{r['model']} ({r['params'] / 1e6:,.0f}M)",
            str(r["devices"]),
            f"({r['mesh']['data']}, {r['mesh']['fsdp']})",
            f"{r['train_state_gib_per_device']:.3f} (unsharded {r['unsharded_train_state_gib']:.2f})",
            f"{r['replicated_gib_per_device']:.3f}",
            f"{r['fast_state_gib_per_sequence']:.2f}",
        ]
        for r in data["results"]
    ]
    cols = [
        "model",
        "devices",
        "mesh (data, fsdp)",
        "training state per device (GiB)",
        "of it replicated",
        "in-context state per sequence (GiB)",
    ]
    caption = f"{_machine(data['machine'])} Computed with jax.eval_shape, not run."
    return _table(caption, cols, rows)


TABLES = {
    "sharding_plan": sharding_plan_table,
    "export_check": export_check_table,
    "launches levers": launches_levers_table,
    "compile time": compile_time_table,
    "ab": ab_table,
    "session_cuts": session_cuts_table,
    "accelerator": accelerator_table,
    "launches": launches_table,
    "config_costs": config_costs_table,
    "flop_split": flop_split_table,
    "memory_chunked": memory_chunked_table,
    "memory_ab": memory_ab_table,
    "optim_step": optim_step_table,
    "model_throughput": model_throughput_table,
    "selfmod_chunked": selfmod_chunked_table,
    "session_absorb": session_absorb_table,
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
