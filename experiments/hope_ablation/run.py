"""Hope ablation on Shakespeare bytes (issue 11's quality gates; PAPER.md §4, §9).

At equal tokens and (nearly) equal parameters, byte level, trained at 256 tokens:

* ``hope``: the registry's ``hope_paper_tiny`` (self-modifying Titans + a two-level CMS learning in
  context with the default two-pass ``"teach"`` signal);
* ``hope_ntp``: the same with the exact next-token CMS signal (``"ntp"``, second order);
* ``hope_frozen``: the same with every CMS level frozen (``cms.periods=(0, 0)``: two plain MLPs);
* ``titans`` and ``transformer`` (Transformer++): their MLP width chosen so that the parameter
  count matches Hope's;
* ``<hope variant>_sg_targets``: the three Hope variants as run before decisions D89, with the
  outer gradient stopped at every memory's self-generated target (``selfmod.target_grad=False``).
  The cells made before that fix are kept under these names; they are trained only when named.

Each cell (budget, variant, seed) is a resumable run of the training system
(:func:`nested_jax.train.train`, checkpoints every ``ckpt_every`` steps), then an evaluation:
validation bits per byte at the training length, and the loss by position over held-out
1024-byte sequences (the longest context any model here saw is 256), for Hope variants with the
CMS's in-context updates on (as trained) and off (the same weights with ``cms.lr = 0``: every
level stays at its learned initial weights). The self-modifying memories keep learning in both.

Budgets: ``shared`` (~300K bytes, every variant, the exact ``"ntp"`` Hope included) and ``large``
(~2M bytes, every variant but ``hope_ntp``). A run is cut into cells; ``--max-minutes`` stops
starting new cells after that long, and a killed cell resumes from its newest checkpoint, so the
whole grid can be spread over several working sessions. ``--report`` only aggregates the
finished cells into ``results.json`` and ``loss_by_position.png``.

Run: ``python -m experiments.hope_ablation.run --budget shared [--variants hope hope_ntp]
[--seeds 0 1 2] [--max-minutes 120] [--out experiments/hope_ablation/results]``.
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

from experiments.common import (
    cell_train_config,
    matched_d_ff,
    mean_std,
    pyplot,
    save_figure,
    selected_models,
    write_results,
)

_HOPES = ("hope", "hope_ntp", "hope_frozen")
# the Hope cells made before decisions D89 (the outer gradient stopped at every memory's
# self-generated target): kept under these names, trained only when named
BEFORE_D89 = tuple(f"{v}_sg_targets" for v in _HOPES)
VARIANTS = (*_HOPES, "titans", "transformer", *BEFORE_D89)
BUDGETS = {
    # name: (optimizer steps, variants); tokens = steps * batch * seq_len
    "shared": (150, VARIANTS),  # 307,200 bytes
    "large": (1000, tuple(v for v in VARIANTS if not v.startswith("hope_ntp"))),  # 2,048,000 bytes
}
FULL = {
    "seq_len": 256,
    "batch": 8,
    "eval_len": 1024,
    "eval_seqs": 32,
    "bin": 64,
    "eval_batches": 16,
}
# the smoke run: one layer per model (the same for every variant, so the parameter match holds)
SMOKE = {
    "seq_len": 32,
    "batch": 2,
    "eval_len": 64,
    "eval_seqs": 2,
    "bin": 16,
    "eval_batches": 1,
    "shrink": [["n_layers", 1]],
}
_BASE = {
    "hope": ("hope_paper_tiny", ()),
    "hope_ntp": ("hope_paper_tiny", (("cms.signal", "ntp"),)),
    "hope_frozen": ("hope_paper_tiny", (("cms.periods", (0, 0)),)),
    "titans": ("titans_tiny", ()),
    "transformer": ("tiny", ()),
}
for _v in _HOPES:
    _BASE[f"{_v}_sg_targets"] = (_BASE[_v][0], _BASE[_v][1] + (("selfmod.target_grad", False),))


def model_spec(variant: str, eval_len: int, shrink=()) -> tuple[str, tuple]:
    """``(registry name, overrides)`` of a variant; Titans' and Transformer++'s MLP widths (multiples
    of 8) are the ones whose parameter count is nearest Hope's. ``shrink``: overrides applied to
    every variant and to the Hope the others are matched to (the smoke run's one layer)."""
    name, extra = _BASE[variant]
    shrink = tuple(tuple(x) for x in shrink)
    if variant in ("titans", "transformer"):
        return name, matched_d_ff(
            name, "hope_paper_tiny", (("max_len", eval_len),) + shrink
        ) + extra
    return name, (("max_len", eval_len),) + shrink + extra


def cell_config(variant: str, budget: str, seed: int, setup: dict, steps: int | None = None):
    name, overrides = model_spec(variant, setup["eval_len"], setup.get("shrink", ()))
    steps = BUDGETS[budget][0] if steps is None else steps
    return cell_train_config(
        name,
        overrides,
        seq_len=setup["seq_len"],
        batch=setup["batch"],
        eval_batches=setup["eval_batches"],
        steps=steps,
        seed=seed,
    )


def loss_by_position(model, params, windows: np.ndarray, batch: int) -> np.ndarray:
    """Mean next-token loss (nats) at each position ``1 .. L-1`` over ``windows [n, L]``."""
    import jax.numpy as jnp

    from nested_jax.models import token_nll

    @jax.jit
    def nll(p, t):
        return token_nll(model.apply(p, t)[0], t)

    rows = [
        np.asarray(nll(params, jnp.asarray(windows[i : i + batch])))
        for i in range(0, len(windows), batch)
    ]
    return np.concatenate(rows).mean(0)


def run_cell(variant: str, budget: str, seed: int, out: Path, setup: dict, steps=None) -> dict:
    """Train (or resume) one cell, evaluate it and write ``cell.json``; returns its record."""
    from nested_jax.models import LanguageModel
    from nested_jax.train import data as data_lib
    from nested_jax.train.loop import load_run, train

    cdir = out / budget / variant / f"seed{seed}"
    done = cdir / "cell.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg = cell_config(variant, budget, seed, setup, steps)
    t0 = time.perf_counter()
    res = train(cfg, cdir / "run", progress=False)
    train_s = time.perf_counter() - t0
    run, state, step = load_run(cdir / "run")
    metrics = [json.loads(x) for x in (cdir / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
    windows = data_lib.eval_windows(
        run.splits.val, seq_len=setup["eval_len"], max_windows=setup["eval_seqs"]
    )
    params = state.params
    curves = {"on": loss_by_position(run.model, params, windows, setup["batch"])}
    cms_live = run.model_config.kind.startswith("hope") and run.model_config.cms.chunk
    if cms_live:
        off = LanguageModel(run.model_config.replace(cms={"lr": 0.0}))
        curves["off"] = loss_by_position(off, params, windows, setup["batch"])
    bits = lambda nats: float(nats) / math.log(2)
    rec = {
        "variant": variant,
        "budget": budget,
        "seed": seed,
        "model": cfg.model,
        "overrides": [list(kv) for kv in cfg.model_overrides],
        "params": run.model.num_params(params),
        "steps": step,
        "tokens": step * cfg.data.batch_size * cfg.data.seq_len,
        "train_loss_last": res.train_loss,
        "val_bpb": res.val_bpb,
        "skipped_steps": res.skipped,
        "train_seconds_this_process": train_s,
        "median_tokens_per_s": float(np.median(rates)) if rates else None,
        "eval_len": setup["eval_len"],
        "eval_seqs": int(len(windows)),
        "bpb_by_position": {k: [bits(x) for x in v] for k, v in curves.items()},
        "bpb_heldout": {k: bits(v.mean()) for k, v in curves.items()},
        "bpb_heldout_beyond_train_len": {
            k: bits(v[setup["seq_len"] :].mean()) for k, v in curves.items()
        },
    }
    done.write_text(json.dumps(rec) + "\n")
    return rec


def report(out: Path, setup: dict) -> dict:
    """Aggregate every finished cell under ``out`` into ``results.json`` and the plot."""
    cells = [json.loads(p.read_text()) for p in sorted(out.glob("*/*/seed*/cell.json"))]
    summary = {}
    for budget in BUDGETS:
        for variant in VARIANTS:
            cs = [c for c in cells if c["budget"] == budget and c["variant"] == variant]
            if not cs:
                continue
            row = {
                "seeds": [c["seed"] for c in cs],
                "params": cs[0]["params"],
                "tokens": cs[0]["tokens"],
                "val_bpb": mean_std([c["val_bpb"] for c in cs]),
                "tokens_per_s": mean_std([c["median_tokens_per_s"] for c in cs]),
                "skipped_steps": sum(c["skipped_steps"] for c in cs),
            }
            for mode in ("on", "off"):
                if all(mode in c["bpb_heldout"] for c in cs):
                    row[f"heldout_bpb_cms_{mode}"] = mean_std([c["bpb_heldout"][mode] for c in cs])
                    row[f"beyond_train_len_bpb_cms_{mode}"] = mean_std(
                        [c["bpb_heldout_beyond_train_len"][mode] for c in cs]
                    )
            if all("off" in c["bpb_heldout"] for c in cs):
                row["cms_on_minus_off"] = mean_std(
                    [c["bpb_heldout"]["on"] - c["bpb_heldout"]["off"] for c in cs]
                )
            summary[f"{budget}/{variant}"] = row
    payload = {
        "experiment": "hope_ablation (issue 11)",
        "machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].platform}, "
        f"jax {jax.__version__}",
        "setup": setup,
        "budgets": {k: {"steps": v[0], "variants": list(v[1])} for k, v in BUDGETS.items()},
        "summary": summary,
        "cells": cells,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_results(out, payload)
    if cells:
        _plot(out, cells, setup)
    return payload


def _plot(out: Path, cells: list, setup: dict) -> None:
    plt = pyplot()
    budgets = [b for b in BUDGETS if any(c["budget"] == b for c in cells)]
    fig, axes = plt.subplots(1, len(budgets), figsize=(6.5 * len(budgets), 4.2), squeeze=False)
    b = setup["bin"]
    for ax, budget in zip(axes[0], budgets, strict=True):
        for i, variant in enumerate(VARIANTS):
            cs = [c for c in cells if c["budget"] == budget and c["variant"] == variant]
            for mode, style in (("on", "-"), ("off", ":")):
                if not cs or not all(mode in c["bpb_by_position"] for c in cs):
                    continue
                curve = np.mean([c["bpb_by_position"][mode] for c in cs], axis=0)
                n = len(curve) // b
                binned = curve[: n * b].reshape(n, b).mean(1)
                label = variant + (" (CMS updates off)" if mode == "off" else "")
                ax.plot((np.arange(n) + 0.5) * b, binned, style, color=f"C{i}", label=label)
        ax.axvline(setup["seq_len"], color="grey", lw=0.8)
        ax.set_title(f"{budget} budget: held-out {setup['eval_len']}-byte sequences")
        ax.set_xlabel("position (bytes); grey: training length")
        ax.set_ylabel(f"bits per byte (mean of {b}-byte bins, over seeds)")
        ax.legend(fontsize=7)
    save_figure(fig, out / "loss_by_position.png")


def run(
    budget: str = "shared",
    variants=None,
    seeds=(0, 1, 2),
    out: Path | str = "experiments/hope_ablation/results",
    max_minutes: float | None = None,
    smoke: bool = False,
) -> dict:
    out = Path(out)
    setup = dict(SMOKE if smoke else FULL)
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {sorted(BUDGETS)}, got {budget!r}.")
    allowed = BUDGETS[budget][1]
    variants = tuple(selected_models(variants, allowed, BEFORE_D89, report=False))
    bad = [v for v in variants if v not in allowed]
    if bad:
        raise ValueError(f"variants {bad} are not in the {budget!r} budget ({list(allowed)}).")
    t0 = time.perf_counter()
    for seed in seeds:  # seed-major: a cut-short grid still has every variant at seed 0
        for variant in variants:
            if max_minutes is not None and (time.perf_counter() - t0) / 60 > max_minutes:
                print(f"stopping: --max-minutes {max_minutes} reached; run again to go on")
                return report(out, setup)
            rec = run_cell(variant, budget, seed, out, setup, steps=3 if smoke else None)
            print(
                f"{budget:>6} {variant:>12} seed {seed}: val {rec['val_bpb']:.3f} bpb, held-out "
                + ", ".join(f"CMS {k} {v:.3f}" for k, v in rec["bpb_heldout"].items()),
                flush=True,
            )
    return report(out, setup)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", default="shared", choices=sorted(BUDGETS))
    p.add_argument("--variants", nargs="*", choices=VARIANTS)
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--out", default="experiments/hope_ablation/results")
    p.add_argument("--report", action="store_true", help="only aggregate the finished cells")
    p.add_argument("--smoke", action="store_true", help="seconds-long run (tests use it)")
    a = p.parse_args(argv)
    if a.report:
        report(Path(a.out), dict(SMOKE if a.smoke else FULL))
    else:
        run(a.budget, a.variants, tuple(a.seeds), a.out, a.max_minutes, a.smoke)
    print(f"wrote {Path(a.out) / 'results.json'}")


if __name__ == "__main__":
    main()
