"""Shared pieces of the optimizers-as-memories (paper §3; DESIGN §2.4).

* :func:`read_memory` queries the memory held in any of our optimizer states with a
  gradient-shaped probe (for notebooks: "what does this optimizer remember?").
* :func:`register_reader` is how each optimizer module declares how its state is read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = ["as_rows", "read_memory", "register_reader"]

_READERS: dict[type, Callable[[Any, PyTree], Any]] = {}


def as_rows(x: jax.Array) -> jax.Array:
    """A parameter or gradient leaf as rows ``[n, d]`` (``d`` its last axis; a scalar is one row
    of one): the shape in which the optimizers' per-row memories see it."""
    x = jnp.asarray(x)
    return x.reshape(1, 1) if x.ndim == 0 else x.reshape(-1, x.shape[-1])


def register_reader(state_type: type, reader: Callable[[Any, PyTree], Any]) -> None:
    """Declare how a state type answers :func:`read_memory`."""
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
      ValueError if ``opt_state`` holds no nested_jax memory.
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
