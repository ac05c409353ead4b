"""A learned optimizer: updates generated from the gradient by a meta-learned rule (paper §2.4
item 5, knowledge transfer by generation; §3).

The fast level is the parameters; a slow level generates their *updates* from the gradient and
the rule's own memory, a running average ``m`` of the gradients. The rule is a tiny per-coordinate
MLP of ``(g, m)``:

    direction = w2 . tanh(W1 [g, m] + b1) + c_g g + c_m m

initialised at plain SGD (``c_g = 1``, ``w2 = 0``, ``c_m = 0``). `scale_by_learned_rule`
returns the direction (Optax's convention); `learned_optimizer` chains the learning rate.
``theta`` may be a traced value, so meta-gradients flow into it:
`meta_train_learned_optimizer` differentiates through unrolled optimisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from nested_jax.optim.base import (
    cast_like,
    f32,
    register_reader,
    write_gradient_memory,
    zeros_f32,
)

__all__ = [
    "LearnedRuleState",
    "init_learned_rule",
    "learned_optimizer",
    "meta_train_learned_optimizer",
    "scale_by_learned_rule",
]


class LearnedRuleState(NamedTuple):
    """``count`` and ``m``, the running average of the gradients (the rule's memory, float32)."""

    count: chex.Array
    m: optax.Updates


def init_learned_rule(key, hidden: int = 16) -> dict:
    """``theta`` of the rule (module docstring), at plain SGD: ``c = (1, 0)``, ``w2 = 0``."""
    return {
        "w1": 0.5 * jax.random.normal(key, (hidden, 2), jnp.float32),
        "b1": jnp.zeros((hidden,), jnp.float32),
        "w2": jnp.zeros((hidden,), jnp.float32),
        "c": jnp.array([1.0, 0.0], jnp.float32),
    }


def scale_by_learned_rule(theta: dict, beta: float = 0.9) -> optax.GradientTransformationExtraArgs:
    """The learned rule's direction from ``(g, m)``, ``m <- beta m + (1 - beta) g``.

    Args:
      theta: the rule's parameters (`init_learned_rule`; may be traced).
      beta: the running average's retention.
    """

    def direction(g, m):
        feats = jnp.stack([g, m], axis=-1)  # [..., 2]
        h = jnp.tanh(feats @ theta["w1"].T + theta["b1"].reshape((1,) * g.ndim + (-1,)))
        return h @ theta["w2"] + feats @ theta["c"]

    def init_fn(params):
        m = zeros_f32(params)
        return LearnedRuleState(jnp.zeros([], jnp.int32), m)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        g = f32(updates)
        m = write_gradient_memory(state.m, g, beta, 1.0 - beta)
        d = jax.tree.map(direction, g, m)
        return cast_like(d, updates), LearnedRuleState(optax.safe_increment(state.count), m)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def learned_optimizer(
    theta: dict, learning_rate: optax.ScalarOrSchedule, beta: float = 0.9
) -> optax.GradientTransformationExtraArgs:
    """The learned optimizer: ``params <- params - lr * direction`` (see
    `scale_by_learned_rule`)."""
    return optax.chain(
        scale_by_learned_rule(theta, beta), optax.scale_by_learning_rate(learning_rate)
    )


def meta_train_learned_optimizer(
    theta: dict,
    sample_problem: Callable[[jax.Array], tuple[Callable, jax.Array]],
    key,
    *,
    learning_rate: float,
    unroll: int = 20,
    meta_steps: int = 300,
    batch: int = 8,
    meta_lr: float = 3e-3,
):
    """Meta-train ``theta``: minimise the mean log loss over ``unroll`` steps of the learned
    optimizer on problems ``(loss_fn, x0) = sample_problem(key)``. Returns ``(theta, meta_losses)``."""

    def unrolled(theta, k):
        loss_fn, x0 = sample_problem(k)
        opt = learned_optimizer(theta, learning_rate)

        def one(carry, _):
            x, st = carry
            loss, g = jax.value_and_grad(loss_fn)(x)
            u, st = opt.update(g, st)
            return (x + u, st), jnp.log(loss + 1e-12)

        _, logs = jax.lax.scan(one, (x0, opt.init(x0)), None, length=unroll)
        return jnp.mean(logs)

    meta_opt = optax.adam(meta_lr)

    @jax.jit
    def step(carry, k):
        theta, st = carry
        loss, g = jax.value_and_grad(
            lambda t: jnp.mean(jax.vmap(lambda kk: unrolled(t, kk))(jax.random.split(k, batch)))
        )(theta)
        with jax.numpy_dtype_promotion("standard"):
            upd, st = meta_opt.update(g, st, theta)
        return (optax.apply_updates(theta, upd), st), loss

    with jax.numpy_dtype_promotion("standard"):
        st = meta_opt.init(theta)
    (theta, _), losses = jax.lax.scan(step, (theta, st), jax.random.split(key, meta_steps))
    return theta, losses


register_reader(LearnedRuleState, lambda state, probe: state.m)
