"""DGD vs GD as a memory's inner rule, on correlated keys; the capacity of linear vs deep memories
(issue 16 item 3; PAPER.md §3.5, the "w/o DGD" ablation of Table 6).

Online associative recall: a memory writes ``N`` pairs ``(k_t, v_t)`` once, in order, then every
key is read back; the error is ``||M(k_i) - v_i||^2 / ||v_i||^2`` averaged over all pairs (1 = no
better than an empty memory). Keys are unit vectors with AR(1) correlation between neighbours,
``k_t = unit(rho k_{t-1} + sqrt(1 - rho^2) e_t)`` (tokens are not i.i.d.: the paper's motivation
for DGD); values are Gaussian. Dimension ``D = 32``, one head.

Part 1, rules at ``N = D`` pairs against ``rho``: Hebbian GD (dot-product objective: linear
attention), L2 GD with gradients at the chunk start (TTT / Titans' chunked form, chunk 16: what
"plain GD" is in a chunk-parallel model), the L2 delta rule per token (exact DeltaNet) and DGD
(its closed form is exact at any chunk size; chunk 16). Part 2, sequence length: the same against
``N`` at ``rho = 0.8``. Part 3, capacity: linear vs deep (2-layer MLP, hidden ``4 D``, no residual;
both start reading 0: the MLP's output layer at 0 over random features of the key) memories,
with DGD (L2 and dot-product objectives) and with per-token GD, against ``N`` (random keys),
writing the pairs once and 8 times. Every rule's learning rate is the best of a grid for each
setting (the mean over seeds picks it), so no rule is judged at a rate that suits another.
3 seeds (different keys and values), mean ± std.

Run: ``python -m experiments.dgd_vs_gd.run [--smoke] [--out experiments/dgd_vs_gd/results]``
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import parse_args, pyplot, save_figure, write_results
from nested_jax.memory import DGD, GD, L2, DotProduct, LinearMemory, MLPMemory

FULL = {
    "d": 32,
    "seeds": 3,
    "rhos": (0.0, 0.3, 0.6, 0.8, 0.9, 0.95),
    "lengths": (16, 32, 64, 128),
    "capacity": (8, 16, 32, 64, 128, 256),
    "passes": (1, 8),
    "etas": (0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
    "chunk": 16,
    "rho_len": 0.8,
}
SMOKE = {**FULL, "d": 8, "rhos": (0.0, 0.9), "lengths": (16,), "capacity": (16,), "passes": (1,)}
SMOKE["etas"] = (0.3, 1.0)


def rules(chunk: int) -> dict:
    """``{name: (memory, chunk size)}`` of part 1 and 2."""
    return {
        "Hebbian GD (linear attention)": (LinearMemory(objective=DotProduct(), rule=GD()), 1),
        f"L2 GD, gradients at chunk start (chunk {chunk})": (
            LinearMemory(objective=L2(), rule=GD()),
            chunk,
        ),
        "L2 GD per token (delta rule)": (
            LinearMemory(objective=L2(), rule=GD(), gradient_at="token"),
            1,
        ),
        f"DGD, L2 objective (Hope's; chunk {chunk})": (
            LinearMemory(objective=L2(), rule=DGD()),
            chunk,
        ),
        f"DGD, dot-product objective (proximal delta step; chunk {chunk})": (
            LinearMemory(objective=DotProduct(), rule=DGD()),
            chunk,
        ),
    }


def deep(d: int) -> dict:
    """Part 3's memories (chunk 1: the exact online recurrence)."""
    return {
        "linear, DGD (L2)": LinearMemory(objective=L2(), rule=DGD()),
        "linear, DGD (dot product: proximal)": LinearMemory(objective=DotProduct(), rule=DGD()),
        "linear, GD (delta rule)": LinearMemory(objective=L2(), rule=GD(), gradient_at="token"),
        "deep MLP, DGD (L2)": MLPMemory(hidden=4 * d, rule=DGD(), residual=False),
        "deep MLP, DGD (dot product)": MLPMemory(
            hidden=4 * d, objective=DotProduct(), rule=DGD(), residual=False
        ),
        "deep MLP, GD (L2)": MLPMemory(hidden=4 * d, rule=GD(), residual=False),
    }


