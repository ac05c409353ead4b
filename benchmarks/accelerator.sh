#!/usr/bin/env bash
# The prepared accelerator run (see benchmarks/accelerator.py): Transformer++ (parameter-matched
# to Hope), Titans and the default Hope at 512 / 2048 / 8192 tokens, batch 8, on whatever device
# JAX sees, under 8 minutes; JSON with the device's kind to $OUT (a device machine's output
# folder) or benchmarks/results/. Needs only jax, flax, optax, numpy (no training extras).
#   benchmarks/accelerator.sh            # on the accelerator
#   benchmarks/accelerator.sh --quick    # tiny sizes: seconds on a CPU (checks the script)
#   benchmarks/accelerator.sh --compute-dtype bfloat16   # mixed precision (decisions D105)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
tag=""
[[ " $* " == *" --quick "* ]] && tag+="_quick"
[[ " $* " == *" bfloat16 "* ]] && tag+="_bf16"
out="${OUT:-benchmarks/results}/accelerator${tag}.json"
"${PYTHON:-python3}" -c "import jax; print('devices:', jax.devices())"
"${PYTHON:-python3}" -m benchmarks.accelerator "$@" --out "$out"
