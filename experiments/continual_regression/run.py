"""Continual regression with tasks that share directions (PAPER.md §3.3, §9 experiment 3).

Tasks ``i = 1..n`` are linear regressions ``y = W*_i x`` learned in sequence by one linear model
with each optimizer; after every task we record the loss on every task. Two settings:

* ``shared`` (default, issue 16): every task's inputs span a common block of directions (a
  quarter of ``R^d``) plus its own block, and the maps share a common part (``W*_i = A + 0.5
  B_i``): tasks pull the same weights in different directions, so every optimizer can forget and
  an optimizer's memory of earlier gradients could matter;
* ``orthogonal`` (``--setting orthogonal``, the first version): mutually orthogonal input
  subspaces, where plain SGD cannot forget by construction (each task's gradients only touch
  ``W`` on its own subspace), so any forgetting comes from optimizer state carried across.

We report:

* ``final_avg_loss``: mean loss over all tasks at the end;
* ``forgetting``: mean over earlier tasks of (loss at the end - loss right after that task);
* ``old_subspace_momentum``: after training each task ``t >= 2``, the fraction of the optimizer's
  momentum memory (``nested_jax.optim.read_memory``) lying in the *earlier* tasks' own directions,
  i.e. how much of the old gradient subspace the memory still holds — the quantity the paper's
  argument is about (``old_subspace_slow_momentum``: the same for M3's slow memory).

Learning rates are picked per optimizer from a small grid by final average loss. The claim under
test: multi-scale (M3) or delta momentum forget less than momentum and Adam.

Run: ``python -m experiments.continual_regression.run [--setting shared|orthogonal] [--smoke]
[--out DIR]`` -> results.json, forgetting.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import parse_args, pyplot, save_figure, write_results
from nested_jax import optim


def optimizers():
    return {
        "sgd": lambda lr: optax.sgd(lr),
        "momentum": lambda lr: optim.momentum_memory(lr, 0.9),
        "delta_momentum": lambda lr: optim.delta_momentum(lr, 0.9, beta=0.5),
        "adam": lambda lr: optim.adam_memory(lr),
        "m3": lambda lr: optim.m3(lr, slow_period=20),
    }


def make_tasks(key, n_tasks, d, d_out, noise, setting="shared"):
    """``(bases, targets, noise, owns)``: task ``i``'s inputs span ``bases[i]`` and its map is
    ``targets[i]``; ``owns[i]``: the directions only task ``i`` uses.

    ``"orthogonal"``: mutually orthogonal subspaces, independent maps (SGD cannot forget).
    ``"shared"``: every task's inputs span a common block (a quarter of ``d``) plus its own, and
    the maps share a common part (``A + 0.5 B_i``), so tasks pull the same weights in
    different directions and forgetting is possible for every optimizer."""
    basis = jnp.linalg.qr(jax.random.normal(key, (d, d)))[0]  # orthonormal columns
    if setting == "orthogonal":
        sub = d // n_tasks
        bases = [basis[:, i * sub : (i + 1) * sub] for i in range(n_tasks)]
        targets = jax.random.normal(jax.random.fold_in(key, 1), (n_tasks, d_out, d)) / d**0.5
        return bases, targets, noise, bases
    if setting != "shared":
        raise ValueError(f"setting must be 'shared' or 'orthogonal', got {setting!r}.")
    common = d // 4
    own = (d - common) // n_tasks
    shared = basis[:, :common]
    owns = [basis[:, common + i * own : common + (i + 1) * own] for i in range(n_tasks)]
    bases = [jnp.concatenate([shared, o], axis=1) for o in owns]
    a = jax.random.normal(jax.random.fold_in(key, 1), (d_out, d)) / d**0.5
    b = jax.random.normal(jax.random.fold_in(key, 2), (n_tasks, d_out, d)) / d**0.5
    return bases, a[None] + 0.5 * b, noise, owns


def task_loss(w, basis, target, key, n=256):
    x = jax.random.normal(key, (n, basis.shape[1])) @ basis.T
    return 0.5 * jnp.mean(jnp.sum((x @ w.T - x @ target.T) ** 2, axis=-1))


def train(tx, tasks, steps, batch, key):
    """Sequential training; returns loss matrix [after task t, on task s] and memory fractions."""
    bases, targets, noise, owns = tasks
    n = len(bases)
    d_out, d = targets.shape[1:]
    w = {"w": jnp.zeros((d_out, d))}
    state = tx.init(w)
    eval_key = jax.random.fold_in(key, 999)

    def batch_loss(p, basis, target, k):
        kx, kn = jax.random.split(k)
        x = jax.random.normal(kx, (batch, basis.shape[1])) @ basis.T
        y = x @ target.T + noise * jax.random.normal(kn, (batch, d_out))
        return 0.5 * jnp.mean(jnp.sum((x @ p["w"].T - y) ** 2, axis=-1))

    @jax.jit
    def run_task(w, state, basis, target, k):
        def step(carry, kk):
            p, s = carry
            g = jax.grad(batch_loss)(p, basis, target, kk)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (w, state), _ = jax.lax.scan(step, (w, state), jax.random.split(k, steps))
        return w, state

    losses = np.zeros((n, n))
    old_fraction, old_fraction_slow = [], []
    for t in range(n):
        w, state = run_task(w, state, bases[t], targets[t], jax.random.fold_in(key, t))
        for s in range(n):
            losses[t, s] = float(task_loss(w["w"], bases[s], targets[s], eval_key))
        if t > 0:
            old = jnp.concatenate(owns[:t], axis=1)  # the earlier tasks' own directions
            fast, slow = _memories_of(state)
            if fast is not None:
                old_fraction.append(_fraction_in(fast, old))
            if slow is not None:
                old_fraction_slow.append(_fraction_in(slow, old))
    return losses, old_fraction, old_fraction_slow


def _fraction_in(m, basis):
    """||m projected on span(basis)|| / ||m|| (rows of ``m`` live in input space)."""
    return float(jnp.linalg.norm(m @ basis @ basis.T) / (jnp.linalg.norm(m) + 1e-12))


def _memories_of(state):
    """(fast, slow) momentum matrices of a nested_jax optimizer state (None where absent)."""
    try:
        reading = optim.read_memory(state)
    except ValueError:
        return None, None
    if isinstance(reading, optim.AdamReading):
        return reading.momentum["w"], None
    if isinstance(reading, optim.M3Reading):
        return reading.fast["w"], reading.slow["w"]
    return reading["w"], None


def summarise(losses):
    n = losses.shape[0]
    forgetting = [losses[-1, s] - losses[s, s] for s in range(n - 1)]
    return float(np.mean(losses[-1])), float(np.mean(forgetting))


def run(
    *, smoke: bool = False, out: str | Path = "runs/continual_regression", setting: str = "shared"
) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_tasks, d, d_out = (3, 12, 4) if smoke else (4, 32, 8)
    steps = 40 if smoke else 300
    lrs = [0.03, 0.1] if smoke else [3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3]
    seeds = [0] if smoke else [0, 1, 2]
    t0 = time.perf_counter()
    results = []
    curves = {}
    with jax.numpy_dtype_promotion("standard"):  # optax's sgd / AdamW are not strict-clean
        for name, make in optimizers().items():
            best = None
            for lr in lrs:
                per_seed = []
                for seed in seeds:
                    key = jax.random.key(seed)
                    tasks = make_tasks(key, n_tasks, d, d_out, noise=0.1, setting=setting)
                    per_seed.append(train(make(lr), tasks, steps, 32, jax.random.fold_in(key, 7)))
                finals = [summarise(r[0])[0] for r in per_seed]
                score = float(np.mean(finals)) if np.all(np.isfinite(finals)) else np.inf
                if best is None or score < best[0]:
                    best = (score, lr, per_seed)
            _, lr, per_seed = best
            summaries = [summarise(r[0]) for r in per_seed]
            fracs = [r[1] for r in per_seed if r[1]]
            slow = [r[2] for r in per_seed if r[2]]
            results.append(
                {
                    "optimizer": name,
                    "lr": lr,
                    "final_avg_loss_mean": float(np.mean([s[0] for s in summaries])),
                    "final_avg_loss_std": float(np.std([s[0] for s in summaries])),
                    "forgetting_mean": float(np.mean([s[1] for s in summaries])),
                    "forgetting_std": float(np.std([s[1] for s in summaries])),
                    "old_subspace_momentum": np.mean(fracs, axis=0).tolist() if fracs else None,
                    "old_subspace_slow_momentum": np.mean(slow, axis=0).tolist() if slow else None,
                    "loss_matrix_seed0": per_seed[0][0].tolist(),
                }
            )
            curves[name] = per_seed[0][0]
    payload = {
        "experiment": "continual_regression",
        "config": {
            "n_tasks": n_tasks,
            "d": d,
            "d_out": d_out,
            "steps_per_task": steps,
            "lrs": lrs,
            "seeds": seeds,
            "smoke": smoke,
            "setting": setting,
        },
        "results": results,
        "seconds": time.perf_counter() - t0,
    }
    write_results(out, payload)
    _plot(curves, out / "forgetting.png")
    return payload


def _plot(curves, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, losses in curves.items():
        ax.plot(np.arange(1, losses.shape[0] + 1), losses[:, 0], marker="o", label=name)
    ax.set(
        xlabel="after training task",
        ylabel="loss on task 1",
        yscale="log",
        title="Task 1 loss as later tasks are learned (seed 0)",
    )
    ax.legend()
    save_figure(fig, path)


def main(argv=None):
    def more(p):
        p.add_argument("--setting", choices=("shared", "orthogonal"), default="shared")

    args = parse_args(__doc__, "runs/continual_regression", argv, more)
    payload = run(smoke=args.smoke, out=args.out, setting=args.setting)
    for r in payload["results"]:
        frac = r["old_subspace_momentum"]
        slow = r["old_subspace_slow_momentum"]
        print(
            f"{r['optimizer']:>15} lr={r['lr']:<6g} final avg loss "
            f"{r['final_avg_loss_mean']:.4f} +- {r['final_avg_loss_std']:.4f}  forgetting "
            f"{r['forgetting_mean']:+.4f}  momentum in old subspaces "
            f"{'-' if frac is None else [round(f, 3) for f in frac]}"
            + ("" if slow is None else f"  slow memory {[round(f, 3) for f in slow]}")
        )
    print(f"wrote {Path(args.out) / 'results.json'} and forgetting.png")


if __name__ == "__main__":
    main()