def make_pairs(seed: int, n: int, d: int, rho: float):
    rng = np.random.default_rng(seed)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    keys = np.empty((n, d))
    keys[0] = unit(rng.normal(size=d))
    for t in range(1, n):
        keys[t] = unit(rho * keys[t - 1] + np.sqrt(1 - rho**2) * unit(rng.normal(size=d)))
    vals = rng.normal(size=(n, d)) / np.sqrt(d)
    return keys.astype(np.float32), vals.astype(np.float32)


def recall_error(mem, chunk: int, etas, keys, vals, passes: int = 1) -> np.ndarray:
    """Relative recall error ``[len(etas), seeds]`` after writing ``keys / vals [seeds, N, D]``
    ``passes`` times (all etas and seeds as one batch)."""
    s, n, d = keys.shape
    e = len(etas)
    k = jnp.tile(jnp.asarray(keys), (e, passes, 1))[:, :, None]  # [E*S, passes*N, 1, D]
    v = jnp.tile(jnp.asarray(vals), (e, passes, 1))[:, :, None]
    eta = jnp.repeat(jnp.asarray(etas, jnp.float32), s)[:, None, None] * jnp.ones(k.shape[:3])
    params = mem.init_params(jax.random.key(0), heads=1, d_k=d, d_v=d)
    if isinstance(mem, LinearMemory):
        params = jax.tree.map(jnp.zeros_like, params)  # an empty memory
    else:  # an MLP reading 0 everywhere (output layer 0) over random features of the key
        params = params._replace(w1=jnp.zeros_like(params.w1))
    state = mem.init_state(params, e * s)
    state, _ = _write(mem, chunk)(state, k, v, eta)
    y = jax.vmap(lambda q: mem.read(state, q[:, None]), in_axes=1, out_axes=1)(k[:, :n, 0])
    y = np.asarray(y[:, :, 0])  # [E*S, N, D]
    target = np.asarray(v[:, :n, 0])
    err = np.sum((y - target) ** 2, -1) / np.sum(target**2, -1)
    return np.nan_to_num(err.mean(-1).reshape(e, s), nan=np.inf)


_WRITE = {}


def _write(mem, chunk):
    key = (mem, chunk)
    if key not in _WRITE:

        def write(state, k, v, eta):
            state, _ = mem.write_read(state, k, k, v, eta, jnp.ones_like(eta), chunk_size=chunk)
            return state

        _WRITE[key] = jax.jit(lambda state, k, v, eta: (write(state, k, v, eta), None))
    return _WRITE[key]


def best(errs: np.ndarray, etas) -> dict:
    """The eta with the lowest mean error over seeds, and that row's mean ± std."""
    means = np.where(np.isfinite(errs).all(1), errs.mean(1), np.inf)
    i = int(np.argmin(means))
    row = errs[i]
    return {
        "eta": float(etas[i]),
        "mean": float(row.mean()),
        "std": float(row.std(ddof=1)) if len(row) > 1 else 0.0,
        "per_seed": row.tolist(),
        "by_eta": [float(m) for m in means],
    }


