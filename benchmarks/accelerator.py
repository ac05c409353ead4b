"""The prepared accelerator run: training throughput and operation counts on whatever device JAX
sees, within a time budget, nothing lost when a case fails.

For each (model, sequence length) of the plan, one `model_throughput` measurement (batch 8 by
default: forward + backward + AdamW, compile time, matmul FLOPs) and the step's `launches`
counts; the JSON is rewritten after every case, with the device's kind beside every figure.
A case that fails (out of device memory, say) is recorded with its error and the run goes on;
no new case starts after ``--budget-min`` minutes. ``--quick``: tiny sizes (seconds on a CPU:
checks the script). Run through ``benchmarks/accelerator.sh``.
"""

from __future__ import annotations

import argparse
import time

import jax

from benchmarks import launches, model_throughput
from benchmarks.harness import write_json

MODELS = ("transformer_pm", "titans", "hope", "hope_paper")
SEQS = (512, 2048, 8192)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (checks the script)")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--seqs", nargs="+", type=int, default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget-min", type=float, default=7.0, help="no new case after this")
    p.add_argument(
        "--compute-dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="the models' matmul operands (mixed precision, decisions D105)",
    )
    p.add_argument("--out", default="benchmarks/results/accelerator.json")
    a = p.parse_args(argv)
    seqs = a.seqs or (list(model_throughput.QUICK["seqs"][:1]) if a.quick else list(SEQS))
    device = jax.devices()[0]
    rows, t0 = [], time.perf_counter()
    for seq in seqs:
        for kind in a.models:
            case = {
                "model": kind,
                "seq": seq,
                "batch": a.batch,
                "compute_dtype": a.compute_dtype,
                "device": device.device_kind,
            }
            if time.perf_counter() - t0 > 60 * a.budget_min:
                rows.append({**case, "skipped": "time budget"})
                continue
            try:
                got = model_throughput.run(
                    a.quick,
                    a.repeats,
                    models=[kind],
                    seqs=[seq],
                    batch=a.batch,
                    compute_dtype=a.compute_dtype,
                )["results"][0]
                base = dict(model_throughput.QUICK if a.quick else model_throughput.FULL)
                cfg = model_throughput.model_config(
                    kind, seq, {**base, "compute_dtype": a.compute_dtype}
                )
                counts = launches.step_counts(cfg, seq, a.batch)
                rows.append({**case, **got, "matmuls": counts["matmuls"], "ops": counts["ops"]})
            except Exception as e:  # noqa: BLE001 - a failed case is a result; the rest go on
                rows.append({**case, "error": f"{type(e).__name__}: {str(e)[:300]}"})
                print(f"{kind} seq={seq}: failed ({type(e).__name__})", flush=True)
            payload = {
                "benchmark": "accelerator",
                "config": {
                    "quick": a.quick,
                    "batch": a.batch,
                    "models": a.models,
                    "seqs": seqs,
                    "compute_dtype": a.compute_dtype,
                },
                "results": rows,
                "elapsed_s": time.perf_counter() - t0,
            }
            write_json(a.out, payload)  # after every case: nothing is lost
    print(f"wrote {a.out} ({len(rows)} cases, {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
