"""Class-incremental learning with a Continuum Memory System MLP (issue 16 item 5; paper Fig. 6).

Split digits (scikit-learn's bundled 8 x 8 digits) and split Fashion-MNIST (when the Debian
package ``dataset-fashion-mnist`` is installed): 5 tasks of 2 classes learned in sequence by one
classifier with a single 10-way head (no task identity at test: class-incremental). Methods:

* ``mlp``: a 3-layer MLP, every layer updated every step (SGD);
* ``cms``: the same MLP as a Continuum Memory System: layer ``i`` is a level of period ``p_i``
  (``1 / 4 / 16``, fastest first as in the paper's CMS chain) that accumulates its SGD increments,
  each taken at the weights its chunk began with, and applies them when it fires
  (:func:`nested_jax.levels.fire`, the CMS rule);
* ``cms_reversed``: periods ``16 / 4 / 1`` (slowest first), to see whether the order matters;
* ``ewc``: the MLP with elastic weight consolidation (diagonal empirical Fisher, accumulated over
  tasks, anchored at the last task's weights; strength ``lambda`` from a grid);
* ``replay``: the MLP with a replay buffer (20 examples per class seen), half of each batch.

The learning rate (and EWC's strength) is chosen per method from a grid by the final validation
accuracy (a split of the training data) averaged over seeds; test accuracy is reported. Metrics:
*average accuracy* (test accuracy over all 10 classes after the last task) and *forgetting*
(per earlier task, its best accuracy after any task minus its final one, averaged). 3 seeds.

Run: ``python -m experiments.class_incremental.run [--smoke] [--out ...]`` (about 5 minutes
on 2 CPU cores with Fashion-MNIST, seconds without).
"""

from __future__ import annotations

import gzip
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import mean_std, parse_args, pyplot, save_figure, write_results
from nested_jax.levels import fire

METHODS = ("mlp", "cms", "cms_reversed", "ewc", "replay")
FASHION = Path("/usr/share/datasets/fashion-mnist")
FULL = {
    "seeds": 3,
    "lrs": (0.01, 0.03, 0.1, 0.3),
    "ewc_lambdas": (10.0, 100.0, 1000.0),
    "periods": (1, 4, 16),
    "replay_per_class": 20,
    "datasets": {
        "digits": {"hidden": 128, "steps": 300, "batch": 32},
        "fashion_mnist": {"hidden": 256, "steps": 500, "batch": 64},
    },
}
SMOKE = {
    **FULL,
    "seeds": 2,
    "lrs": (0.1,),
    "ewc_lambdas": (100.0,),
    "datasets": {"digits": {"hidden": 32, "steps": 20, "batch": 16}},
}


