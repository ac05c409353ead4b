"""Train state, the outer optimizer, and the jitted train / eval steps."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nested_jax import optim as nj_optim
from nested_jax.models import LanguageModel

if TYPE_CHECKING:
    from nested_jax.train.config import OptimConfig

__all__ = [
    "OPTIMIZERS",
    "TrainState",
    "make_schedule",
    "make_optimizer",
    "init_train_state",
    "train_step",
    "eval_step",
]


class TrainState(NamedTuple):
    """Everything a step changes: ``params``, ``opt_state``, ``step`` (applied updates + skipped
    ones), ``rng`` (raw key data, advanced every step), ``skipped`` (non-finite steps not applied).
    The data iterator's position lives beside it (it is host state, checkpointed with it)."""

    params: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array
    skipped: jax.Array


def make_schedule(o: OptimConfig, total_steps: int) -> optax.Schedule:
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


def _m3(o: OptimConfig, lr):
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


def _muon(o: OptimConfig, lr):
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


def make_optimizer(o: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """Clip (``clip_norm``) then the named optimizer (:data:`OPTIMIZERS`) with the schedule."""
    if o.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {o.name!r}; choose one of {sorted(OPTIMIZERS)}.")
    opt = OPTIMIZERS[o.name](o, make_schedule(o, total_steps))
    if o.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(o.clip_norm), opt)
    return opt


def init_train_state(model: LanguageModel, opt, key) -> TrainState:
    kp, kr = jax.random.split(key)
    params = model.init(kp)
    zero = jnp.zeros([], jnp.int32)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = opt.init(params)
    return TrainState(params, opt_state, zero, jax.random.key_data(kr), zero)


def train_step(model: LanguageModel, opt, state: TrainState, batch: jax.Array):
    """One outer step on ``batch: int32 [B, T]``: ``(state, metrics)``.

    A non-finite loss or gradient norm leaves ``params`` and ``opt_state`` unchanged (the update
    is not applied), counts the step in ``skipped`` and reports ``finite = False``."""
    loss, grads = jax.value_and_grad(model.loss)(state.params, batch)
    gnorm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    with jax.numpy_dtype_promotion("standard"):  # optax's own code is not strict-promotion clean
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    rng = jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))
    new = TrainState(
        keep(params, state.params),
        keep(opt_state, state.opt_state),
        state.step + 1,
        rng,
        state.skipped + (~finite).astype(jnp.int32),
    )
    return new, {"loss": loss, "grad_norm": gnorm, "finite": finite}


def eval_step(model: LanguageModel, params, batch: jax.Array) -> jax.Array:
    """Mean next-token loss (nats) of ``batch``."""
    return model.loss(params, batch)


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    return loss_nats / math.log(2) / bytes_per_token
