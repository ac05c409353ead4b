"""Knowledge transfer by generation (paper §2.4 item 5).

* **Weights** (a hypernetwork): a slow level ``H_phi`` maps a task embedding ``z`` to the fast
  level's weights, ``W = H_phi(z)``; the fast level's read-out ``W x`` is differentiable in
  ``phi``, so the slow level learns from the fast level's errors (:func:`hypernet_init`,
  :func:`hypernet_weights`, :func:`hypernet_module`).
* **Updates** (a learned optimizer): a slow level generates the fast level's *updates* from its
  gradients, the context the architecture generates for the optimizer. :func:`learned_optimizer`
  is an Optax transformation whose rule is a tiny per-coordinate MLP of ``(g, m)`` (gradient and
  its running average, the rule's own memory); its parameters ``theta`` are meta-learned by
  differentiating through unrolled optimisation (:func:`meta_train_learned_optimizer`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nested_jax.transfer.module import LearningModule

__all__ = [
    "hypernet_init",
    "hypernet_weights",
    "hypernet_module",
    "LearnedOptState",
    "init_learned_rule",
    "learned_optimizer",
    "meta_train_learned_optimizer",
]


# ------------------------------------------------------------------------------ hypernetwork
def hypernet_init(key, d_embed: int, hidden: int, d_out: int, d_in: int) -> dict:
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (hidden, d_embed), jnp.float32) / d_embed**0.5,
        "b1": jnp.zeros((hidden,), jnp.float32),
        "w2": 0.1 * jax.random.normal(k2, (d_out * d_in, hidden), jnp.float32) / hidden**0.5,
        "b2": jnp.zeros((d_out * d_in,), jnp.float32),
    }


def hypernet_weights(phi: dict, z: jax.Array, d_out: int, d_in: int) -> jax.Array:
    """The generated fast weights ``[d_out, d_in]`` for task embedding ``z: [d_embed]``."""
    h = jnp.tanh(phi["w1"] @ z + phi["b1"])
    return (phi["w2"] @ h + phi["b2"]).reshape(d_out, d_in)


def hypernet_module(phi: dict, z: jax.Array, template: LearningModule) -> LearningModule:
    """``template`` with its initial weights and memory generated from ``z`` (it can still
    learn in context from there: generation and in-context learning compose)."""
    d_out, d_in = template.state.w.shape
    return template.reset({"init": hypernet_weights(phi, z, d_out, d_in)})


# -------------------------------------------------------------------------- learned optimizer
class LearnedOptState(NamedTuple):
    m: optax.Updates  # running average of the gradients (the rule's own fast memory)


def init_learned_rule(key, hidden: int = 16) -> dict:
    """``theta`` of the per-coordinate rule ``update = -(w2 tanh(W1 [g, m] + b1) + c_g g + c_m m)``
    (initialised at plain SGD: ``c_g = 1``, everything else ~0)."""
    return {
        "w1": 0.5 * jax.random.normal(key, (hidden, 2), jnp.float32),
        "b1": jnp.zeros((hidden,), jnp.float32),
        "w2": jnp.zeros((hidden,), jnp.float32),
        "c": jnp.array([1.0, 0.0], jnp.float32),
    }


def learned_optimizer(theta: dict, learning_rate: float, beta: float = 0.9):
    """An Optax transformation generating updates from ``(g, m)`` with the rule ``theta``
    (``theta`` may be a traced value: meta-gradients flow into it)."""

    def rule(g, m):
        feats = jnp.stack([g, m], axis=-1)  # [..., 2]
        h = jnp.tanh(feats @ theta["w1"].T + theta["b1"].reshape((1,) * g.ndim + (-1,)))
        return -learning_rate * (h @ theta["w2"] + feats @ theta["c"])

    def init_fn(params):
        return LearnedOptState(jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        m = jax.tree.map(lambda m, g: beta * m + (1.0 - beta) * g, state.m, updates)
        return jax.tree.map(rule, updates, m), LearnedOptState(m)

    return optax.GradientTransformation(init_fn, update_fn)


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