# ------------------------------------------------------------------------------------------ data
def load(name: str):
    """``(x_train, y_train, x_test, y_test)`` float32 features scaled to [0, 1], int labels."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int32)
        rng = np.random.default_rng(1234)  # a fixed stratified 70 / 30 split
        test = np.zeros(len(y), bool)
        for c in range(10):
            idx = np.flatnonzero(y == c)
            test[rng.choice(idx, int(round(0.3 * len(idx))), replace=False)] = True
        return x[~test], y[~test], x[test], y[test]
    if name == "fashion_mnist":

        def idx(fname, images):
            with gzip.open(FASHION / fname) as f:
                raw = np.frombuffer(f.read(), np.uint8)
            return raw[16:].reshape(-1, 784) / 255.0 if images else raw[8:]

        return (
            idx("train-images-idx3-ubyte.gz", True).astype(np.float32),
            idx("train-labels-idx1-ubyte.gz", False).astype(np.int32),
            idx("t10k-images-idx3-ubyte.gz", True).astype(np.float32),
            idx("t10k-labels-idx1-ubyte.gz", False).astype(np.int32),
        )
    raise ValueError(f"unknown dataset {name!r}")


def available(name: str) -> bool:
    return name == "digits" or (FASHION / "train-images-idx3-ubyte.gz").exists()


# ----------------------------------------------------------------------------------------- model
def init_mlp(key, d_in: int, hidden: int) -> list:
    sizes = (d_in, hidden, hidden, 10)
    keys = jax.random.split(key, 3)
    return [
        {"w": jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a), "b": jnp.zeros((b,))}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def logits(params, x):
    for i, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"][None]
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def nll(params, x, y):
    lp = jax.nn.log_softmax(logits(params, x))
    return -jnp.take_along_axis(lp, y[:, None], axis=-1)[:, 0]


# -------------------------------------------------------------------------------------- training
def make_task_trainer(method: str, periods, steps: int):
    """A jitted ``(params, pending, fisher, anchor, t0, xb, yb, rb, lr, lam) -> (params,
    pending, t)`` running ``steps`` SGD steps on the batches ``xb / yb [steps, B, ...]`` (``rb``:
    replay batches of the same shape, empty rows weighted 0)."""
    per = {"cms": periods, "cms_reversed": tuple(reversed(periods))}.get(method, (1, 1, 1))

    def loss(params, x, y, rx, ry, rw, fisher, anchor, lam):
        main = jnp.mean(nll(params, x, y))
        if method == "replay":
            main = 0.5 * main + 0.5 * jnp.sum(nll(params, rx, ry) * rw) / jnp.maximum(rw.sum(), 1)
        if method == "ewc":
            pen = jax.tree.map(lambda f, p, a: jnp.sum(f * (p - a) ** 2), fisher, params, anchor)
            main = main + 0.5 * lam * sum(jax.tree.leaves(pen))
        return main

    @jax.jit
    def train(params, pending, fisher, anchor, t0, xb, yb, rxb, ryb, rwb, lr, lam):
        def step(carry, batch):
            params, pending, t = carry
            x, y, rx, ry, rw = batch
            g = jax.grad(loss)(params, x, y, rx, ry, rw, fisher, anchor, lam)
            new_p, new_pend = [], []
            for layer, pend, grad, period in zip(params, pending, g, per, strict=True):
                pend = jax.tree.map(lambda a, b: a - lr * b, pend, grad)
                layer, pend = fire(layer, pend, (t + 1) % period == 0)  # the CMS rule
                new_p.append(layer)
                new_pend.append(pend)
            return (new_p, new_pend, t + 1), None

        (params, pending, t), _ = jax.lax.scan(step, (params, pending, t0), (xb, yb, rxb, ryb, rwb))
        return params, pending, t

    return train


@jax.jit
def empirical_fisher(params, x, y):
    per_sample = jax.vmap(jax.grad(lambda p, xi, yi: nll(p, xi[None], yi[None])[0]), (None, 0, 0))
    g = per_sample(params, x, y)
    return jax.tree.map(lambda a: jnp.mean(a**2, axis=0), g)


def accuracy(params, x, y) -> float:
    return float(jnp.mean(jnp.argmax(logits(params, x), -1) == y))


def run_sequence(method, data, cfg, dcfg, seed, lr, lam, trainer):
    """Learn the 5 tasks in order; ``R[i, j]``: accuracy on task ``j``'s classes of the
    evaluation split after task ``i``, for the validation and the test split."""
    x_tr, y_tr, x_val, y_val, x_te, y_te = data
    rng = np.random.default_rng(seed)
    params = init_mlp(jax.random.key(seed), x_tr.shape[1], dcfg["hidden"])
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    pending, fisher, anchor, t = zeros(), zeros(), zeros(), jnp.int32(0)
    buffer_x, buffer_y = [], []
    b, steps = dcfg["batch"], dcfg["steps"]
    r_val, r_te = np.zeros((5, 5)), np.zeros((5, 5))
    for task in range(5):
        mask = np.isin(y_tr, (2 * task, 2 * task + 1))
        tx, ty = x_tr[mask], y_tr[mask]
        idx = rng.integers(len(ty), size=(steps, b))
        if buffer_y:
            bx, by = np.concatenate(buffer_x), np.concatenate(buffer_y)
            ridx = rng.integers(len(by), size=(steps, b))
            rx, ry, rw = bx[ridx], by[ridx], np.ones((steps, b), np.float32)
        else:
            rx = np.zeros((steps, b, tx.shape[1]), np.float32)
            ry, rw = np.zeros((steps, b), np.int32), np.zeros((steps, b), np.float32)
        params, pending, t = trainer(
            params, pending, fisher, anchor, t, tx[idx], ty[idx], rx, ry, rw, lr, lam
        )
        if method == "ewc":
            sub = rng.choice(len(ty), min(len(ty), 500), replace=False)
            f = empirical_fisher(params, jnp.asarray(tx[sub]), jnp.asarray(ty[sub]))
            fisher = jax.tree.map(jnp.add, fisher, f)
            anchor = params
        for c in (2 * task, 2 * task + 1):
            keep = rng.choice(np.flatnonzero(ty == c), cfg["replay_per_class"], replace=False)
            buffer_x.append(tx[keep])
            buffer_y.append(ty[keep])
        for j in range(task + 1):
            for r, (x, y) in ((r_val, (x_val, y_val)), (r_te, (x_te, y_te))):
                m = np.isin(y, (2 * j, 2 * j + 1))
                r[task, j] = accuracy(params, x[m], y[m])
    return r_val, r_te


def summary(r: np.ndarray) -> dict:
    final = r[-1]
    forgetting = [r[:-1, j].max() - final[j] for j in range(4)]
    return {"average_accuracy": float(final.mean()), "forgetting": float(np.mean(forgetting))}


def run(smoke: bool = False, out: Path | str = "experiments/class_incremental/results") -> dict:
    cfg = SMOKE if smoke else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results, missing = {}, []
    for name, dcfg in cfg["datasets"].items():
        if not available(name):
            missing.append(name)
            continue
        x_tr, y_tr, x_te, y_te = load(name)
        rng = np.random.default_rng(0)  # validation: 15% of the training split, fixed
        val = rng.random(len(y_tr)) < 0.15
        data = (x_tr[~val], y_tr[~val], x_tr[val], y_tr[val], x_te, y_te)
        results[name] = {}
        for method in METHODS:
            trainer = make_task_trainer(method, cfg["periods"], dcfg["steps"])
            lams = cfg["ewc_lambdas"] if method == "ewc" else (0.0,)
            grid = {}
            for lr in cfg["lrs"]:
                for lam in lams:
                    runs = [
                        run_sequence(method, data, cfg, dcfg, s, lr, lam, trainer)
                        for s in range(cfg["seeds"])
                    ]
                    val_acc = np.mean([summary(rv)["average_accuracy"] for rv, _ in runs])
                    grid[(lr, lam)] = (val_acc, [rt for _, rt in runs])
            (lr, lam), (val_acc, tests) = max(grid.items(), key=lambda kv: kv[1][0])
            per_seed = [summary(r) for r in tests]
            results[name][method] = {
                "lr": lr,
                "ewc_lambda": lam if method == "ewc" else None,
                "validation_average_accuracy": float(val_acc),
                "average_accuracy": mean_std([s["average_accuracy"] for s in per_seed]),
                "forgetting": mean_std([s["forgetting"] for s in per_seed]),
                "accuracy_matrix_mean": np.mean(tests, axis=0).tolist(),
                "grid_validation": {f"lr={k[0]},lambda={k[1]}": v[0] for k, v in grid.items()},
            }
            print(
                f"{name:>13} {method:>12}: lr {lr}"
                + (f" lambda {lam}" if method == "ewc" else "")
                + f"  avg acc {results[name][method]['average_accuracy']['mean']:.3f}"
                f"  forgetting {results[name][method]['forgetting']['mean']:.3f}",
                flush=True,
            )
    payload = {
        "experiment": "class_incremental (issue 16 item 5)",
        "machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].platform}, "
        f"jax {jax.__version__}",
        "config": {k: v for k, v in cfg.items()},
        "seconds": time.perf_counter() - t0,
        "not_installed": missing,
        "results": results,
    }
    write_results(out, payload)
    _plot(out, results)
    return payload


def _plot(out: Path, results: dict) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (name, by_method) in zip(axes[0], results.items(), strict=True):
        for i, (method, r) in enumerate(by_method.items()):
            acc = np.asarray(r["accuracy_matrix_mean"])
            seen = [acc[k, : k + 1].mean() for k in range(5)]
            ax.plot(range(1, 6), seen, "-o", ms=3, color=f"C{i}", label=f"{method} (lr {r['lr']})")
        ax.set_title(f"split {name}: accuracy on the classes seen so far")
        ax.set_xlabel("tasks learned")
        ax.set_ylabel("test accuracy (mean over seeds)")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
    save_figure(fig, out / "class_incremental.png")


def main(argv=None) -> None:
    a = parse_args(__doc__, "experiments/class_incremental/results", argv)
    payload = run(a.smoke, a.out)
    if payload["not_installed"]:
        print(
            f"not installed, skipped: {payload['not_installed']} (apt-get install dataset-fashion-mnist)"
        )
    print(f"{payload['seconds']:.0f} s; wrote {Path(a.out) / 'results.json'}")


if __name__ == "__main__":
    main()
