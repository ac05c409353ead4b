"""Shared pieces of the optimizers-as-memories (paper §3; decisions D67).

* `read_memory` queries the memory held in any of our optimizer states with a
  gradient-shaped probe (for notebooks: "what does this optimizer remember?").
* `register_reader` is how each optimizer module declares how its state is read.
* `write_gradient_memory` is the optimizers' one momentum memory: every running average of
  gradients in ``nested_jax.optim`` (heavy-ball and delta momentum, Adam's and M3's moments, the
  preconditioned and learned rules' momenta) is this one write with its own retention and rate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from nested_jax.memory.objectives import DotProduct, Objective, check_objective

PyTree = Any

__all__ = ["as_rows", "read_memory", "register_reader", "write_gradient_memory", "zeros_f32"]

_READERS: dict[type, Callable[[Any, PyTree], Any]] = {}


def as_rows(x: jax.Array) -> jax.Array:
    """A parameter or gradient leaf as rows ``[n, d]`` (``d`` its last axis; a scalar is one row
    of one): the shape in which the optimizers' per-row memories see it."""
    x = jnp.asarray(x)
    return x.reshape(1, 1) if x.ndim == 0 else x.reshape(-1, x.shape[-1])


def register_reader(state_type: type, reader: Callable[[Any, PyTree], Any]) -> None:
    """Declare how a state type answers `read_memory`."""
    _READERS[state_type] = reader


def read_memory(opt_state: PyTree, probe: PyTree | None = None) -> Any:
    """Query the memory of a nested_jax optimizer.

    Works on the state of the transformation itself or on any optax state that contains it
    (``optax.chain``, ``inject_hyperparams``, ``MultiSteps``, ``partition``...).

    Args:
      opt_state: an optimizer state.
      probe: a gradient-shaped pytree (the params' structure); optimizers whose memory is a map
        (Adam's preconditioner, DMGD's MLP) answer it, value-less memories (momentum) ignore it.

    Returns:
      The reading of the one memory state found, or a tuple of readings if there are several.

    Raises:
      ValueError: if ``opt_state`` holds no nested_jax memory.

    Examples:
      >>> import jax.numpy as jnp
      >>> from nested_jax import optim
      >>> opt = optim.momentum_memory(0.1, decay=0.9)
      >>> params = {"w": jnp.zeros(2)}
      >>> state = opt.init(params)
      >>> for g in (1.0, 2.0):
      ...     _, state = opt.update({"w": jnp.full(2, g)}, state, params)
      >>> optim.read_memory(state)["w"].tolist()  # 0.9 * 1 + 2: the gradients it compressed
      [2.9000000953674316, 2.9000000953674316]
    """
    types = tuple(_READERS)
    found = [
        leaf
        for leaf in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, types))
        if isinstance(leaf, types)
    ]
    if not found:
        raise ValueError(
            "read_memory: no nested_jax optimizer memory in this state; pass the state returned "
            "by a nested_jax.optim transformation (or a chain containing one)."
        )
    readings = tuple(_READERS[type(s)](s, probe) for s in found)
    return readings[0] if len(readings) == 1 else readings


def cast_like(tree: PyTree, like: PyTree) -> PyTree:
    """Cast every leaf of ``tree`` to the dtype of the matching leaf of ``like``."""
    return jax.tree.map(lambda a, b: jnp.asarray(a).astype(jnp.result_type(b)), tree, like)


def f32(tree: PyTree) -> PyTree:
    """Float32 copy of a pytree (optimizer memories accumulate in float32)."""
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)


def zeros_f32(params: PyTree) -> PyTree:
    """An empty optimizer memory: float32 zeros in the params' structure."""
    return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)


def write_gradient_memory(
    m: PyTree,
    g: PyTree,
    retention,
    rate=1.0,
    *,
    objective: Objective = DotProduct(),
    beta: float = 0.5,
    eps: float = 1e-12,
) -> PyTree:
    """One write of a value-less gradient memory ``m`` (paper §2.2, §3.4; a pytree like ``g``).

    The memory takes one gradient step on its objective with retention ``alpha`` (``retention``)
    and learning rate ``eta`` (``rate``), as every memory in `nested_jax.memory` does:

    * ``DotProduct()`` (``min_m -<m, g>``): ``m <- alpha m + eta g``;
    * ``L2()`` (the delta rule, per leaf with ``g_hat = g / ||g||``):
      ``m <- alpha m - beta g_hat <g_hat, m> + eta g`` (delta momentum, decisions D18).

    Heavy-ball momentum is ``(alpha, eta) = (decay, 1)``; an exponential moving average
    ``(b, 1 - b)`` (Adam's first moment; its second moment is this memory written with ``g * g``);
    the paper's undecayed accumulators ``(1, b)``.
    """
    if isinstance(check_objective(objective), DotProduct):
        return jax.tree.map(lambda m, g: retention * m + rate * g, m, g)

    def delta(m, g):
        g_hat = g / (jnp.sqrt(jnp.sum(g * g)) + eps)
        return retention * m - beta * g_hat * jnp.sum(g_hat * m) + rate * g

    return jax.tree.map(delta, m, g)
