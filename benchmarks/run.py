"""Run a benchmark and write its JSON: ``python -m benchmarks.run NAME [--quick] [--out PATH]``."""

from __future__ import annotations

import argparse
import importlib

from benchmarks.harness import write_json

BENCHMARKS = (
    "memory_chunked",
    "optim_step",
    "model_throughput",
    "selfmod_chunked",
    "flop_split",
    "session_absorb",
    "config_costs",
    "launches",
    "compile_time",
    "export_check",
    "sharding_plan",
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("name", choices=BENCHMARKS)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness only")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per case (>= 5)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/NAME.json)")
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="model_throughput / launches / export_check: which models",
    )
    p.add_argument(
        "--seqs", nargs="+", type=int, default=None, help="model_throughput only: lengths"
    )
    p.add_argument("--batch", type=int, default=1, help="model_throughput only: batch size")
    p.add_argument(
        "--rounds", type=int, default=1, help="model_throughput only: interleaved timing rounds"
    )
    p.add_argument("--configs", nargs="+", default=None, help="config_costs only: which configs")
    args = p.parse_args(argv)
    mod = importlib.import_module(f"benchmarks.{args.name}")
    kwargs = {"models": args.models} if args.models else {}
    if args.seqs:
        kwargs["seqs"] = args.seqs
    if args.batch != 1:
        kwargs["batch"] = args.batch
    if kwargs and args.name not in (
        "model_throughput",
        "launches",
        "export_check",
        "sharding_plan",
    ):
        raise SystemExit(
            "--models, --seqs and --batch apply to model_throughput and launches only "
            "(--models also to export_check)."
        )
    if args.name in ("export_check", "sharding_plan") and set(kwargs) - {"models"}:
        raise SystemExit(f"{args.name} takes --models only.")
    if args.rounds != 1:
        if args.name != "model_throughput":
            raise SystemExit("--rounds applies to model_throughput only.")
        kwargs["rounds"] = args.rounds
    if args.configs:
        if args.name != "config_costs":
            raise SystemExit("--configs applies to config_costs only.")
        kwargs["configs"] = args.configs
    payload = mod.run(quick=args.quick, repeats=args.repeats, **kwargs)
    suffix = "_quick" if args.quick else ""
    out = args.out or f"benchmarks/results/{args.name}{suffix}.json"
    print(f"wrote {write_json(out, payload)}")


if __name__ == "__main__":
    main()
