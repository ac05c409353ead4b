"""Three levels, three kinds of knowledge (paper §2.4): a nest built from `nested_jax.transfer`.

The stream: tasks ``tau`` whose key -> value map is ``A + D_tau`` (``A`` shared by every task,
``D_tau`` specific to the task), and inside each task a context perturbation ``E_c`` that changes
every ``context_len`` tokens: ``v_t = (A + D_tau + E_c(t)) k_t + noise``.

The nest (one :class:`~nested_jax.transfer.LearningModule` per level):

* ``slow`` (across tasks): meta-learns the medium level's initial state (knowledge transfer by
  initialization, MAML through the whole task stream, :func:`nested_jax.transfer.meta_learn_init`
  with the nest as the adapted system).
* ``medium`` (period ``medium_period`` tokens, GD on the L2 objective): starts every task from
  the slow level's state and consolidates the task's map.
* ``fast`` (every token, DGD): starts every task at zero and writes what the medium level's read
  leaves unexplained (direct parametric transfer, ``receives="residual"``): the current context.

Prediction of ``v_t`` = sum of the levels' reads before writing. We report the online prediction
error of the nest and its ablations on held-out tasks, and what each level's state holds.

The other two mechanisms of §2.4, each against the nest above (issue 16 item 7):

* **generation**: every task comes with a descriptor ``z_tau`` (a noisy random projection of
  ``D_tau`` to ``descriptor_dim`` numbers); the slow level is a hypernetwork that *generates* the
  medium level's initial state from ``z_tau`` (:func:`nested_jax.transfer.hypernet_module`),
  meta-trained through the same nest. Control: the same with a descriptor that carries nothing
  about the task (independent noise), where generation can at best learn one initial state.
* **backpropagation**: medium and fast sit in one gradient flow (§2.4 item 3, the form the CMS
  uses): both follow the gradient of the *joint* prediction's error, each at its own frequency,
  so the medium level writes ``v - (fast read)`` instead of ``v`` (in the nest above only the
  fast level is conditioned on the other). Its initial state is meta-learned the same way.
  It is :func:`nested_jax.transfer.run_nest` with the medium member receiving ``"joint"``
  (:func:`stream_error` with ``joint=True``).

Run: ``python -m experiments.knowledge_transfer.run [--smoke] [--out DIR]`` -> results.json,
levels.png.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import mean_std, parse_args, pyplot, save_figure, write_results
from nested_jax.memory import DGD, GD, LinearParams
from nested_jax.transfer import LearningModule, hypernet_init, hypernet_weights, run_nest


def make_tasks(key, a, n_tasks, *, length, context_len, task_scale, context_scale, noise):
    d = a.shape[0]
    kd, ke, kk, kn = jax.random.split(key, 4)
    d_tau = task_scale * jax.random.normal(kd, (n_tasks, d, d)) / d**0.5
    n_ctx = length // context_len
    e = context_scale * jax.random.normal(ke, (n_tasks, n_ctx, d, d)) / d**0.5
    keys = jax.random.normal(kk, (n_tasks, length, d))
    keys = keys / jnp.linalg.norm(keys, axis=-1, keepdims=True)
    maps = a[None, None] + d_tau[:, None] + jnp.repeat(e, context_len, axis=1)
    values = jnp.einsum("ntij,ntj->nti", maps, keys)
    values = values + noise * jax.random.normal(kn, values.shape)
    return keys, values, d_tau, e


def describe(proj_key, noise_key, d_tau, *, dim, noise, informative=True):
    """Each task's descriptor ``[n_tasks, dim]``: a random projection of ``vec(D_tau)`` fixed by
    ``proj_key`` (unit variance per entry) plus ``noise``; ``informative=False``: unit noise in
    its place, nothing about the task."""
    n, d, _ = d_tau.shape
    proj = jax.random.normal(proj_key, (dim, d * d)) / d  # rows of norm ~1
    z = jnp.einsum("zi,ni->nz", proj, d_tau.reshape(n, d * d)) / jnp.std(d_tau)
    if not informative:
        z = jax.random.normal(jax.random.fold_in(noise_key, 1), z.shape)
    return z + noise * jax.random.normal(noise_key, z.shape)


def build(cfg, key):
    d = cfg["dim"]
    medium = LearningModule.init(
        key,
        d,
        d,
        scale=1.0,
        name="medium",
        period=cfg["medium_period"],
        rule=GD(),
        receives="value",
    )
    fast = LearningModule.init(key, d, d, name="fast", period=1, rule=DGD(), receives="residual")
    return medium, fast


def stream_error(init, members, keys, values, cfg, use=("medium", "fast"), joint=False):
    """Online squared error of the nest on one task (medium starts from ``init``). ``joint``:
    transfer by backpropagation, the medium member receives ``"joint"`` (it writes what the
    fast member's read leaves, so both follow the joint prediction's error); otherwise it writes
    the value (the one-way nest)."""
    medium, fast = members
    mods = []
    etas = []
    if "medium" in use:
        mods.append(medium.reset(LinearParams(init[None])))
        if joint:
            mods[-1] = dataclasses.replace(mods[-1], receives="joint")
        etas.append(cfg["eta_medium"])
    if "fast" in use:  # alone, it writes the value itself (nothing precedes it)
        mods.append(fast if "medium" in use else dataclasses.replace(fast, receives="value"))
        etas.append(cfg["eta_fast"])
    res = run_nest(tuple(mods), keys, values, tuple(etas), first_order=cfg["first_order"])
    return jnp.mean(jnp.sum((res.predictions - values) ** 2, axis=-1)), res


def meta_train(loss, params, key, cfg):
    """The slow level: Adam on ``loss(params, key)`` (online error of a batch of fresh tasks)
    for ``meta_steps`` steps; ``(params, losses)``."""
    opt = optax.adam(cfg["meta_lr"])

    @jax.jit
    def meta_step(carry, k):
        params, st = carry
        value, g = jax.value_and_grad(loss)(params, k)
        with jax.numpy_dtype_promotion("standard"):
            u, st = opt.update(g, st)
        return (optax.apply_updates(params, u), st), value

    with jax.numpy_dtype_promotion("standard"):
        st = opt.init(params)
    (params, _), hist = jax.lax.scan(
        meta_step, (params, st), jax.random.split(key, cfg["meta_steps"])
    )
    return params, hist


def run(smoke: bool = False, out: Path | None = None, seeds=(0, 1, 2)) -> dict:
    """Every seed (tasks, shared map and the members' init), then mean ± std over seeds."""
    t0 = time.time()
    runs = [_one(smoke, seed) for seed in seeds]
    agg = lambda part: {k: mean_std([r[part][k] for r in runs]) for k in runs[0][part]}
    payload = {
        "config": runs[0]["config"] | {"seed": list(seeds)},
        "machine": f"{jax.devices()[0].platform}, {jax.device_count()} device(s)",
        "seconds": round(time.time() - t0, 1),
        "online_mse_held_out": agg("online_mse_held_out"),
        "what_each_level_learned": agg("what_each_level_learned"),
        "per_seed": [{k: v for k, v in r.items() if k != "_plot"} for r in runs],
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_results(out, payload)
        _plot(out, runs[0])
    return payload


def _one(smoke: bool, seed: int) -> dict:
    cfg = dict(
        dim=8,
        length=64 if smoke else 256,
        context_len=16 if smoke else 32,
        medium_period=4 if smoke else 8,
        task_scale=0.5,
        context_scale=0.3,
        noise=0.02,
        eta_medium=0.5,
        eta_fast=0.9,
        meta_steps=20 if smoke else 300,
        meta_batch=4 if smoke else 16,
        meta_lr=3e-2,
        first_order=True,
        descriptor_dim=16,
        descriptor_noise=0.3,
        hypernet_hidden=64,
        test_tasks=8 if smoke else 128,
        seed=seed,
    )
    t0 = time.time()
    key = jax.random.key(cfg["seed"])
    ka, km, kt, ktest = jax.random.split(key, 4)
    d = cfg["dim"]
    a = jax.random.normal(ka, (d, d)) / d**0.5
    members = build(cfg, km)
    task_kw = {k: cfg[k] for k in ("length", "context_len", "task_scale", "context_scale", "noise")}

    def meta_loss(init, k):
        keys, values, _, _ = make_tasks(k, a, cfg["meta_batch"], **task_kw)
        return jnp.mean(
            jax.vmap(lambda ks, vs: stream_error(init, members, ks, vs, cfg)[0])(keys, values)
        )

    init0 = members[0].params.w[0]  # [d, d]: one head
    init, meta_hist = meta_train(meta_loss, init0, kt, cfg)

    # transfer by backpropagation: medium and fast follow the joint error (own meta-learned init)
    def joint_meta_loss(init, k):
        keys, values, _, _ = make_tasks(k, a, cfg["meta_batch"], **task_kw)
        err = lambda ks, vs: stream_error(init, members, ks, vs, cfg, joint=True)[0]
        return jnp.mean(jax.vmap(err)(keys, values))

    joint_init, joint_hist = meta_train(joint_meta_loss, init0, kt, cfg)

    # transfer by generation: a hypernetwork maps the task's descriptor to the medium's init
    kp, kh = jax.random.split(jax.random.fold_in(key, 7))
    z_kw = {"dim": cfg["descriptor_dim"], "noise": cfg["descriptor_noise"]}

    def gen_meta_loss(phi, k, informative):
        keys, values, d_tau, _ = make_tasks(k, a, cfg["meta_batch"], **task_kw)
        z = describe(kp, jax.random.fold_in(k, 1), d_tau, informative=informative, **z_kw)
        err = lambda ks, vs, z: stream_error(hypernet_weights(phi, z, d, d), members, ks, vs, cfg)[
            0
        ]
        return jnp.mean(jax.vmap(err)(keys, values, z))

    phi0 = hypernet_init(kh, cfg["descriptor_dim"], cfg["hypernet_hidden"], d, d)
    phi, gen_hist = meta_train(lambda p, k: gen_meta_loss(p, k, True), phi0, kt, cfg)
    phi_blind, blind_hist = meta_train(lambda p, k: gen_meta_loss(p, k, False), phi0, kt, cfg)

    keys, values, d_tau, e = make_tasks(ktest, a, cfg["test_tasks"], **task_kw)

    def evaluate(init, use):
        errs, res = jax.vmap(lambda ks, vs: stream_error(init, members, ks, vs, cfg, use))(
            keys, values
        )
        return float(jnp.mean(errs)), res

    rel = lambda w, target: float(
        jnp.mean(
            jnp.linalg.norm(w - target, axis=(-2, -1)) / jnp.linalg.norm(target, axis=(-2, -1))
        )
    )
    z_test = describe(kp, jax.random.fold_in(ktest, 1), d_tau, **z_kw)
    z_blind = describe(kp, jax.random.fold_in(ktest, 1), d_tau, informative=False, **z_kw)
    generated = jax.vmap(lambda z: hypernet_weights(phi, z, d, d))(z_test)
    generated_blind = jax.vmap(lambda z: hypernet_weights(phi_blind, z, d, d))(z_blind)

    def evaluate_per_task(inits):
        err = lambda i, ks, vs: stream_error(i, members, ks, vs, cfg)[0]
        return float(jnp.mean(jax.vmap(err)(inits, keys, values)))

    gen = evaluate_per_task(generated)
    gen_blind = evaluate_per_task(generated_blind)
    joint_errs, joint_res = jax.vmap(
        lambda ks, vs: stream_error(joint_init, members, ks, vs, cfg, joint=True)
    )(keys, values)
    joint = float(jnp.mean(joint_errs))
    joint_medium_w = joint_res.modules[0].state.w[:, 0, 0]
    joint_fast_w = joint_res.modules[1].state.w[:, 0, 0]
    full, res = evaluate(init, ("medium", "fast"))
    cosine = lambda w, target: float(
        jnp.mean(
            jnp.sum(w * target, axis=(-2, -1))
            / (jnp.linalg.norm(w, axis=(-2, -1)) * jnp.linalg.norm(target, axis=(-2, -1)))
        )
    )
    no_meta, _ = evaluate(jnp.zeros_like(init), ("medium", "fast"))
    random_init, _ = evaluate(init0, ("medium", "fast"))
    medium_only, _ = evaluate(init, ("medium",))
    fast_only, _ = evaluate(init, ("fast",))
    zero = float(jnp.mean(jnp.sum(values**2, axis=-1)))
    medium_w = res.modules[0].state.w[:, 0, 0]  # [tasks, d, d] at the end of each task
    fast_w = res.modules[1].state.w[:, 0, 0]
    task_maps = a[None] + d_tau
    last_ctx = e[:, -1]
    what = {
        "slow: rel. distance of the learned initial state to the shared map A": rel(
            init[None], a[None]
        ),
        "slow: the same for the random initial state": rel(init0[None], a[None]),
        "medium: rel. distance of its final state to the task map A + D_tau": rel(
            medium_w, task_maps
        ),
        "medium: rel. distance of its final state to A": rel(
            medium_w, jnp.broadcast_to(a, medium_w.shape)
        ),
        "fast: rel. distance of its final state to the last context's E_c": rel(fast_w, last_ctx),
        "fast: cosine of its final state with E_c": cosine(fast_w, last_ctx),
        "generation: rel. distance of the generated initial state to A + D_tau": rel(
            generated, task_maps
        ),
        "generation: the same for the meta-learned (one) initial state": rel(
            jnp.broadcast_to(init, task_maps.shape), task_maps
        ),
        "generation, blind descriptor: the same for its generated initial state": rel(
            generated_blind, task_maps
        ),
        "backprop: medium's rel. distance to A + D_tau at the end of a task": rel(
            joint_medium_w, task_maps
        ),
        "backprop: fast's cosine with E_c": cosine(joint_fast_w, last_ctx),
    }
    mse = {
        "predict zero": zero,
        "nest (meta-learned init + medium + fast)": full,
        "nest, medium starting from zero (no transfer by initialization)": no_meta,
        "nest, medium starting from its random init": random_init,
        "medium only (no fast level)": medium_only,
        "fast only": fast_only,
        "generation: medium's init generated from the task's descriptor": gen,
        "generation, blind descriptor (carries nothing about the task)": gen_blind,
        "backprop: medium and fast follow the joint error (one gradient flow)": joint,
    }
    return {
        "config": cfg,
        "seed": seed,
        "seconds": round(time.time() - t0, 1),
        "meta_loss_first_last": [float(meta_hist[0]), float(meta_hist[-1])],
        "meta_loss_first_last_by_mechanism": {
            name: [float(h[0]), float(h[-1])]
            for name, h in (
                ("initialization", meta_hist),
                ("backprop", joint_hist),
                ("generation", gen_hist),
                ("generation_blind", blind_hist),
            )
        },
        "online_mse_held_out": mse,
        "what_each_level_learned": what,
        "_plot": (np.asarray(meta_hist), np.asarray(jnp.linalg.norm(res.reads[0], axis=-1))),
    }


def _plot(out: Path, first: dict) -> None:
    """The first seed's meta-learning curve and the levels' reads along one held-out task."""
    meta_hist, reads = first["_plot"]  # reads: [T, 2] (medium, fast) of the first test task
    cfg = first["config"]
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot(meta_hist)
    ax[0].set_xlabel(f"meta step (slow level), seed {first['seed']}")
    ax[0].set_ylabel("online MSE on training tasks")
    ax[1].plot(reads[:, 0], label="medium read |y|")
    ax[1].plot(reads[:, 1], label="fast read |y|")
    for c in range(0, cfg["length"], cfg["context_len"]):
        ax[1].axvline(c, color="grey", lw=0.5)
    ax[1].set_xlabel("token (one held-out task; grey: context changes)")
    ax[1].legend()
    save_figure(fig, out / "levels.png")


def main(argv=None):
    args = parse_args(__doc__, "experiments/knowledge_transfer/results", argv)
    p = run(smoke=args.smoke, out=Path(args.out))
    print(f"knowledge transfer in a three-level nest ({p['seconds']} s, {p['machine']})")
    print("online prediction MSE on held-out tasks (mean ± std over seeds):")
    for k, v in p["online_mse_held_out"].items():
        print(f"  {k:<66} {v['mean']:.4f} ± {v['std']:.4f}")
    print("what each level learned:")
    for k, v in p["what_each_level_learned"].items():
        print(f"  {k:<70} {v['mean']:.3f} ± {v['std']:.3f}")


if __name__ == "__main__":
    main()
