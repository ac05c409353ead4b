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

Run: ``python -m experiments.optimizers.run [--smoke] [--out experiments/optimizers/results]``
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.class_incremental.run import available, init_mlp, load, logits, nll
from experiments.common import mean_std, parse_args, pyplot, save_figure, write_results
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


def train(make, lr, data, cfg, seed):
    """``(losses [steps / log_every], test accuracy, median step seconds)``."""
    x_tr, y_tr, x_te, y_te = data
    params = init_mlp(jax.random.key(seed), x_tr.shape[1], cfg["hidden"])
    tx = make(lr)
    with jax.numpy_dtype_promotion("standard"):
        state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
        loss, g = jax.value_and_grad(lambda p: jnp.mean(nll(p, x, y)))(params)
        with jax.numpy_dtype_promotion("standard"):
            u, state = tx.update(g, state, params)
            params = optax.apply_updates(params, u)
        return params, state, loss

    rng = np.random.default_rng(seed)
    idx = rng.integers(len(y_tr), size=(cfg["steps"], cfg["batch"]))
    losses, times, window = [], [], []
    for t in range(cfg["steps"]):
        t0 = time.perf_counter()
        params, state, loss = step(params, state, x_tr[idx[t]], y_tr[idx[t]])
        loss = float(loss)
        if t > 0:  # the first step compiles
            times.append(time.perf_counter() - t0)
        window.append(loss)
        if (t + 1) % cfg["log_every"] == 0:
            losses.append(float(np.mean(window)))
            window = []
    acc = float(jnp.mean(jnp.argmax(logits(params, x_te), -1) == y_te))
    return np.asarray(losses), acc, float(np.median(times))


def run(smoke: bool = False, out: Path | str = "experiments/optimizers/results") -> dict:
    cfg = SMOKE if smoke else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = "digits" if smoke or not available("fashion_mnist") else "fashion_mnist"
    data = load(name)
    t0 = time.perf_counter()
    results = {}
    for opt, (make, lrs) in OPTIMIZERS.items():
        lrs = lrs[1:2] if smoke else lrs
        grid = {}
        for lr in lrs:
            runs = [train(make, lr, data, cfg, s) for s in range(cfg["seeds"])]
            final = [r[0][-1] for r in runs]
            score = float(np.mean(final)) if np.all(np.isfinite(final)) else np.inf
            grid[lr] = (score, runs)
        lr, (score, runs) = min(grid.items(), key=lambda kv: kv[1][0])
        results[opt] = {
            "lr": lr,
            "final_train_loss": mean_std([float(r[0][-1]) for r in runs]),
            "test_accuracy": mean_std([r[1] for r in runs]),
            "step_ms": mean_std([1000 * r[2] for r in runs]),
            "loss_curve_mean": np.mean([r[0] for r in runs], axis=0).tolist(),
            "grid_final_train_loss": {str(k): v[0] for k, v in grid.items()},
        }
        r = results[opt]
        print(
            f"{opt:>15} lr {lr:g}: final train loss {r['final_train_loss']['mean']:.4f} ± "
            f"{r['final_train_loss']['std']:.4f}, test acc {r['test_accuracy']['mean']:.4f}, "
            f"step {r['step_ms']['mean']:.2f} ms",
            flush=True,
        )
    payload = {
        "experiment": "optimizers (issue 16 item 6)",
        "dataset": name,
        "machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].platform}, "
        f"jax {jax.__version__}",
        "config": cfg,
        "seconds": time.perf_counter() - t0,
        "results": results,
    }
    write_results(out, payload)
    _plot(out, cfg, name, results)
    return payload


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
    fig.suptitle(f"{name} MLP, batch {cfg['batch']}")
    save_figure(fig, out / "optimizers.png")


def main(argv=None) -> None:
    a = parse_args(__doc__, "experiments/optimizers/results", argv)
    payload = run(a.smoke, a.out)
    print(
        f"{payload['seconds']:.0f} s on {payload['dataset']}; wrote {Path(a.out) / 'results.json'}"
    )


if __name__ == "__main__":
    main()
