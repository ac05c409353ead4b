"""Train state and the jitted train / eval steps (the outer optimizer: ``optimizers.py``)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nested_jax.models import LanguageModel

__all__ = [
    "TrainState",
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
