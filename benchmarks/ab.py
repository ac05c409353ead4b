"""A back-to-back A/B of ``model_throughput`` between two checkouts of nested_jax.

For a change that must not slow any model (a refactor), run the training-step benchmark of each
model from the base checkout and from this one, alternating (A B, then B A, ...) so that both
see the same machine state, and report each model's tokens/s, compile seconds and matmul FLOPs
per step from both, with the ratio this / base. Each measurement is its own process (the two
checkouts cannot share one).

Run (the base as a git worktree, e.g. ``git worktree add /tmp/base <commit>``):

    python -m benchmarks.ab --base /tmp/base --models transformer hope --seqs 512 \\
        --out benchmarks/results/ab.json

Nothing else should run on the machine meanwhile (the JSON records whether it was asked to be
idle; it cannot check).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import write_json

HERE = Path(__file__).resolve().parents[1]


def _measure(tree: Path, model: str, seq: int, repeats: int, quick: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [sys.executable, "-m", "benchmarks.run", "model_throughput"]
        cmd += ["--models", model, "--seqs", str(seq), "--repeats", str(repeats), "--out", str(out)]
        cmd += ["--quick"] if quick else []
        env = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
        rows = json.loads(out.read_text())["results"]
    row = next(r for r in rows if r.get("model") == model)
    return {k: row[k] for k in ("tokens_per_s", "compile_s", "matmul_gflop_per_step", "params")}


def run(base: Path, models, seqs, rounds: int, repeats: int, quick: bool = False) -> dict:
    trees = {"base": base.resolve(), "this": HERE}
    runs = {name: {(m, s): [] for m in models for s in seqs} for name in trees}
    for r in range(rounds):
        order = ("base", "this") if r % 2 == 0 else ("this", "base")
        for seq in seqs:
            for model in models:
                for name in order:
                    got = _measure(trees[name], model, seq, repeats, quick)
                    runs[name][(model, seq)].append(got)
                    print(
                        f"round {r} {name:>4} {model:>18} seq={seq} "
                        f"{got['tokens_per_s']:8.0f} tok/s  compile {got['compile_s']:.1f}s",
                        flush=True,
                    )
    rows = []
    for model in models:
        for seq in seqs:
            a, b = runs["base"][(model, seq)], runs["this"][(model, seq)]
            med = lambda xs, k: statistics.median(x[k] for x in xs)
            row = {"model": model, "seq": seq}
            for name, xs in (("base", a), ("this", b)):
                row[f"{name}_tokens_per_s"] = med(xs, "tokens_per_s")
                row[f"{name}_tokens_per_s_runs"] = [x["tokens_per_s"] for x in xs]
                row[f"{name}_compile_s"] = med(xs, "compile_s")
                row[f"{name}_matmul_gflop"] = xs[0]["matmul_gflop_per_step"]
                row[f"{name}_params"] = xs[0]["params"]
            row["speed_this_over_base"] = row["this_tokens_per_s"] / row["base_tokens_per_s"]
            rows.append(row)
            print(
                f"{model:>18} seq={seq}: this/base speed {row['speed_this_over_base']:.3f}, "
                f"GFLOP {row['base_matmul_gflop']:.2f} -> {row['this_matmul_gflop']:.2f}, "
                f"compile {row['base_compile_s']:.1f} -> {row['this_compile_s']:.1f} s"
            )
    return {
        "benchmark": "ab",
        "base": str(trees["base"]),
        "base_commit": _commit(trees["base"]),
        "this_commit": _commit(HERE),
        "config": {"models": list(models), "seqs": list(seqs), "rounds": rounds, "quick": quick},
        "results": rows,
    }


def _commit(tree: Path) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, type=Path, help="the base checkout (a worktree)")
    p.add_argument("--models", nargs="+", default=["transformer", "titans", "hope"])
    p.add_argument("--seqs", nargs="+", type=int, default=[512])
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (>= 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per measurement")
    p.add_argument("--quick", action="store_true", help="tiny models (checks the harness only)")
    p.add_argument("--out", default="benchmarks/results/ab.json")
    args = p.parse_args(argv)
    if args.rounds < 2:
        raise SystemExit("--rounds must be >= 2 (each order once).")
    if not (args.base / "benchmarks" / "run.py").exists():
        raise SystemExit(f"{args.base} is not a nested_jax checkout (no benchmarks/run.py).")
    payload = run(args.base, args.models, args.seqs, args.rounds, args.repeats, args.quick)
    print(f"wrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()
