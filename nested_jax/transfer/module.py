"""Neural Learning Modules and their nest (paper §2.3 "neural learning module", §2.4).

A `LearningModule` is one level of a nest: an associative memory from
`nested_jax.memory` (``LinearMemory`` by default, ``MLPMemory`` for a deep member: any memory
with the one state protocol) held as one pytree value with the level's *parameters* (what slower
levels and the outer loop learn: the memory's params, i.e. its initial state, the knowledge it
receives by initialization) and its *memory state* (one sample, one head). The memory, period,
name and how the member receives knowledge are static fields; ``init`` / ``read`` / ``write`` /
``reset`` are pure and ``jax.tree`` sees only the arrays. The module writes and reads through the
memory's own ``write`` / ``read``, so its objective and update rule are the memory's (GD,
momentum, DGD; L2 or dot product), not a second implementation.

`run_nest` composes modules into a nest and runs it with `nested_jax.run_levels`
(each module one `Level` with its own period; no second runner). Each member
names how it receives knowledge from the member before it (its faster or slower neighbour):

* ``"residual"`` (direct, parametric: the paper's ``M0(.; M1(.))``): it writes what the
  preceding members' read-outs leave unexplained, ``v - prediction_so_far``;
* ``"value"``: it writes the value itself (no transfer through outputs; members are independent);
* ``"input"``: its key is the preceding member's read-out (a stacked, layer-like chain); it
  writes the value itself;
* ``"joint"`` (knowledge transfer by backpropagation, §2.4 item 3, the form the CMS uses): it
  writes what *every other* member's read leaves unexplained, ``v - (prediction - own read)``,
  so it steps along the gradient of the whole nest's prediction error (with the L2 objective),
  at its own frequency. Members after it count too: `run_nest` reads every member first
  (``run_levels``' ``peek``), then writes (decisions D87).

The nest's prediction for ``v_t`` is the sum of the read-outs (read before write). Knowledge by
initialization is `nested_jax.transfer.initialization.meta_learn_init`; by generation,
`nested_jax.transfer.generation`; by backpropagation, `nested_jax.transfer.backprop`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nested_jax.levels import Level, first_order_update, run_levels
from nested_jax.memory.base import AbstractMemory
from nested_jax.memory.linear import LinearMemory
from nested_jax.memory.objectives import L2

__all__ = ["LearningModule", "run_nest", "NestResult", "RECEIVES"]

RECEIVES = ("residual", "value", "input", "joint")


def _one(x: jax.Array) -> jax.Array:
    """A vector as one sample and one head: ``[d] -> [1, 1, d]``."""
    return jnp.asarray(x, jnp.float32)[None, None]


def _rate(r):
    """A scalar rate as the memories' ``[batch, heads] = [1, 1]``."""
    return None if r is None else jnp.reshape(jnp.asarray(r, jnp.float32), (1, 1))


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "state"],
    meta_fields=["name", "period", "memory", "receives"],
)
@dataclasses.dataclass(frozen=True)
class LearningModule:
    """A Neural Learning Module: an associative memory's parameters and state in one pytree.

    Attributes:
      params: the memory's params (its initial state per head: meta-learnable).
      state: the memory's state for one sample and one head (e.g. ``LinearState(w, s)`` with
        ``w: [1, 1, d_out, d_in]``).
      name, period: the level's label and update period (``0`` = frozen).
      memory: the associative memory, e.g. ``LinearMemory(L2(), DGD())`` (default
        ``LinearMemory(L2(), GD())``) or ``MLPMemory(hidden)`` for a deep member.
      receives: ``"residual"``, ``"value"``, ``"input"`` or ``"joint"`` (see the module
        docstring).
    """

    params: Any
    state: Any
    name: str = "module"
    period: int = 1
    memory: AbstractMemory = LinearMemory(L2())
    receives: str = "residual"

    def __post_init__(self):
        if not isinstance(self.memory, AbstractMemory):
            raise TypeError(
                f"{self.name}: memory must be a nested_jax.memory memory (LinearMemory, "
                f"MLPMemory, ...), got {type(self.memory).__name__}."
            )
        if self.receives not in RECEIVES:
            raise ValueError(f"{self.name}: receives must be one of {RECEIVES}.")

    @classmethod
    def init(
        cls,
        key,
        d_in: int,
        d_out: int,
        *,
        scale: float = 0.0,
        memory: AbstractMemory | None = None,
        rule=None,
        objective=None,
        **spec,
    ) -> LearningModule:
        """A module over ``memory`` (keys ``[d_in]``, values ``[d_out]``) at its initial state.

        ``rule=`` / ``objective=`` are shorthand for ``memory=LinearMemory(objective, rule)``
        (defaults ``L2()``, ``GD()``). A linear memory starts at ``scale * N(0, 1 / d_in)``
        (``0``: zeros); another memory at its own ``init_params`` (``scale``, if given, as its
        init scale).
        """
        if memory is None:
            kw = {k: v for k, v in (("objective", objective), ("rule", rule)) if v is not None}
            memory = LinearMemory(**kw)
        elif rule is not None or objective is not None:
            raise ValueError("pass either memory= or rule= / objective= (a LinearMemory's).")
        if isinstance(memory, LinearMemory):
            init_kw = {"scale": scale / d_in**0.5}
        else:
            init_kw = {"scale": scale} if scale else {}
        params = memory.init_params(key, heads=1, d_k=d_in, d_v=d_out, **init_kw)
        return cls(params, memory.init_state(params, 1), memory=memory, **spec)

    def reset(self, params=None) -> LearningModule:
        """Memory back to the (given or own) initial state: knowledge by initialization."""
        params = self.params if params is None else params
        return dataclasses.replace(self, params=params, state=self.memory.init_state(params, 1))

    def read_state(self, state, x: jax.Array) -> jax.Array:
        """``state``'s read-out for the key ``x: [d_in] -> [d_out]``."""
        return self.memory.read(state, _one(x))[0, 0]

    def read(self, x: jax.Array) -> jax.Array:
        return self.read_state(self.state, x)

    def step(self, state, x, v, eta, alpha=1.0, beta=None):
        """The memory state after writing ``(x, v)`` with rate ``eta``, retention ``alpha`` and
        momentum ``beta`` (``None``: the rule's)."""
        return self.memory.write(state, _one(x), _one(v), _rate(eta), _rate(alpha), _rate(beta))

    def write(self, x, v, eta, alpha=1.0) -> LearningModule:
        return dataclasses.replace(self, state=self.step(self.state, x, v, eta, alpha))

    def key_for(self, x, prev_read):
        """The key this member reads and writes: the preceding read-out for ``"input"``."""
        return prev_read if self.receives == "input" else x

    def level(self, eta, alpha=1.0, first_order: bool = False) -> Level:
        """This module as a `Level` of a nest: input ``(x, v, prediction, _,
        total)``, output ``(x, v, prediction + read, read, total)`` for the next member, where
        ``total`` is the sum of every member's read at this step (used by ``"joint"``)."""

        def update(state, inp):
            x, v, pred, prev_read, total = inp
            key = self.key_for(x, prev_read)
            y = self.read_state(state, key)
            if self.receives == "residual":
                target = v - pred
            elif self.receives == "joint":
                target = v - (total - y)
            else:
                target = v
            new = self.step(state, key, target, eta, alpha)
            if first_order:
                new = first_order_update(new, state)
            return new, (x, v, pred + y, y, total)

        return Level(self.name, self.period, update)


