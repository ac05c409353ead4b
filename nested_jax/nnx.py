"""Flax NNX modules over nested_jax's functional blocks (a functional core, thin wrappers; decisions D68).

nested_jax's memories and blocks are pure functions of ``(params, state, inputs)``. These thin
``flax.nnx.Module`` wrappers hold the params as one `flax.nnx.Param` (a flat dict keyed by
each leaf's path; ``module.get_params()`` gives the functional pytree) and the fast state
(memory weights, CMS levels, attention cache) as one `MemoryState` variable, so a Hope block
drops into an existing Flax model and trains with ``nnx.Optimizer``; they add no computation (each
call is the functional form, tested equal).

* `Block` wraps any block of `nested_jax.models` (``HopeBlock``, ``SelfModifyingBlock``,
  ``TitansBlock``, ``TransformerBlock``, ``ContinuumMemory``...); `hope_block`,
  `self_modifying_block` and `continuum_memory` build the common ones from a
  `ModelConfig`.
* `MemoryLayer` wraps an associative memory of `nested_jax.memory` (``q, k, v`` in,
  reads out).

Each call starts from the initial state built from the params (so the outer gradient reaches the
meta-learned initial memory, as in the functional training path) unless ``carry=True``, which
continues from the state the previous call left (learning after deployment; for memories, whole
chunks per call keep the chunk boundaries of one long call). The state after every call is in
``module.memory_state``; ``module.reset()`` puts it back at the initial state.

A CMS inside a foreign model learns in context with the label-free ``cms.signal="local"``; the
``"teach"`` and ``"ntp"`` signals come from the language model's next-token loss
(`LanguageModel`), so outside it those levels apply their weights as they are.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from nested_jax.memory.base import AbstractMemory, Rates
from nested_jax.models.cms import ContinuumMemory
from nested_jax.models.config import ModelConfig
from nested_jax.models.hope import HopeBlock
from nested_jax.models.layers import Context
from nested_jax.models.self_modifying import SelfModifyingBlock

__all__ = [
    "Block",
    "MemoryLayer",
    "MemoryState",
    "continuum_memory",
    "hope_block",
    "self_modifying_block",
]


class MemoryState(nnx.Variable):
    """The fast state of a nested_jax block or memory (what it learned in context): not a
    parameter of the outer optimizer, and filtered apart from `flax.nnx.Param`."""


def _check_batch(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")


class _Flat:
    """A params pytree held by an ``nnx.Param`` as a flat dict keyed by each leaf's path
    (``"['mixer']['gate'].w1"``): NNX's gradient states do not keep NamedTuple nodes, so the
    structure stays a static attribute of the module and the Param holds only arrays."""

    def __init__(self, tree):
        paths, self.treedef = jax.tree_util.tree_flatten_with_path(tree)
        self.keys = tuple(jax.tree_util.keystr(p) for p, _ in paths)

    def flat(self, tree) -> dict:
        return dict(zip(self.keys, jax.tree.leaves(tree), strict=True))

    def tree(self, flat: dict):
        return jax.tree.unflatten(self.treedef, [flat[k] for k in self.keys])


def _start(module, init_state, params, batch: int, carry: bool):
    """The state a call starts from: the stored one (``carry``) or the initial one."""
    if not carry:
        return init_state(params, batch)
    state = module.memory_state.get_value()
    stored = jax.tree.leaves(state)[0].shape[0]
    if stored != batch:
        raise ValueError(
            f"carry=True continues the stored state of batch {stored}, but the input has batch "
            f"{batch}; call with that batch, or reset() / a carry=False call first."
        )
    return state


class _Functional(nnx.Module):
    """What both wrappers share: the params as a flat ``nnx.Param`` and the fast state."""

    def _hold(self, params, state, batch_size: int) -> None:
        self.batch_size = batch_size
        self._layout = _Flat(params)
        self.params = nnx.Param(self._layout.flat(params))
        self.memory_state = MemoryState(state)

    def _init_state(self, params, batch_size: int):
        raise NotImplementedError

    def get_params(self):
        """The functional params (the pytree the wrapped ``init`` / ``init_params`` returns)."""
        return self.as_params(self.params.get_value())

    def as_params(self, flat):
        """A value laid out as this module's ``params`` (e.g. its gradient from ``nnx.grad``) as
        the functional params pytree."""
        return self._layout.tree(flat)

    def reset(self) -> None:
        """The fast state back at its initial value (from the current params)."""
        self.memory_state.set_value(self._init_state(self.get_params(), self.batch_size))


class Block(_Functional):
    """A nested_jax block (``init`` / ``init_state`` / ``__call__(params, state, x)``) as an
    NNX module: ``x: [batch, seq, d_model] -> [batch, seq, d_model]``.

    Args:
      block: the functional block, e.g. ``nested_jax.models.HopeBlock(config)``.
      batch_size: the batch of the initial stored state (before the first call; after it, the
        stored state has the last call's batch).
      rngs: ``nnx.Rngs``; the params are drawn from ``rngs.params()``.
    """

    def __init__(self, block, *, batch_size: int, rngs: nnx.Rngs):
        _check_batch(batch_size)
        self.block = block
        params = block.init(rngs.params())
        self._hold(params, block.init_state(params, batch_size), batch_size)

    def _init_state(self, params, batch_size: int):
        return self.block.init_state(params, batch_size)

    def __call__(self, x: jax.Array, *, carry: bool = False, parallel: bool = True) -> jax.Array:
        params = self.get_params()
        state = _start(self, self._init_state, params, x.shape[0], carry)
        y, state = self.block(params, state, x, Context(parallel=parallel))
        self.memory_state.set_value(state)
        return y


def hope_block(config: ModelConfig, *, batch_size: int, rngs: nnx.Rngs) -> Block:
    """A Hope (``kind="hope"``) or Hope-Attention (``"hope_attention"``) layer as an NNX module."""
    if not config.has_cms:
        raise ValueError(f"hope_block needs kind 'hope' or 'hope_attention', got {config.kind!r}.")
    return Block(HopeBlock(config), batch_size=batch_size, rngs=rngs)


def self_modifying_block(config: ModelConfig, *, batch_size: int, rngs: nnx.Rngs) -> Block:
    """A self-modifying Titans layer + SwiGLU MLP (``kind="selfmod"``) as an NNX module."""
    return Block(SelfModifyingBlock(config), batch_size=batch_size, rngs=rngs)


def continuum_memory(config: ModelConfig, *, batch_size: int, rngs: nnx.Rngs) -> Block:
    """A Continuum Memory System (``config.cms``; its levels are pre-norm residual SwiGLUs) as
    an NNX module; it learns in context with ``cms.signal="local"`` (see the module docstring)."""
    return Block(ContinuumMemory(config), batch_size=batch_size, rngs=rngs)


class MemoryLayer(_Functional):
    """An associative memory of `nested_jax.memory` as an NNX module.

    ``__call__(q, k, v, eta=None, alpha=None, beta=None)`` with ``q, k: [batch, seq, heads,
    d_k]``, ``v: [batch, seq, heads, d_v]`` and the rates as in
    `write_read` returns the reads ``[batch, seq,
    heads, d_v]`` (``write_read`` with this layer's ``chunk_size`` and ``read``).

    Args:
      memory: e.g. ``LinearMemory(L2(), DGD())`` or ``MLPMemory(hidden)``.
      heads, d_k, d_v: the memory's shapes; ``init_kw``: extra ``init_params`` arguments.
      chunk_size: tokens per chunk of the parallel form; read: ``"before"`` / ``"after"`` / None.
      batch_size, rngs: as for `Block`.
    """

    def __init__(
        self,
        memory: AbstractMemory,
        *,
        heads: int,
        d_k: int,
        d_v: int,
        chunk_size: int,
        batch_size: int,
        rngs: nnx.Rngs,
        read: str | None = None,
        **init_kw: Any,
    ):
        if not isinstance(memory, AbstractMemory):
            raise TypeError(
                f"memory must be a nested_jax.memory memory, got {type(memory).__name__}."
            )
        _check_batch(batch_size)
        memory.check_options(chunk_size=chunk_size, read=read)  # now, not at the first call
        self.memory = memory
        self.chunk_size = chunk_size
        self.read = read
        params = memory.init_params(rngs.params(), heads=heads, d_k=d_k, d_v=d_v, **init_kw)
        self._hold(params, memory.init_state(params, batch_size), batch_size)

    def _init_state(self, params, batch_size: int):
        return self.memory.init_state(params, batch_size)

    def __call__(self, q, k, v, eta=None, alpha=None, beta=None, *, carry: bool = False):
        params = self.get_params()
        state = _start(self, self._init_state, params, q.shape[0], carry)
        state, y = self.memory.write_read(
            state,
            q,
            k,
            v,
            rates=Rates(eta, alpha, beta),
            chunk_size=self.chunk_size,
            read=self.read,
        )
        self.memory_state.set_value(state)
        return y
