"""Optimizers on a Fashion-MNIST MLP: M3, AdamW, Muon, DMGD, delta momentum (issue 16 item 6;
paper Figs. 11-12 analogue).

A 784-256-256-10 ReLU MLP trained on Fashion-MNIST (Debian ``dataset-fashion-mnist``; split
scikit-learn digits, 64-128-128-10, when it is not installed, and in the smoke run) for a fixed
number of steps of batch 128, each optimizer at the best learning rate of a small grid (picked by
the final training loss averaged over seeds). Reported per optimizer: final training loss, test
accuracy, and the training loss against steps and against wall-clock (the jitted step's time
measured in the same run, after compiling). 3 seeds (initialisation and batch order).

Optimizers: ``optax.adamw``; ``optax.contrib.muon``; ``nested_jax.optim.m3`` (M3 on the weight
matrices, AdamW on biases; slow period 50); ``nested_jax.optim.dmgd`` with the low-rank memory
(``hidden=8``); ``nested_jax.optim.delta_momentum`` (decay 0.9, beta 0.5). Learning-rate grids
are per optimizer (their scales differ by orders of magnitude).

The character-level half (``--task lm``): a Transformer++ (2 layers, width 64, 0.1M parameters)
on Shakespeare bytes, 600 steps of 16 x 128 bytes, gradient clip 1.0, constant rate; validation
bits per byte on 32 held-out windows. The optimizers are the same, with the training system's
language-model setups for the matrix ones (``nested_jax.train.step.OPTIMIZERS``: M3 and Muon on
one matrix per layer of the stacked layer weights, AdamW on embeddings, head and norms, at the
same rate). Results in ``<out>/char_lm/``.

Each (optimizer, rate, seed) run is saved in ``<out>/runs/`` (``<out>/char_lm/runs/``) when it
finishes, so a stopped grid resumes where it was.

Run: ``python -m experiments.optimizers.run [--smoke] [--task mlp|lm] [--out ...]``
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.class_incremental.run import available, init_mlp, load, logits, nll
from experiments.common import machine, mean_std, parse_args, pyplot, save_figure, write_results
from nested_jax import optim

OPTIMIZERS = {
    "adamw": (lambda lr: optax.adamw(lr, weight_decay=0.0), (3e-4, 1e-3, 3e-3)),
    "muon": (lambda lr: optax.contrib.muon(lr), (3e-3, 1e-2, 3e-2)),
    "m3": (
        lambda lr: optim.m3(lr, slow_period=50, adam_learning_rate=1e-3),
        (3e-4, 1e-3, 3e-3, 1e-2),
    ),
    "dmgd": (lambda lr: optim.dmgd(lr, hidden=8), (3e-3, 1e-2, 3e-2)),
    "delta_momentum": (lambda lr: optim.delta_momentum(lr, 0.9, beta=0.5), (3e-3, 1e-2, 3e-2)),
}
FULL = {"seeds": 3, "steps": 1500, "batch": 128, "hidden": 256, "log_every": 50}
SMOKE = {"seeds": 1, "steps": 20, "batch": 32, "hidden": 32, "log_every": 10}


def _lm_setup(name):
    """The training system's language-model setup of a matrix optimizer (weight decay 0)."""

    def make(lr):
        from nested_jax.train.config import OptimConfig
        from nested_jax.train.optimizers import OPTIMIZERS as SETUPS

        return SETUPS[name](OptimConfig(name=name, weight_decay=0.0), lr)

    return make