def run(smoke: bool = False, out: Path | str = "experiments/dgd_vs_gd/results") -> dict:
    cfg = SMOKE if smoke else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d, seeds, etas = cfg["d"], range(cfg["seeds"]), cfg["etas"]
    t0 = time.perf_counter()

    def pairs(n, rho):
        ks, vs = zip(*(make_pairs(1000 * s + n, n, d, rho) for s in seeds), strict=True)
        return np.stack(ks), np.stack(vs)

    by_rho = {name: [] for name in rules(cfg["chunk"])}
    for rho in cfg["rhos"]:
        keys, vals = pairs(d, rho)
        for name, (mem, chunk) in rules(cfg["chunk"]).items():
            by_rho[name].append(best(recall_error(mem, chunk, etas, keys, vals), etas))
    by_len = {name: [] for name in rules(cfg["chunk"])}
    for n in cfg["lengths"]:
        keys, vals = pairs(n, cfg["rho_len"])
        for name, (mem, chunk) in rules(cfg["chunk"]).items():
            by_len[name].append(best(recall_error(mem, chunk, etas, keys, vals), etas))
    capacity = {p: {name: [] for name in deep(d)} for p in cfg["passes"]}
    for n in cfg["capacity"]:
        keys, vals = pairs(n, 0.0)
        for p in cfg["passes"]:
            for name, mem in deep(d).items():
                capacity[p][name].append(best(recall_error(mem, 1, etas, keys, vals, p), etas))
    payload = {
        "experiment": "dgd_vs_gd (issue 16 item 3)",
        "machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].platform}, "
        f"jax {jax.__version__}",
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "seconds": time.perf_counter() - t0,
        "by_rho": by_rho,
        "by_length": by_len,
        "capacity": {str(p): v for p, v in capacity.items()},
    }
    write_results(out, payload)
    _plot(out, cfg, by_rho, by_len, capacity)
    return payload


def _plot(out, cfg, by_rho, by_len, capacity):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for i, (name, rows) in enumerate(by_rho.items()):
        m, s = np.array([r["mean"] for r in rows]), np.array([r["std"] for r in rows])
        axes[0].errorbar(cfg["rhos"], m, s, fmt="-o", ms=3, color=f"C{i}", label=name, capsize=2)
        rows = by_len[name]
        m, s = np.array([r["mean"] for r in rows]), np.array([r["std"] for r in rows])
        axes[1].errorbar(cfg["lengths"], m, s, fmt="-o", ms=3, color=f"C{i}", capsize=2)
    axes[0].set_xlabel("key correlation rho (AR(1) between neighbours)")
    axes[0].set_title(f"{cfg['d']} pairs, D = {cfg['d']}")
    axes[1].set_xlabel("pairs written")
    axes[1].set_xscale("log", base=2)
    axes[1].set_title(f"rho = {cfg['rho_len']}")
    for j, (p, rows_by) in enumerate(capacity.items()):
        for i, (name, rows) in enumerate(rows_by.items()):
            m = [r["mean"] for r in rows]
            style = "-o" if p == 1 else "--s"
            lab = f"{name}, {p} pass{'es' if p > 1 else ''}"
            axes[2].plot(cfg["capacity"], m, style, ms=3, color=f"C{i}", label=lab)
        del j
    axes[2].axvline(cfg["d"], color="0.7", ls=":")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("pairs written (random keys); dotted: D")
    axes[2].set_title("capacity: linear vs deep memory")
    for ax in axes:
        ax.set_ylabel("relative recall error (best eta, mean over seeds)")
        ax.set_ylim(0, 1.5)
        ax.axhline(1, color="0.7", lw=0.8)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=6)
    save_figure(fig, out / "dgd_vs_gd.png")


def main(argv=None) -> None:
    a = parse_args(__doc__, "experiments/dgd_vs_gd/results", argv)
    payload = run(a.smoke, a.out)
    for part in ("by_rho", "by_length"):
        print(part)
        for name, rows in payload[part].items():
            print(f"  {name:50s} " + " ".join(f"{r['mean']:.3f}" for r in rows))
    for p, rows_by in payload["capacity"].items():
        print(f"capacity, {p} pass(es)")
        for name, rows in rows_by.items():
            print(f"  {name:50s} " + " ".join(f"{r['mean']:.3f}" for r in rows))
    print(f"{payload['seconds']:.0f} s; wrote {Path(a.out) / 'results.json'}")


if __name__ == "__main__":
    main()
