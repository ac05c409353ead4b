"""Shared plumbing of the experiments: the command line, JSON output and figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def parse_args(doc: str, default_out: str, argv=None, more=None) -> argparse.Namespace:
    """``--smoke`` (a seconds-long run, used by the tests) and ``--out DIR``; ``more(parser)``
    adds an experiment's own options."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="seconds-long run (tests use it)")
    p.add_argument("--out", default=default_out, help="folder for results.json and the plot")
    if more is not None:
        more(p)
    return p.parse_args(argv)


def write_results(out: Path, payload: dict) -> None:
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")


def mean_std(xs) -> dict | None:
    """``{"mean", "std" (sample, over seeds), "n"}`` of the values that are not ``None``."""
    import numpy as np

    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {
        "mean": float(np.mean(xs)),
        "std": float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0,
        "n": len(xs),
    }


def pyplot():
    """matplotlib's pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def matched_d_ff(name: str, target: str, overrides=(), multiple: int = 8) -> tuple:
    """``overrides`` plus the ``d_ff`` (a multiple of ``multiple``) that brings registry model
    ``name``'s parameter count nearest registry model ``target``'s (both with ``overrides``):
    the experiments compare models of equal size."""
    from nested_jax.models import count_params, get_config
    from nested_jax.models import matched_d_ff as best

    overrides = tuple(tuple(x) for x in overrides)
    want = count_params(get_config(target, **dict(overrides)))
    return overrides + (
        ("d_ff", best(get_config(name, **dict(overrides)), want, multiple=multiple)),
    )


def cell_train_config(
    model: str,
    overrides: tuple,
    *,
    seq_len: int,
    batch: int,
    eval_batches: int,
    steps: int,
    seed: int,
    log_every: int | None = None,
    max_minutes: float = 0.0,
):
    """The training config of one resumable experiment cell on Shakespeare bytes: checkpoints
    every ``min(25, steps)`` steps (two kept), no evaluation until the end, a non-finite step
    stops the cell (``nan_policy="stop"``), no plot. ``log_every`` defaults to the checkpoint
    interval; ``max_minutes`` is a training-time budget (0: none)."""
    from nested_jax.train.config import DataConfig, TrainConfig

    every = max(1, min(25, steps))
    return TrainConfig(
        model=model,
        model_overrides=overrides,
        data=DataConfig(seq_len=seq_len, batch_size=batch, eval_batches=eval_batches),
        steps=steps,
        seed=seed,
        log_every=every if log_every is None else log_every,
        eval_every=0,
        ckpt_every=every,
        keep=2,
        nan_policy="stop",
        plot=False,
        max_minutes=max_minutes,
    )


def adamw_step(loss, params, steps: int, lr: float):
    """The synthetic-task experiments' optimizer: AdamW (weight decay 0.1, cosine schedule with a
    5% warm-up, global-norm clip 1.0). ``loss(params, *batch) -> scalar``. Returns
    ``(opt_state, step)`` with ``step(params, opt_state, *batch) -> (params, opt_state, loss)``
    jitted."""
    import jax
    import optax

    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.1))

    @jax.jit
    def step(params, opt_state, *batch):
        value, grads = jax.value_and_grad(loss)(params, *batch)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32
            updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return opt.init(params), step


def train_loop(step, params, opt_state, batches, log_every: int = 10):
    """Run ``step(params, opt_state, *batch) -> (params, opt_state, loss)`` over ``batches`` (a
    sized iterable of tuples): ``(params, losses, compile_s, train_s)`` with the loss every
    ``log_every`` steps and at the last (``None`` elsewhere), the first step's seconds (it
    compiles) and the seconds of the others."""
    import time

    n = len(batches)
    losses, t0 = [], time.perf_counter()
    compile_s, t1 = None, None
    for i, batch in enumerate(batches):
        params, opt_state, value = step(params, opt_state, *batch)
        if i == 0:
            value.block_until_ready()
            compile_s = time.perf_counter() - t0
            t1 = time.perf_counter()
        losses.append(float(value) if i % log_every == 0 or i == n - 1 else None)
    return params, losses, compile_s, time.perf_counter() - t1


class Batches:
    """``n`` batches from ``make()`` called once per step (a sized iterable for
    :func:`train_loop`)."""

    def __init__(self, make, n: int):
        self.make, self.n = make, n

    def __len__(self):
        return self.n

    def __iter__(self):
        return (self.make() for _ in range(self.n))


def selected_models(models, every, left_out, report: bool) -> list[str]:
    """The ``--models`` given, else every model of ``every`` but those ``left_out`` when training
    (diagnostic variants, or runs kept from before a fix: trained only when named), every model
    when only reporting."""
    return list(models) if models else [m for m in every if report or m not in left_out]


def run_grid(runs_dir: Path, names: list[str], train, *, report: bool = False, show=None):
    """The resumable grid of the synthetic-task experiments: for each ``name`` (a file stem such
    as ``"deltanet-seed0"``) the run's record is read from ``runs_dir/<name>.json`` when it has
    finished before, else (unless ``report``) ``train(name)`` is run and saved at once, so a
    stopped grid resumes where it was. ``show(record)`` prints a line per new run. Returns the
    records that exist, in ``names`` order."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        path = runs_dir / f"{name}.json"
        if path.exists():
            out.append(json.loads(path.read_text()))
            continue
        if report:
            continue
        record = train(name)
        path.write_text(json.dumps(record) + "\n")
        out.append(record)
        if show is not None:
            print(show(record), flush=True)
    return out


def machine() -> str:
    """The machine line of every results file: architecture, CPU cores, platform, jax."""
    import os
    import platform

    import jax

    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {jax.devices()[0].platform}, "
        f"jax {jax.__version__}"
    )


def write_grid(out: Path, experiment: str, setup: dict, shape: dict, runs: list, summarize, plot):
    """The tail of every grid experiment: ``summarize(runs)``, the payload (experiment, machine,
    setup, shape, summary, runs) written to ``out/results.json``, then ``plot(summary)``."""
    summary = summarize(runs)
    payload = {
        "experiment": experiment,
        "machine": machine(),
        "setup": setup,
        "shape": shape,
        "summary": summary,
        "runs": runs,
    }
    write_results(out, payload)
    plot(summary)
    return payload
