"""Language modelling at small scale: does Hope beat Transformer++ on real text? (issue 15)

Parts (each a subcommand; every result lands under ``--out``, default ``experiments/lm/results``):

* ``train``: the Table 2 analogue. Transformer++, Titans, self-modifying Titans, Hope-Attention
  and Hope (:mod:`experiments.lm.configs`: parameters matched to Hope's within 5%) trained on the
  same tokens of one corpus (Shakespeare bytes, or Wikipedia paragraphs with a 1,024-token BPE),
  ``--bytes`` of training text each (steps = bytes / (batch x seq_len x bytes per token)). Each
  cell (size, corpus, budget, model, seed) is a resumable run of the training system; a finished
  cell writes ``cell.json``: validation bits per byte (per byte whatever the tokenizer), the
  learning curve against tokens and against training seconds, throughput, compile time.
* ``context``: the long-context part, on finished ``train`` cells (``train`` runs it on each
  cell as it finishes, while the cell's uncommitted weights are on disk): bits per byte by position over
  held-out sequences 4x and 16x the training length, streamed in training-length pieces (the
  memories carry their state; attention models see a sliding window of the training length, and
  also, as a reference, the whole context with RoPE beyond its trained range); and the
  needle-in-a-haystack suite of :mod:`experiments.lm.niah` (S-NIAH-1/2/3, MK, MQ, MV).
* ``report``: ``results.json`` and the plots from every finished cell (``--report`` of the others).
* ``probe``: what a cell costs here before any runs (issue 43): every model's training step at
  (size, corpus) compiled and timed on this process's cores (run it under ``taskset`` on one
  core, as the cells run), and the largest equal-token budget whose slowest model trains within
  ``--cell-minutes``; JSON ``probe-<size>-<corpus>.json``.

``--max-minutes`` bounds one invocation: no new cell starts after it, and a cell still training
at the deadline is stopped by SIGTERM (the training system saves a checkpoint and the next
invocation resumes it), so a grid of multi-hour cells runs as a series of runs under an hour.
``--smoke``: the tests' seconds-long run (one tiny layer, a few steps, short contexts).

Run: ``python -m experiments.lm.run train --size small --corpus shakespeare --max-minutes 55``
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import signal
import threading
import time
import types
from pathlib import Path

import jax
import numpy as np

from experiments.common import machine, mean_std, pyplot, save_figure, write_results
from experiments.lm.configs import (
    ALL,
    BUDGETS,
    CORPORA,
    LABELS,
    MODELS,
    SIZES,
    by_grid,
    grid_key,
    model_spec,
)

OUT = "experiments/lm/results"
FULL = {"seq_len": 256, "batch": 8, "eval_batches": 16, "curve_points": 20, "lr": 3e-3}
SMOKE = {"seq_len": 32, "batch": 2, "eval_batches": 1, "curve_points": 2, "lr": 3e-3}
DEFAULT_BYTES = 5_000_000


def setup_for(smoke: bool) -> dict:
    return dict(SMOKE if smoke else FULL)


def cell_dir(out: Path, size: str, corpus: str, nbytes: int, model: str, seed: int) -> Path:
    return out / "train" / grid_key(size, corpus, nbytes) / model / f"seed{seed}"


@functools.cache
def _bytes_per_token(corpus: str) -> float:
    """Bytes per token of the corpus's training tokenization (1 for bytes)."""
    spec = CORPORA[corpus]
    if spec["tokenizer"] == "byte":
        return 1.0
    from nested_jax.train import data as data_lib

    splits = data_lib.prepare(
        spec["corpus"], tokenizer="bpe", bpe_vocab=spec["bpe_vocab"], cache_dir=".cache/nested_jax"
    )
    return splits.bytes_per_token


