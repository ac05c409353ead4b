"""Hope's frontier: validation bits/byte at equal tokens and at equal wall-clock (issue 41 item 1).

Which Hope design learns most per unit of compute? Each variant is Hope at ``hope_tiny``'s sizes
(d_model 32, 2 layers, 2 heads) with one or more of the cost levers of decisions D95 switched on,
beside Titans and Transformer++ with their MLP widths matched to Hope's parameter count. Shakespeare
bytes, sequences of 256, batch 8, AdamW 3e-3 (the `hope_ablation` setup, so its ``shared`` cells
are this experiment's equal-token reference for ``hope_paper``, Titans and Transformer++).

Two budgets per cell:

* ``tokens``: 150 optimizer steps (307,200 bytes) for every model;
* ``clock``: the same seconds of training for every model (``--clock-seconds``, default 150),
  each model's step count set from its own seed-0 ``tokens`` cell's measured speed so that its
  cosine schedule ends where its budget does (``max_minutes`` caps it at 1.2x the budget).

Cells are resumable runs of the training system (``results/<budget>/<variant>/seed<k>/run/``, not
committed); a finished cell writes ``cell.json`` (committed) and is never rerun. ``--shard i/n``
runs every n-th cell (one process per core, pinned with ``taskset``).

Run: ``taskset -c 0 python -m experiments.hope_frontier.run --budget tokens --shard 0/2 &``
``taskset -c 1 python -m experiments.hope_frontier.run --budget tokens --shard 1/2``, then the
same with ``--budget clock``; ``--report`` aggregates ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import jax
import numpy as np

from experiments.common import cell_train_config, matched_d_ff, mean_std, write_results

FULL = {"seq": 256, "batch": 8, "steps": 150, "eval_batches": 16, "shrink": ()}
# the smoke run (tests): seconds, one layer, chunks that fit 32 tokens
SMOKE = {
    "seq": 32,
    "batch": 2,
    "steps": 3,
    "eval_batches": 1,
    "shrink": (("n_layers", 1), ("titans.chunk", 4), ("selfmod.chunk", 4), ("cms.periods", (4, 8))),
}
# the levers at hope_tiny's sizes: chunks of 32 tokens (an eighth of the sequence, as 64 of the
# 512-token benchmark) for the main and generator memories alike (one stacked memory call per
# chunk), CMS periods 32 / 128
_C32 = (("titans.chunk", 32), ("selfmod.chunk", 32), ("cms.periods", (32, 128)))
_LIN = (("selfmod.gates", "linear"),)
_C16 = (("titans.chunk", 16), ("selfmod.chunk", 16), ("cms.periods", (16, 64)))
_RES = (("cms.teach_path", "residual"),)
# the default of decisions D99: the online CMS signal at fixed rates, memories' width the head's
_DEFAULT = (
    _C32
    + _LIN
    + _RES
    + (("titans.expansion", 1), ("cms.signal", "online"), ("cms.learn_lr", False))
)
VARIANTS = {
    "hope_paper": ("hope_paper_tiny", ()),
    "c32": ("hope_paper_tiny", _C32),
    "c32_lin": ("hope_paper_tiny", _C32 + _LIN),
    "c32_lin_res": ("hope_paper_tiny", _C32 + _LIN + (("cms.teach_path", "residual"),)),
    "c32_lin_local": ("hope_paper_tiny", _C32 + _LIN + (("cms.signal", "local"),)),
    "c16_lin_res": ("hope_paper_tiny", _C16 + _LIN + _RES),
    "c16_lin": ("hope_paper_tiny", _C16 + _LIN),
    # the memories' hidden width equal to the head dimension (titans.expansion 2 -> 1)
    "c32_lin_res_e1": ("hope_paper_tiny", _C32 + _LIN + _RES + (("titans.expansion", 1),)),
    # the CMS's one-pass "online" signal (decisions D99), with the levels' rates learned or fixed
    "c32_lin_res_e1_online": (
        "hope_paper_tiny",
        _C32 + _LIN + _RES + (("titans.expansion", 1), ("cms.signal", "online")),
    ),
    "c32_lin_res_e1_online_fixed": (
        "hope_paper_tiny",
        _DEFAULT,
    ),
    # the default with the main and generator memories' chunks of 64 (a quarter of the
    # sequence; the CMS unchanged)
    "c64_online_fixed": (
        "hope_paper_tiny",
        (("titans.chunk", 64), ("selfmod.chunk", 64), ("cms.periods", (32, 128)))
        + _LIN
        + _RES
        + (("titans.expansion", 1), ("cms.signal", "online"), ("cms.learn_lr", False)),
    ),
    # Hope-Attention: the first design, its CMS at periods 32 / 128, then with the online signal
    "attention_paper": ("hope_attention_paper_tiny", ()),
    "attention_c32": ("hope_attention_paper_tiny", (("cms.periods", (32, 128)),)),
    "attention_c32_online": (
        "hope_attention_paper_tiny",
        (("cms.periods", (32, 128)),) + _RES + (("cms.signal", "online"), ("cms.learn_lr", False)),
    ),
    # after decisions D100 (the online error pass run backward from the chunk's forward: the same
    # values, less time): the defaults timed again, and Hope-Attention's CMS chunks a quarter of
    # the sequence (periods 64 / 128: half as many chunks one after the other)
    "c32_lin_res_e1_online_fixed_sweep": (
        "hope_paper_tiny",
        _DEFAULT,
    ),
    "attention_c32_online_sweep": (
        "hope_attention_paper_tiny",
        (("cms.periods", (32, 128)),) + _RES + (("cms.signal", "online"), ("cms.learn_lr", False)),
    ),
    "attention_c64_online": (
        "hope_attention_paper_tiny",
        (("cms.periods", (64, 128)),) + _RES + (("cms.signal", "online"), ("cms.learn_lr", False)),
    ),
    "titans": ("titans_tiny", ()),
    "transformer": ("tiny", ()),
    # after decisions D101 (DGD's triangular inverse by blocks: the same values, less time), in
    # one session: the default timed again, the default with CMS chunks a quarter of the sequence
    # (periods 64 / 128), and the two baselines timed again beside them
    "c32_lin_res_e1_online_fixed_blocks": (
        "hope_paper_tiny",
        _DEFAULT,
    ),
    "c32_cms64_blocks": (
        "hope_paper_tiny",
        _DEFAULT + (("cms.periods", (64, 128)),),
    ),
    # after decisions D103 (short chunk loops unrolled: the same values, less time), the same session
    "c32_cms64_unrolled": (
        "hope_paper_tiny",
        _DEFAULT + (("cms.periods", (64, 128)),),
    ),
    "titans_d101": ("titans_tiny", ()),
    "transformer_d101": ("tiny", ()),
}
_D100 = ("c32_lin_res_e1_online_fixed_sweep", "attention_c32_online_sweep", "attention_c64_online")
_D101 = (
    "c32_lin_res_e1_online_fixed_blocks",
    "c32_cms64_blocks",
    "titans_d101",
    "transformer_d101",
)
_BASELINES = ("titans_tiny", "tiny")  # their MLP widths are matched to hope_paper_tiny's params
_FAST = ("c32", "c32_lin", "c32_lin_res", "c32_lin_local")
TOKEN_CELLS = {
    0: tuple(v for v in VARIANTS if not v.startswith(("c16", "attention")) and "online" not in v),
    1: _FAST,
    2: _FAST,
    # a second round: chunks of 16
    3: ("c16_lin_res", "c16_lin"),
    4: ("c32_lin_res_e1",),
    5: ("c32_lin_res_e1_online", "c32_lin_res_e1_online_fixed"),
    6: ("attention_paper", "attention_c32", "attention_c32_online"),
    7: ("c64_online_fixed",),
    8: _D100,
    9: _D101,
    10: ("c32_cms64_unrolled",),
}
# a round's key -> the seeds it runs (default: the key)
SEEDS_OF = {k: (0, 1, 2) for k in (3, 4, 5, 6, 7, 8, 9, 10)}
CLOCK_VARIANTS = (
    "hope_paper",
    "c32_lin_res",
    "c16_lin_res",
    "titans",
    "transformer",
    "c32_lin_res_e1",
    "c32_lin_res_e1_online_fixed",
    "attention_paper",
    "attention_c32_online",
    *_D100,
    *_D101,
    "c32_cms64_unrolled",
)


def model_spec(variant: str, setup: dict = FULL) -> tuple[str, tuple]:
    name, extra = VARIANTS[variant]
    base = (("max_len", setup["seq"]),)
    if name in _BASELINES:
        one = tuple(x for x in setup["shrink"] if x[0] == "n_layers")
        return name, matched_d_ff(name, "hope_paper_tiny", base + one)
    return name, base + extra + tuple(setup["shrink"])  # (later entries win)


def cell_config(variant: str, seed: int, steps: int, max_minutes: float = 0.0, setup=FULL):
    name, overrides = model_spec(variant, setup)
    return cell_train_config(
        name,
        overrides,
        seq_len=setup["seq"],
        batch=setup["batch"],
        eval_batches=setup["eval_batches"],
        steps=steps,
        seed=seed,
        log_every=min(5, steps),
        max_minutes=max_minutes,
    )


def clock_steps(out: Path, variant: str, seconds: float, setup: dict = FULL) -> int:
    """The steps ``variant`` trains in ``seconds`` at its seed-0 tokens cell's speed."""
    ref = out / "tokens" / variant / "seed0" / "cell.json"
    if not ref.exists():
        raise FileNotFoundError(f"the clock budget needs {ref} first (run --budget tokens).")
    rate = json.loads(ref.read_text())["median_tokens_per_s"]
    return max(1, int(seconds * rate / (setup["seq"] * setup["batch"])))