LM_OPTIMIZERS = {
    "adamw": (OPTIMIZERS["adamw"][0], (1e-3, 3e-3, 1e-2)),
    "muon": (_lm_setup("muon"), (3e-3, 1e-2, 3e-2)),
    "m3": (_lm_setup("m3"), (1e-4, 3e-4, 1e-3, 3e-3)),
    "dmgd": (OPTIMIZERS["dmgd"][0], (3e-3, 1e-2, 3e-2, 1e-1, 3e-1)),
    "delta_momentum": (OPTIMIZERS["delta_momentum"][0], (1e-2, 3e-2, 1e-1, 3e-1, 1.0)),
}
LM_MODEL = {"vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 172}
LM_FULL = {"seeds": 3, "steps": 600, "batch": 16, "seq_len": 128, "log_every": 25, "val": 32}
LM_SMOKE = {"seeds": 1, "steps": 6, "batch": 2, "seq_len": 32, "log_every": 3, "val": 2}


def train(make, lr, data, cfg, seed):
    """``(losses [steps / log_every], test accuracy, median step seconds, compile seconds)``."""
    x_tr, y_tr, x_te, y_te = data
    params = init_mlp(jax.random.key(seed), x_tr.shape[1], cfg["hidden"])
    rng = np.random.default_rng(seed)
    idx = rng.integers(len(y_tr), size=(cfg["steps"], cfg["batch"]))
    params, losses, times = _fit(
        make(lr),
        params,
        lambda p, x, y: jnp.mean(nll(p, x, y)),
        ((x_tr[i], y_tr[i]) for i in idx),
        cfg,
    )
    acc = float(jnp.mean(jnp.argmax(logits(params, x_te), -1) == y_te))
    return losses, acc, float(np.median(times[1:])), times[0]


def train_lm(make, lr, data, cfg, seed):
    """``(losses [steps / log_every], validation bits per byte, median step seconds, compile
    seconds)``: the
    character-level half, on byte streams ``data = (train, val)``."""
    from nested_jax.models import LanguageModel, get_config
    from nested_jax.train.data import eval_windows

    train_stream, val_stream = data
    model = LanguageModel(get_config("tiny", max_len=cfg["seq_len"], **LM_MODEL))
    params = model.init(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    starts = rng.integers(len(train_stream) - cfg["seq_len"], size=(cfg["steps"], cfg["batch"]))
    batches = ((np.stack([train_stream[a : a + cfg["seq_len"]] for a in row]),) for row in starts)
    tx = optax.chain(optax.clip_by_global_norm(1.0), make(lr))
    params, losses, times = _fit(tx, params, model.loss, batches, cfg)
    val = eval_windows(val_stream, seq_len=cfg["seq_len"], max_windows=cfg["val"])
    val_loss = float(jax.jit(model.loss)(params, jnp.asarray(val)))
    return losses, val_loss / np.log(2), float(np.median(times[1:])), times[0]


def _fit(tx, params, loss_fn, batches, cfg):
    """Jitted steps of ``tx`` on ``loss_fn(params, *batch)``: ``(params, losses [steps /
    log_every] (window means), every step's seconds (the first one compiles))``."""
    with jax.numpy_dtype_promotion("standard"):
        state = tx.init(params)

    @jax.jit
    def step(params, state, *batch):
        loss, g = jax.value_and_grad(loss_fn)(params, *batch)
        with jax.numpy_dtype_promotion("standard"):
            u, state = tx.update(g, state, params)
            params = optax.apply_updates(params, u)
        return params, state, loss

    losses, times, window = [], [], []
    for t, batch in enumerate(batches):
        t0 = time.perf_counter()
        params, state, loss = step(params, state, *batch)
        loss = float(loss)
        times.append(time.perf_counter() - t0)  # the first one compiles
        window.append(loss)
        if (t + 1) % cfg["log_every"] == 0:
            losses.append(float(np.mean(window)))
            window = []
    return params, np.asarray(losses), times


def run(
    smoke: bool = False, out: Path | str = "experiments/optimizers/results", task="mlp"
) -> dict:
    """The MLP half (``task="mlp"``) or the character-level LM half (``"lm"``, written to
    ``<out>/char_lm``)."""
    if task not in ("mlp", "lm"):
        raise ValueError(f"task must be 'mlp' or 'lm', got {task!r}.")
    out = Path(out) / ("char_lm" if task == "lm" else "")
    out.mkdir(parents=True, exist_ok=True)
    if task == "lm":
        from nested_jax.train.data import prepare

        cfg, table, fit, metric = LM_SMOKE if smoke else LM_FULL, LM_OPTIMIZERS, train_lm, "val_bpb"
        splits = prepare("shakespeare")
        name, data = "shakespeare bytes", (splits.train, splits.val)
    else:
        cfg, table, fit, metric = SMOKE if smoke else FULL, OPTIMIZERS, train, "test_accuracy"
        name = "digits" if smoke or not available("fashion_mnist") else "fashion_mnist"
        data = load(name)
    t0 = time.perf_counter()
    results = {}
    for opt, (make, lrs) in table.items():
        lrs = lrs[1:2] if smoke else lrs
        grid = {}
        for lr in lrs:
            runs = [
                _cached(out, opt, lr, s, lambda m=make, r=lr, s=s: fit(m, r, data, cfg, s))
                for s in range(cfg["seeds"])
            ]
            final = [r[0][-1] for r in runs]
            score = float(np.mean(final)) if np.all(np.isfinite(final)) else np.inf
            grid[lr] = (score, runs)
        lr, (score, runs) = min(grid.items(), key=lambda kv: kv[1][0])
        results[opt] = {
            "lr": lr,
            "final_train_loss": mean_std([float(r[0][-1]) for r in runs]),
            metric: mean_std([r[1] for r in runs]),
            "step_ms": mean_std([1000 * r[2] for r in runs]),
            "compile_s": mean_std([r[3] for r in runs]),
            "loss_curve_mean": np.mean([r[0] for r in runs], axis=0).tolist(),
            "grid_final_train_loss": {str(k): v[0] for k, v in grid.items()},
        }
        r = results[opt]
        print(
            f"{opt:>15} lr {lr:g}: final train loss {r['final_train_loss']['mean']:.4f} ± "
            f"{r['final_train_loss']['std']:.4f}, {metric} {r[metric]['mean']:.4f}, "
            f"step {r['step_ms']['mean']:.2f} ms",
            flush=True,
        )
    payload = {
        "experiment": "optimizers (issue 16 item 6)"
        + (", character-level LM" if task == "lm" else ""),
        "dataset": name,
        "machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].platform}, "
        f"jax {jax.__version__}",
        "config": {**cfg, **({"model": LM_MODEL} if task == "lm" else {})},
        "seconds": time.perf_counter() - t0,
        "results": results,
    }
    write_results(out, payload)
    _plot(out, cfg, name, results)
    return payload


def _cached(out: Path, opt: str, lr: float, seed: int, fit):
    """One (optimizer, rate, seed) run, read back from ``out/runs/`` when it finished before
    (so a stopped grid resumes), else ``fit()`` and saved with the machine:
    ``(losses, metric, step seconds, compile seconds)``."""
    path = out / "runs" / f"{opt}-lr{lr:g}-seed{seed}.json"
    if path.exists():
        r = json.loads(path.read_text())
        return np.asarray(r["losses"]), r["metric"], r["step_s"], r.get("compile_s")
    losses, metric, step_s, compile_s = fit()
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = {
        "losses": [float(x) for x in losses],
        "metric": metric,
        "step_s": step_s,
        "compile_s": compile_s,
        "machine": machine(),
    }
    path.write_text(json.dumps(rec) + "\n")
    return losses, metric, step_s, compile_s


def _plot(out, cfg, name, results):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (opt, r) in enumerate(results.items()):
        y = np.asarray(r["loss_curve_mean"])
        steps = (np.arange(len(y)) + 1) * cfg["log_every"]
        lab = f"{opt} (lr {r['lr']:g})"
        axes[0].plot(steps, y, color=f"C{i}", label=lab)
        axes[1].plot(steps * r["step_ms"]["mean"] / 1000, y, color=f"C{i}", label=lab)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("seconds (median step time x steps; compile excluded)")
    for ax in axes:
        ax.set_ylabel("training loss (mean over seeds)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    what = "Transformer++ LM" if "seq_len" in cfg else "MLP"
    fig.suptitle(f"{name} {what}, batch {cfg['batch']}")
    save_figure(fig, out / "optimizers.png")


def main(argv=None) -> None:
    def more(p):
        p.add_argument(
            "--task", choices=("mlp", "lm"), default="mlp", help="Fashion-MNIST MLP or char LM"
        )

    a = parse_args(__doc__, "experiments/optimizers/results", argv, more)
    payload = run(a.smoke, a.out, a.task)
    print(f"{payload['seconds']:.0f} s on {payload['dataset']}")


if __name__ == "__main__":
    main()