def train_config(model: str, size: str, corpus: str, nbytes: int, seed: int, setup: dict):
    from nested_jax.train.config import DataConfig, OptimConfig, TrainConfig

    name, overrides, _ = model_spec(model, size, corpus, max_len=setup["seq_len"])
    tokens_per_step = setup["batch"] * setup["seq_len"]
    steps = max(1, math.ceil(nbytes / (tokens_per_step * _bytes_per_token(corpus))))
    every = max(1, steps // setup["curve_points"])
    spec = CORPORA[corpus]
    return TrainConfig(
        model=name,
        model_overrides=overrides,
        data=DataConfig(
            corpus=spec["corpus"],
            tokenizer=spec["tokenizer"],
            bpe_vocab=spec.get("bpe_vocab", 4096),
            seq_len=setup["seq_len"],
            batch_size=setup["batch"],
            eval_batches=setup["eval_batches"],
        ),
        optim=OptimConfig(lr=setup["lr"], warmup_steps=min(100, max(1, steps // 20))),
        steps=steps,
        seed=seed,
        log_every=every,
        eval_every=every,
        ckpt_every=every,
        keep=2,
        nan_policy="stop",
        plot=False,
    )


class _Deadline:
    """SIGTERM to this process at ``when`` (``time.monotonic()``): inside the training loop the
    training system saves a checkpoint and stops (the cell resumes next time); outside it (loading
    data, evaluating) a KeyboardInterrupt ends the cell's attempt with nothing to lose. A SIGTERM
    from elsewhere (a scheduler, an ending session) is handled the same way."""

    def __init__(self, when: float | None):
        self.when, self.timer, self.old = when, None, None

    def __enter__(self):
        def stop(signum, frame):
            raise KeyboardInterrupt

        self.old = signal.signal(signal.SIGTERM, stop)
        if self.when is not None:
            wait = max(0.0, self.when - time.monotonic())
            self.timer = threading.Timer(wait, os.kill, (os.getpid(), signal.SIGTERM))
            self.timer.daemon = True
            self.timer.start()
        return self

    def __exit__(self, *exc):
        if self.timer is not None:
            self.timer.cancel()
        signal.signal(signal.SIGTERM, self.old)
        return False


def curve(run_dir: Path, tokens_per_step: int, bytes_per_token: float) -> dict:
    """The learning curve from ``metrics.jsonl``: validation bits per byte against training
    tokens, bytes and training seconds (the logged intervals' durations; the first interval,
    which includes compiling, and evaluation time are left out: the first interval is counted at
    the run's median speed)."""
    from nested_jax.train.loop import read_metrics

    recs = read_metrics(run_dir)
    logs = [r for r in recs if "tokens_per_s" in r]
    rates = [r["tokens_per_s"] for r in logs]
    med = float(np.median(rates[1:] if len(rates) > 1 else rates)) if rates else float("nan")
    seconds, prev, elapsed = {}, 0, 0.0
    for i, r in enumerate(logs):
        rate = med if i == 0 else r["tokens_per_s"]
        elapsed += (r["step"] - prev) * tokens_per_step / rate
        seconds[r["step"]] = elapsed
        prev = r["step"]
    evals = {r["step"]: r["val_bpb"] for r in recs if "val_bpb" in r}
    steps = sorted(s for s in evals if s in seconds)
    return {
        "step": steps,
        "tokens": [s * tokens_per_step for s in steps],
        "bytes": [s * tokens_per_step * bytes_per_token for s in steps],
        "train_seconds": [seconds[s] for s in steps],
        "val_bpb": [evals[s] for s in steps],
        "train_loss": [(r["step"], r["loss"]) for r in logs],
        "median_tokens_per_s": med,
        "first_step_s": next((r["first_step_s"] for r in recs if "first_step_s" in r), None),
    }


def _add_wall(cdir: Path, seconds: float) -> dict:
    """Add one attempt's wall-clock seconds to the cell's ``wall.json``; the totals."""
    path = cdir / "wall.json"
    w = json.loads(path.read_text()) if path.exists() else {"seconds": 0.0, "attempts": 0}
    w = {"seconds": w["seconds"] + seconds, "attempts": w["attempts"] + 1}
    if cdir.exists():  # a config error raised before the run made its folder
        path.write_text(json.dumps(w) + "\n")
    return w


def run_cell(model, size, corpus, nbytes, seed, out: Path, setup: dict, deadline=None) -> dict:
    """Train (or resume) one cell and write its ``cell.json``; ``None`` when stopped at the
    deadline (resumable).

    A cell whose loss turns non-finite (``nan_policy="stop"``) is a result, not a crash: its
    ``cell.json`` records ``diverged_at_step``, ``val_bpb = None`` and the curve up to there, and
    the grid goes on with the next cell."""
    from nested_jax.train.loop import NonFiniteLossError, train

    cdir = cell_dir(out, size, corpus, nbytes, model, seed)
    done = cdir / "cell.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg = train_config(model, size, corpus, nbytes, seed, setup)
    diverged = None
    t0 = time.monotonic()
    try:
        with _Deadline(deadline):
            res = train(cfg, cdir / "run", progress=False)
    except KeyboardInterrupt:
        return None
    except NonFiniteLossError as e:
        diverged, res = e, None
    finally:
        wall = _add_wall(cdir, time.monotonic() - t0)
    bpt = _bytes_per_token(corpus)
    tps = cfg.data.batch_size * cfg.data.seq_len
    c = curve(cdir / "run", tps, bpt)
    if diverged is not None:  # trained up to the step before the non-finite one
        steps = (diverged.step or 1) - 1
        res = types.SimpleNamespace(step=steps, val_bpb=None, train_loss=None, skipped=0)
    rec = {
        "model": model,
        "size": size,
        "corpus": corpus,
        "budget_bytes": nbytes,
        "seed": seed,
        "registry": cfg.model,
        "overrides": [list(kv) for kv in cfg.model_overrides],
        "params": model_spec(model, size, corpus, setup["seq_len"])[2],
        "steps": res.step,
        "tokens": res.step * tps,
        "bytes": res.step * tps * bpt,
        "bytes_per_token": bpt,
        "val_bpb": res.val_bpb,
        "train_loss_last": res.train_loss,
        "skipped_steps": res.skipped,
        "diverged_at_step": None if diverged is None else diverged.step,
        "diverged": None if diverged is None else str(diverged),
        "curve": c,
        "wall_s": wall["seconds"],  # every attempt's, compiles, evaluations and checkpoints in
        "attempts": wall["attempts"],
    }
    done.write_text(json.dumps(rec) + "\n")
    return rec


def train_grid(
    size, corpus, nbytes, models, seeds, out: Path, setup: dict, max_minutes=None
) -> None:
    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    for seed in seeds:  # seed-major: a grid cut short still has every model at seed 0
        for model in models:
            if deadline is not None and time.monotonic() > deadline - 60:
                print(f"--max-minutes {max_minutes} reached; run again to go on", flush=True)
                return
            rec = run_cell(model, size, corpus, nbytes, seed, out, setup, deadline)
            if rec is None:
                print(f"{model} seed {seed}: stopped at the deadline (checkpoint saved)")
                return
            # its weights are not committed: evaluate the long context while they are here
            from experiments.lm.context import context_cell

            cdir = cell_dir(out, size, corpus, nbytes, model, seed)
            context_cell(out, cdir, setup, smoke=size == "smoke")
            result = (
                f"val {rec['val_bpb']:.3f} bits/byte"
                if rec.get("diverged_at_step") is None
                else f"diverged at step {rec['diverged_at_step']}"
            )
            print(
                f"{size} {corpus} {model:>15} seed {seed}: {result}, "
                f"{rec['curve']['median_tokens_per_s']:.0f} tokens/s",
                flush=True,
            )


# --------------------------------------------------------------------------------------- report
def _cells(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("train/*/*/seed*/cell.json"))]


def report(out: Path) -> dict:
    cells = _cells(out)
    table = by_grid(cells)
    summary = {}
    for key, by_model in table.items():
        summary[key] = {}
        for m, cs in by_model.items():
            ok = [c for c in cs if c.get("diverged_at_step") is None]
            summary[key][m] = {
                "seeds": [c["seed"] for c in ok],
                "params": cs[0]["params"],
                "bytes": ok[0]["bytes"] if ok else None,
                "val_bpb": mean_std([c["val_bpb"] for c in ok]),
                "tokens_per_s": mean_std([c["curve"]["median_tokens_per_s"] for c in cs]),
                "train_hours": mean_std([c["curve"]["train_seconds"][-1] / 3600 for c in ok]),
                # minus Transformer++'s at the same seed (the same data order): the paired
                # difference, which the seed-to-seed spread of both does not blur
                "vs_transformer": mean_std(_paired(ok, by_model.get("transformer", []))),
                "skipped_steps": sum(c["skipped_steps"] for c in cs),
                # seed -> the step whose loss was non-finite (the cell stopped there)
                "diverged": {
                    str(c["seed"]): c["diverged_at_step"]
                    for c in cs
                    if c.get("diverged_at_step") is not None
                },
            }
    context = [json.loads(p.read_text()) for p in sorted(out.glob("context/*/*/seed*.json"))]
    payload = {
        "experiment": "lm (issue 15)",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{jax.device_count()} x {jax.devices()[0].platform}, jax {jax.__version__}",
        "summary": summary,
        "equal_time": {key: at_equal_time(by_model) for key, by_model in table.items()},
        "context_summary": _context_summary(context),
        "cells": cells,
        "context": context,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_results(out, payload)
    for key, by_model in table.items():
        _plot_curves(out / f"curves-{key}.png", key, by_model)
    if context:
        from experiments.lm.context import plot_context

        plot_context(out, context)
    return payload


def _paired(cells: list[dict], base: list[dict]) -> list[float]:
    """``val_bpb`` minus the base model's at the same seed, for the seeds both finished."""
    ref = {c["seed"]: c["val_bpb"] for c in base if c.get("diverged_at_step") is None}
    return [c["val_bpb"] - ref[c["seed"]] for c in cells if c["seed"] in ref]


def at_equal_time(by_model: dict) -> dict | None:
    """Who is ahead at equal compute: ``seconds``, the training time by which the model that
    finishes its budget first has finished it in every seed (its slowest seed's), and each
    model's validation bits per byte at its last evaluation within that time (mean ± std over
    seeds; a seed not evaluated by then is left out). Training time as the curves count it:
    steps only, on one core."""
    ok = {
        m: [c for c in cs if c.get("diverged_at_step") is None and c["curve"]["val_bpb"]]
        for m, cs in by_model.items()
    }
    ok = {m: cs for m, cs in ok.items() if cs}
    if not ok:
        return None
    ends = {m: float(max(c["curve"]["train_seconds"][-1] for c in cs)) for m, cs in ok.items()}
    first = min(ends, key=ends.get)
    t = ends[first]

    def reached(c):
        cv = c["curve"]
        got = [v for s, v in zip(cv["train_seconds"], cv["val_bpb"], strict=True) if s <= t]
        return got[-1] if got else None

    return {
        "seconds": t,
        "first_to_finish": first,
        "val_bpb": {m: mean_std([reached(c) for c in cs]) for m, cs in ok.items()},
    }


def _context_summary(records: list[dict]) -> dict:
    if not records:
        return {}
    from experiments.lm.context import summarize

    return summarize(records)


def _plot_curves(path: Path, key: str, by_model: dict) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, m in enumerate(ALL):
        cs = [c for c in by_model.get(m, []) if c.get("diverged_at_step") is None]
        color, style = f"C{i % 10}", "-o" if m in MODELS else "--s"
        if cs:
            n = min(len(c["curve"]["val_bpb"]) for c in cs)
            y = np.mean([c["curve"]["val_bpb"][:n] for c in cs], axis=0)
            mb = np.asarray(cs[0]["curve"]["bytes"][:n]) / 1e6
            hours = np.mean([c["curve"]["train_seconds"][:n] for c in cs], axis=0) / 3600
            lab = f"{LABELS[m]} ({len(cs)} seed{'s' if len(cs) > 1 else ''})"
            axes[0].plot(mb, y, style, ms=3, color=color, label=lab)
            axes[1].plot(hours, y, style, ms=3, color=color, label=lab)
        for c in by_model.get(m, []):  # a diverged cell: its curve up to the divergence
            if c.get("diverged_at_step") is None or not c["curve"]["val_bpb"]:
                continue
            lab = f"{LABELS[m]} seed {c['seed']}: diverged at step {c['diverged_at_step']}"
            y = c["curve"]["val_bpb"]
            axes[0].plot(np.asarray(c["curve"]["bytes"]) / 1e6, y, ":x", color=color, label=lab)
            axes[1].plot(
                np.asarray(c["curve"]["train_seconds"]) / 3600, y, ":x", color=color, label=lab
            )
    axes[0].set_xlabel("training text (million bytes)")
    axes[1].set_xlabel("training time (hours, 2 CPU cores; compile and evaluation excluded)")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel("validation bits per byte (mean over seeds)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(key)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------- probe
# A cell's time beyond its training steps: 20 evaluations of 16 batches (a forward each, about a
# third of a training step's work) and 20 checkpoints, taken as a share of the training time.
EVAL_SHARE = 0.15


def probe(size: str, corpus: str, models, out: Path, setup: dict, cell_minutes: float, steps: int):
    """Time every model's training step (the training system's own, AdamW) at ``size`` on
    ``corpus``'s vocabulary: compile seconds and the median of ``steps`` steps after one warm-up
    (random tokens: the cost does not depend on the text). The budget is the largest multiple of
    100 kB of training text that the slowest model trains in ``cell_minutes`` with `EVAL_SHARE`
    on top; written beside the rates."""
    from nested_jax.models import LanguageModel, get_config
    from nested_jax.train.optimizers import make_optimizer
    from nested_jax.train.step import init_train_state, train_step

    vocab = 256 if CORPORA[corpus]["tokenizer"] == "byte" else CORPORA[corpus]["bpe_vocab"]
    bpt = 1.0 if vocab == 256 else _bytes_per_token(corpus)
    tokens = setup["batch"] * setup["seq_len"]
    batch = jax.random.randint(jax.random.key(1), (setup["batch"], setup["seq_len"]), 0, vocab)
    rows = []
    for m in models:
        name, overrides, n = model_spec(m, size, corpus, max_len=setup["seq_len"])
        model = LanguageModel(get_config(name, **dict(overrides)))
        cfg = train_config(m, size, corpus, 1, 0, setup)
        opt = make_optimizer(cfg.optim, 1000)
        state = init_train_state(model, opt, jax.random.key(0))
        step = jax.jit(functools.partial(train_step, model, opt))
        t0 = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        state, _ = compiled(state, batch)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - t0)
        step_s = float(np.median(times))
        rows.append(
            {
                "model": m,
                "params": n,
                "compile_s": compile_s,
                "step_s": step_s,
                "tokens_per_s": tokens / step_s,
            }
        )
        print(
            f"{m:>15} {n:>9,} params  compile {compile_s:5.1f} s  step {step_s * 1e3:7.1f} ms  "
            f"{tokens / step_s:7.0f} tokens/s",
            flush=True,
        )
    slowest = min(r["tokens_per_s"] for r in rows)
    seconds = 60 * cell_minutes / (1 + EVAL_SHARE)
    budget = int(slowest * seconds * bpt // 100_000) * 100_000
    for r in rows:
        r["cell_minutes_at_budget"] = budget / bpt / r["tokens_per_s"] * (1 + EVAL_SHARE) / 60
        r["tokens_per_param_at_budget"] = budget / bpt / r["params"]
    payload = {
        "machine": machine(),
        "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "size": size,
        "corpus": corpus,
        "setup": setup,
        "cell_minutes": cell_minutes,
        "eval_share": EVAL_SHARE,
        "budget_bytes": budget,
        "results": rows,
    }
    path = out / f"probe-{size}-{corpus}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"budget {budget:,} bytes (the slowest model in {cell_minutes} min); wrote {path}")
    if not budget:
        print("no 100 kB of training text fits: raise --cell-minutes or choose a smaller size")
    return payload


# ------------------------------------------------------------------------------------------ CLI
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("part", choices=("train", "context", "report", "probe"))
    p.add_argument("--size", default="small", choices=sorted(SIZES))
    p.add_argument("--corpus", default="shakespeare", choices=sorted(CORPORA))
    p.add_argument(
        "--bytes",
        type=int,
        default=None,
        help="training text per model (default: the grid's budget, configs.BUDGETS; else 5M)",
    )
    p.add_argument(
        "--models", nargs="*", choices=ALL, default=list(MODELS), help="models or ablations"
    )
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--out", default=OUT)
    p.add_argument("--smoke", action="store_true", help="seconds-long run (tests use it)")
    p.add_argument("--cell-minutes", type=float, default=50.0, help="probe: a cell's time limit")
    p.add_argument("--probe-steps", type=int, default=5, help="probe: timed steps per model")
    a = p.parse_args(argv)
    out, setup = Path(a.out), setup_for(a.smoke)
    size = "smoke" if a.smoke else a.size
    if a.bytes is None:
        a.bytes = BUDGETS.get((size, a.corpus), DEFAULT_BYTES)
    if a.part == "probe":
        probe(size, a.corpus, a.models, out, setup, a.cell_minutes, a.probe_steps)
        return
    if a.part == "train":
        train_grid(size, a.corpus, a.bytes, a.models, a.seeds, out, setup, a.max_minutes)
    elif a.part == "context":
        from experiments.lm.context import context_grid

        context_grid(size, a.corpus, a.bytes, a.models, a.seeds, out, setup, a.max_minutes, a.smoke)
    report(out)
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
