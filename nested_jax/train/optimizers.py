"""The outer optimizers by name and the learning-rate schedule of a training run.

`OPTIMIZERS` maps ``optim.name`` (a training config's) to a builder
``(OptimConfig, schedule) -> optax.GradientTransformation``; `make_optimizer` chains
gradient clipping in front. ``o`` below is the run's `OptimConfig`
(read by attribute only: this module does not import the config module, which imports it).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

from nested_jax import optim as nj_optim

__all__ = ["OPTIMIZERS", "make_optimizer", "make_schedule"]


def make_schedule(o, total_steps: int) -> optax.Schedule:
    """Linear warm-up to ``lr`` then ``constant`` / ``cosine`` / ``linear`` decay to
    ``lr * final_lr_fraction`` at ``total_steps``."""
    warm = min(o.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warm, 1)
    end = o.lr * o.final_lr_fraction
    if o.schedule == "constant":
        main = optax.constant_schedule(o.lr)
    elif o.schedule == "cosine":
        main = optax.cosine_decay_schedule(o.lr, decay_steps, alpha=o.final_lr_fraction)
    else:
        main = optax.linear_schedule(o.lr, end, decay_steps)
    if warm == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warm), main], [warm])


def _m3(o, lr):
    # the embedding and output matrices go to AdamW, as in Muon setups (optim/m3.py); the
    # layers' weights are stacked on a leading layer axis: one matrix per layer (decisions D76)
    embeddings = lambda p: jax.tree.map(lambda _: False, p) | {"embed": True, "head": True}
    stacked = lambda p: (
        jax.tree.map(lambda _: 0, p) | {"layers": jax.tree.map(lambda _: 1, p["layers"])}
    )
    wd = o.weight_decay
    return nj_optim.m3(
        lr, weight_decay=wd, adam_weight_decay=wd, embeddings=embeddings, stacked=stacked
    )


def _muon(o, lr):
    # optax's Muon on one matrix per layer of the stacked layer weights (``[n_layers, m, n]``,
    # decisions D76); embeddings, head, norms, per-head memory states and everything else go to
    # Muon's own AdamW part (its default: the same rate)
    dims = optax.contrib.MuonDimensionNumbers(reduction_axis=1, output_axis=2)

    def matrices(p):
        per_layer = jax.tree.map(lambda a: dims if a.ndim == 3 else None, p["layers"])
        return jax.tree.map(lambda _: None, p) | {"layers": per_layer}

    wd = o.weight_decay
    return optax.contrib.muon(
        lr,
        weight_decay=wd,
        adam_weight_decay=wd,
        adam_b1=o.b1,
        adam_b2=o.b2,
        muon_weight_dimension_numbers=matrices,
    )


#: The outer optimizers by name: ``(OptimConfig, schedule) -> optax.GradientTransformation``.
#: ``optim.name`` in a training config is one of these keys; add an entry to offer another.
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adamw": lambda o, lr: optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay),
    "adam": lambda o, lr: optax.adam(lr, b1=o.b1, b2=o.b2),
    "sgd": lambda o, lr: optax.sgd(lr),
    "momentum": lambda o, lr: nj_optim.momentum_memory(lr, o.b1),
    "delta_momentum": lambda o, lr: nj_optim.delta_momentum(lr, o.b1),
    "adam_memory": lambda o, lr: nj_optim.adam_memory(lr, o.b1, o.b2),
    "m3": _m3,
    "muon": _muon,
    "dmgd": lambda o, lr: nj_optim.dmgd(lr),
}


def make_optimizer(o, total_steps: int) -> optax.GradientTransformation:
    """Clip (``clip_norm``) then the named optimizer (`OPTIMIZERS`) with the schedule."""
    if o.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {o.name!r}; choose one of {sorted(OPTIMIZERS)}.")
    opt = OPTIMIZERS[o.name](o, make_schedule(o, total_steps))
    if o.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(o.clip_norm), opt)
    return opt
