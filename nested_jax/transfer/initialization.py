"""Knowledge transfer by initialization (paper §2.4 item 4, MAML-like).

The slow level's parameter is the fast level's *initial state*: ``Theta_0 = argmin_Phi
E_task[ l( M(.; Phi adapted on the task's context) ) ]``. The fast level adapts by writing its
task's context through its own update rule (a `run_nest` of one
member, so periods, rules and retention work as everywhere else); the slow level differentiates
the post-adaptation loss through those writes (second order) or, with ``first_order=True``,
treats each write's increment as a constant (first-order MAML: the gradient reaches the
initial state directly).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from nested_jax.transfer.module import LearningModule, run_nest

__all__ = ["adapt", "post_adaptation_loss", "meta_learn_init"]


def adapt(module: LearningModule, keys, values, eta: float, *, first_order: bool = False):
    """The module after writing its context ``(keys [K, d_k], values [K, d_v])``."""
    return run_nest((module,), keys, values, (eta,), first_order=first_order).modules[0]


def post_adaptation_loss(
    params, module: LearningModule, task, eta: float, *, first_order: bool = False
) -> jax.Array:
    """Mean squared error on the task's query set after adapting from ``params`` (the module
    memory's initial state) on its support set.
    ``task = (support_keys, support_values, query_keys, query_values)``."""
    ks, vs, kq, vq = task
    m = adapt(module.reset(params), ks, vs, eta, first_order=first_order)
    pred = jax.vmap(m.read)(kq)
    return jnp.mean(jnp.sum((pred - vq) ** 2, axis=-1))


def meta_learn_init(
    module: LearningModule,
    sample_tasks: Callable[[jax.Array], tuple],
    key,
    *,
    steps: int = 200,
    meta_lr: float = 1e-2,
    eta: float = 0.1,
    first_order: bool = False,
):
    """Meta-learn ``module.params`` (its initial state) with Adam on batches of tasks.

    ``sample_tasks(key)`` returns a batch of tasks (each field with a leading task axis).
    Returns ``(params, losses)`` (the meta-loss at each step)."""
    opt = optax.adam(meta_lr)

    def meta_loss(params, tasks):
        per_task = jax.vmap(
            lambda t: post_adaptation_loss(params, module, t, eta, first_order=first_order)
        )
        return jnp.mean(per_task(tasks))

    @jax.jit
    def step(carry, k):
        params, opt_state = carry
        loss, g = jax.value_and_grad(meta_loss)(params, sample_tasks(k))
        with jax.numpy_dtype_promotion("standard"):  # optax's adam is not strict-promotion clean
            upd, opt_state = opt.update(g, opt_state, params)
        return (optax.apply_updates(params, upd), opt_state), loss

    params = module.params
    with jax.numpy_dtype_promotion("standard"):
        opt_state = opt.init(params)
    (params, _), losses = jax.lax.scan(step, (params, opt_state), jax.random.split(key, steps))
    return params, losses
