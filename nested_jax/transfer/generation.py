"""Knowledge transfer by generation (paper §2.4 item 5).

* **Weights** (a hypernetwork): a slow level ``H_phi`` maps a task embedding ``z`` to the fast
  level's weights, ``W = H_phi(z)``; the fast level's read-out ``W x`` is differentiable in
  ``phi``, so the slow level learns from the fast level's errors (`hypernet_init`,
  `hypernet_weights`, `hypernet_module`).
* **Updates** (a learned optimizer): a slow level generates the fast level's *updates* from its
  gradients. It is an optimizer, so it lives in `nested_jax.optim.learned`
  (``learned_optimizer``, ``meta_train_learned_optimizer``; re-exported by
  `nested_jax.transfer`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nested_jax.memory.linear import LinearMemory, LinearParams
from nested_jax.transfer.module import LearningModule

__all__ = [
    "hypernet_init",
    "hypernet_weights",
    "hypernet_module",
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
    if not isinstance(template.memory, LinearMemory):
        raise TypeError(
            f"hypernet_module generates a linear memory's weights; {template.name} has a "
            f"{type(template.memory).__name__}."
        )
    _, d_out, d_in = template.params.w.shape
    return template.reset(LinearParams(hypernet_weights(phi, z, d_out, d_in)[None]))