class NestResult(NamedTuple):
    modules: tuple  # the members with their final memory state
    predictions: jax.Array  # [T, d_v]: the nest's prediction of each v_t, before writing it
    reads: jax.Array  # [T, n_members, d_v]: each member's read-out
    fired: jax.Array  # [T, n_members]


def run_nest(
    modules: Sequence[LearningModule],
    keys: jax.Array,
    values: jax.Array,
    etas: Sequence[float],
    *,
    alphas: Sequence[float] | None = None,
    first_order: bool = False,
    form: str = "masked",
) -> NestResult:
    """Run a nest of modules over a stream ``keys: [T, d_k]``, ``values: [T, d_v]``.

    Member ``i`` updates every ``modules[i].period`` steps (accumulating its per-step increments
    between firings, `nested_jax.run_levels` semantics) with rate ``etas[i]``. When a
    member receives ``"joint"``, every member is read first at each step (its pre-firing state,
    the same read it emits) and the joint members write against the total."""
    alphas = [1.0] * len(modules) if alphas is None else alphas
    if modules and modules[0].receives == "input":
        raise ValueError(f"{modules[0].name}: the first member has no neighbour to read from.")
    levels, states = [], []
    for m, e, a in zip(modules, etas, alphas, strict=True):
        levels.append(m.level(e, a, first_order))
        states.append(m.state)

    peek = None
    if any(m.receives == "joint" for m in modules):

        def peek(sts, inp):  # the read phase: every member's read before any writes
            x, v, pred, prev, _ = inp
            total = pred
            for m, st in zip(modules, sts, strict=True):
                prev = m.read_state(st, m.key_for(x, prev))
                total = total + prev
            return x, v, pred, jnp.zeros_like(prev), total

    zeros = jnp.zeros_like(values)
    res = run_levels(
        tuple(levels), tuple(states), (keys, values, zeros, zeros, zeros), form=form, peek=peek
    )
    reads = jnp.stack([out[3] for out in res.outputs], axis=1)
    preds = res.outputs[-1][2]
    mods = tuple(dataclasses.replace(m, state=s) for m, s in zip(modules, res.states, strict=True))
    return NestResult(mods, preds, reads, res.fired)