def run_cell(variant: str, budget: str, seed: int, out: Path, seconds: float, setup=FULL) -> dict:
    from nested_jax.train.loop import NonFiniteLossError, load_run, train

    cdir = out / budget / variant / f"seed{seed}"
    done = cdir / "cell.json"
    if done.exists():
        return json.loads(done.read_text())
    if budget == "tokens":
        cfg = cell_config(variant, seed, setup["steps"], setup=setup)
    else:
        steps = clock_steps(out, variant, seconds, setup)
        cfg = cell_config(variant, seed, steps, 1.2 * seconds / 60, setup)
    tokens_per_step = setup["seq"] * setup["batch"]
    t0 = time.perf_counter()
    try:
        res = train(cfg, cdir / "run", progress=False)
    except NonFiniteLossError as e:  # a result: the variant diverged (recorded, not rerun)
        rec = {"variant": variant, "budget": budget, "seed": seed, "diverged": str(e)}
        rec.update(step=e.step, model=cfg.model, overrides=[list(kv) for kv in cfg.model_overrides])
        cdir.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(rec) + "\n")
        return rec
    wall = time.perf_counter() - t0
    run, state, step = load_run(cdir / "run")
    metrics = [json.loads(x) for x in (cdir / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [m for m in metrics if "train_s" in m and "loss" in m]
    rates = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
    rec = {
        "variant": variant,
        "budget": budget,
        "seed": seed,
        "model": cfg.model,
        "overrides": [list(kv) for kv in cfg.model_overrides],
        "params": run.model.num_params(state.params),
        "steps": step,
        "planned_steps": cfg.steps,
        "tokens": step * tokens_per_step,
        "val_bpb": res.val_bpb,
        "train_loss_last": res.train_loss,
        "skipped_steps": res.skipped,
        "train_s": res.train_s,
        "budget_spent": res.budget_spent,
        "wall_s_this_process": wall,
        "median_tokens_per_s": float(np.median(rates)) if rates else None,
        # the learning curve: (step, tokens, training seconds, training loss in bits/byte)
        "curve": [
            [m["step"], m["step"] * tokens_per_step, m["train_s"], m["loss"] / math.log(2)]
            for m in rows
        ],
    }
    done.write_text(json.dumps(rec) + "\n")
    return rec


def cells(budget: str, smoke: bool = False):
    if smoke:
        return [("c32_lin_res", 0), ("hope_paper", 0)]
    if budget == "tokens":
        return [(v, s) for r, vs in TOKEN_CELLS.items() for s in SEEDS_OF.get(r, (r,)) for v in vs]
    return [(v, s) for s in (0, 1, 2) for v in CLOCK_VARIANTS]


def report(out: Path) -> dict:
    recs = [json.loads(p.read_text()) for p in sorted(out.glob("*/*/seed*/cell.json"))]
    summary = {}
    for budget in ("tokens", "clock"):
        for variant in VARIANTS:
            every = [c for c in recs if c["budget"] == budget and c["variant"] == variant]
            cs = [c for c in every if "diverged" not in c]
            for c in every:
                if "diverged" in c:
                    summary.setdefault("diverged", []).append(
                        {"cell": f"{budget}/{variant}/seed{c['seed']}", "at_step": c["step"]}
                    )
            if cs:
                summary[f"{budget}/{variant}"] = {
                    "seeds": [c["seed"] for c in cs],
                    "params": cs[0]["params"],
                    "val_bpb": mean_std([c["val_bpb"] for c in cs]),
                    "steps": [c["steps"] for c in cs],
                    "train_s": mean_std([c["train_s"] for c in cs]),
                    "tokens_per_s": mean_std([c["median_tokens_per_s"] for c in cs]),
                    "skipped_steps": sum(c["skipped_steps"] for c in cs),
                }
    payload = {
        "experiment": "hope_frontier (issue 41 item 1)",
        "machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].platform}, "
        f"jax {jax.__version__}; one process pinned per core, two at a time",
        "setup": {k: FULL[k] for k in ("seq", "batch", "steps", "eval_batches")},
        "variants": {
            k: {"model": v[0], "overrides": [list(x) for x in v[1]]} for k, v in VARIANTS.items()
        },
        "summary": summary,
        "cells": recs,
    }
    write_results(out, payload)
    return payload


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", default="tokens", choices=("tokens", "clock"))
    p.add_argument("--clock-seconds", type=float, default=150.0)
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th cell, starting at i")
    p.add_argument("--max-minutes", type=float, default=None, help="start no cell after this")
    p.add_argument("--out", default="experiments/hope_frontier/results")
    p.add_argument("--report", action="store_true")
    p.add_argument("--smoke", action="store_true", help="seconds-long run (tests use it)")
    a = p.parse_args(argv)
    out = Path(a.out)
    if not a.report:
        i, n = (int(x) for x in a.shard.split("/"))
        t0 = time.perf_counter()
        setup = SMOKE if a.smoke else FULL
        for variant, seed in cells(a.budget, a.smoke)[i::n]:
            if a.max_minutes is not None and (time.perf_counter() - t0) / 60 > a.max_minutes:
                print("stopping: --max-minutes reached; run again to go on", flush=True)
                break
            rec = run_cell(variant, a.budget, seed, out, a.clock_seconds, setup)
            if "diverged" in rec:
                print(
                    f"{a.budget} {variant} seed {seed}: diverged at step {rec['step']}", flush=True
                )
                continue
            print(
                f"{a.budget} {variant} seed {seed}: val {rec['val_bpb']:.3f} bpb, "
                f"{rec['steps']} steps, {rec['train_s']:.0f} s",
                flush=True,
            )
    report(out)
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
