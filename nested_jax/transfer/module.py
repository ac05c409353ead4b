"""Neural Learning Modules and their nest (paper §2.3 "neural learning module", §2.4).

A :class:`LearningModule` is one pytree value holding a level's *parameters* (what slower levels
and the outer loop learn: here the module's initial fast weights, the knowledge it receives by
initialization), its *memory state* (fast weights ``w`` and, for momentum rules, ``s``) and, as
static fields, its *update rule* (a :mod:`nested_jax.memory.rules` rule applied by
:func:`~nested_jax.memory.rule_step`), inner objective, period and name. ``init`` / ``read`` /
``write`` / ``reset`` are pure; ``jax.tree`` sees only the arrays.

:func:`run_nest` composes modules into a nest and runs it with :func:`nested_jax.run_levels`
(each module one :class:`~nested_jax.Level` with its own period; no second runner). Each member
names how it receives knowledge from the member before it (its faster or slower neighbour):

* ``"residual"`` (direct, parametric: the paper's ``M0(.; M1(.))``): it writes what the
  preceding members' read-outs leave unexplained, ``v - prediction_so_far``;
* ``"value"``: it writes the value itself (no transfer through outputs; members are independent);
* ``"input"``: its key is the preceding member's read-out (a stacked, layer-like chain); it
  writes the value itself.

The nest's prediction for ``v_t`` is the sum of the read-outs (read before write). Knowledge by
initialization is :func:`nested_jax.transfer.initialization.meta_learn_init`; by generation,
:mod:`nested_jax.transfer.generation`; by backpropagation, :mod:`nested_jax.transfer.backprop`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nested_jax.levels import Level, run_levels
from nested_jax.memory.base import first_order_update
from nested_jax.memory.objectives import L2, Objective, check_objective
from nested_jax.memory.rules import GD, rule_step

__all__ = ["LearningModule", "ModuleState", "run_nest", "NestResult", "RECEIVES"]

RECEIVES = ("residual", "value", "input")


class ModuleState(NamedTuple):
    """Fast weights ``w: [d_out, d_in]`` and momentum ``s`` (``None`` without momentum)."""

    w: jax.Array
    s: jax.Array | None


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "state"],
    meta_fields=["name", "period", "rule", "objective", "receives"],
)
@dataclasses.dataclass(frozen=True)
class LearningModule:
    """A Neural Learning Module: parameters, memory state and update rule in one pytree.

    Attributes:
      params: ``{"init": w0}``, the initial fast weights (meta-learnable).
      state: :class:`ModuleState`, the memory now.
      name, period: the level's label and update period (``0`` = frozen).
      rule: ``GD()``, ``Momentum(beta)`` or ``DGD(beta)`` from :mod:`nested_jax.memory`.
      objective: ``L2()`` (``1/2 ||w x - v||^2``) or ``DotProduct()`` (``-<w x, v>``).
      receives: ``"residual"``, ``"value"`` or ``"input"`` (see the module docstring).
    """

    params: Any
    state: ModuleState
    name: str = "module"
    period: int = 1
    rule: Any = GD()
    objective: Objective = L2()
    receives: str = "residual"

    def __post_init__(self):
        check_objective(self.objective, f"{self.name}: objective")
        if self.receives not in RECEIVES:
            raise ValueError(f"{self.name}: receives must be one of {RECEIVES}.")

    @classmethod
    def init(cls, key, d_in: int, d_out: int, *, scale: float = 0.0, **spec) -> LearningModule:
        """A module with initial weights ``scale * N(0, 1/d_in)`` (``0``: zeros)."""
        w0 = scale * jax.random.normal(key, (d_out, d_in), jnp.float32) / d_in**0.5
        rule = spec.get("rule", GD())
        s = None if rule.beta is None else jnp.zeros_like(w0)
        return cls({"init": w0}, ModuleState(w0, s), **spec)

    def reset(self, params=None) -> LearningModule:
        """Memory back to the (given or own) initial weights: knowledge by initialization."""
        params = self.params if params is None else params
        w0 = params["init"]
        s = None if self.state.s is None else jnp.zeros_like(w0)
        return dataclasses.replace(self, params=params, state=ModuleState(w0, s))

    def read(self, x: jax.Array) -> jax.Array:
        return self.state.w @ x

    def step(self, state: ModuleState, x, v, eta, alpha=1.0, beta=None) -> ModuleState:
        """The memory after writing ``(x, v)`` with rate ``eta`` and retention ``alpha``."""
        eta = jnp.asarray(eta, jnp.float32)
        alpha = jnp.asarray(alpha, jnp.float32)
        y = state.w @ x
        u = self.objective.error(y, v)  # d objective / d y
        g = u[:, None] * x[None, :]
        beta = jnp.float32(getattr(self.rule, "beta", None) or 0.0) if beta is None else beta
        w, s = rule_step(self.rule, state.w, state.s, g, x, eta, alpha, beta)
        return ModuleState(w, s)

    def write(self, x, v, eta, alpha=1.0) -> LearningModule:
        return dataclasses.replace(self, state=self.step(self.state, x, v, eta, alpha))

    def level(self, eta, alpha=1.0, first_order: bool = False) -> Level:
        """This module as a :class:`~nested_jax.Level` of a nest: input ``(x, v, prediction, _)``,
        output ``(x', v, prediction + read, read)`` for the next member."""

        def update(state: ModuleState, inp):
            x, v, pred, prev_read = inp
            key = prev_read if self.receives == "input" else x
            y = state.w @ key
            target = v - pred if self.receives == "residual" else v
            new = self.step(state, key, target, eta, alpha)
            if first_order:
                new = first_order_update(new, state)
            return new, (x, v, pred + y, y)

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
    between firings, :func:`nested_jax.run_levels` semantics) with rate ``etas[i]``."""
    alphas = [1.0] * len(modules) if alphas is None else alphas
    if modules and modules[0].receives == "input":
        raise ValueError(f"{modules[0].name}: the first member has no neighbour to read from.")
    levels, states = [], []
    for m, e, a in zip(modules, etas, alphas, strict=True):
        levels.append(m.level(e, a, first_order))
        states.append(m.state)

    zeros = jnp.zeros_like(values)
    res = run_levels(tuple(levels), tuple(states), (keys, values, zeros, zeros), form=form)
    reads = jnp.stack([out[3] for out in res.outputs], axis=1)
    preds = res.outputs[-1][2]
    mods = tuple(dataclasses.replace(m, state=s) for m, s in zip(modules, res.states, strict=True))
    return NestResult(mods, preds, reads, res.fired)
