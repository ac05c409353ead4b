"""Deep Momentum Gradient Descent (DMGD; paper §3.4 "more expressive memory"; decisions D25).

The momentum is a deep memory: for every parameter leaf, an `MLPMemory`
``m_psi: R^d -> R^d`` applied row-wise to the gradient (``d`` = the leaf's last axis; vectors are
one row). Per outer step:

1. inner level — one step of the memory's rule on the unit-normalised rows ``u_i`` of the gradient:
   ``psi <- decay * psi - inner_lr * grad_psi mean_i L(m_psi(u_i), u_i)``
   (``L`` is `L2` by default: the memory learns to reproduce the gradient
   rows it sees; `DotProduct` gives the paper's literal ``<m(u), 1>``-type
   objective, which is unbounded below — use it only with decay);
2. outer level — the direction is ``||g_i|| m_psi(u_i)`` row by row, and the alias applies
   ``-lr`` times it. Normalising the rows keeps the inner regression's scale fixed whatever the
   gradient's magnitude (as Hope normalises its keys); without it a steep loss (Rosenbrock)
   makes the inner step diverge (``docs/decisions.md``).

The memory's initial parameters are an *input* (``init_memory``) so they can be meta-learned by
differentiating through unrolled optimizer steps (tested on a family of quadratics).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from nested_jax.memory import GD, L2, MLPMemory, MLPParams, Objective, check_objective, rule_step
from nested_jax.optim.base import as_rows, cast_like, f32, register_reader

__all__ = ["DMGDState", "dmgd", "dmgd_memory", "init_dmgd_memory", "scale_by_dmgd"]


class DMGDState(NamedTuple):
    """``memory``: a tuple of `MLPParams`, one per parameter leaf (in
    ``jax.tree.leaves`` order); ``count``."""

    count: chex.Array
    memory: Any


def dmgd_memory(hidden: int, objective: Objective = L2()) -> MLPMemory:
    """The memory DMGD uses for a leaf with rows of width ``d`` (``hidden`` units)."""
    return MLPMemory(hidden, objective=check_objective(objective), rule=GD())


def init_dmgd_memory(
    key, params, *, hidden_factor: float = 2.0, scale: float = 1.0, hidden: int | None = None
) -> tuple:
    """Initial memory for ``params``: a tuple with one ``MLPParams`` (one head squeezed out) per
    leaf, in ``jax.tree.leaves(params)`` order (so any container type works). Each leaf's memory
    has ``hidden_factor`` times its row width hidden units, or ``hidden`` units when given (a
    low-rank memory: ``m(z) = z + W1 act(W2 z)`` with ``W1 W2`` of rank ``<= hidden``; its step
    costs ``O(rows * d * hidden)`` instead of ``O(rows * d^2)``)."""
    _check_hidden(hidden)
    leaves = jax.tree.leaves(params)
    keys = jax.random.split(key, max(1, len(leaves)))
    out = []
    for k, leaf in zip(keys, leaves, strict=False):
        d = as_rows(leaf).shape[-1]
        hid = hidden if hidden is not None else max(1, int(round(hidden_factor * d)))
        p = dmgd_memory(hid).init_params(k, heads=1, d_k=d, d_v=d, scale=scale)
        out.append(MLPParams(p.w1[0], p.w2[0]))
    return tuple(out)


def _check_hidden(hidden):
    if hidden is not None and (
        isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1
    ):
        raise ValueError(
            f"hidden must be None or a positive int (units per memory), got {hidden!r}."
        )


def _normalised_rows(g, eps):
    """Rows of ``g`` scaled to unit norm, and their norms (the memory sees scale-free inputs)."""
    u = as_rows(g)
    norm = jnp.sqrt(jnp.sum(u * u, axis=-1, keepdims=True)) + eps
    return u / norm, norm


def scale_by_dmgd(
    init_memory: Any | None = None,
    *,
    inner_lr: float = 0.01,
    decay: float = 1.0,
    objective: Objective = L2(),
    hidden_factor: float = 2.0,
    seed: int = 0,
    eps: float = 1e-12,
    hidden: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """DMGD's direction ``m_psi(g)`` after one inner step (see module docstring).

    Args:
      init_memory: the memory's initial parameters, as from `init_dmgd_memory` (a tuple of
        ``MLPParams``, one per parameter leaf in ``jax.tree.leaves`` order). May be traced: build
        the transformation inside the meta-loss to meta-learn it. ``None``: built at ``init``
        from the params with ``init_dmgd_memory(jax.random.key(seed), params, hidden_factor)``.
      inner_lr: the memory's learning rate ``eta``.
      decay: the memory's weight decay ``alpha`` (1 = none).
      objective: inner loss, ``L2()`` (default) or ``DotProduct()``.
      hidden_factor, seed: hidden width (times the row width) and seed when ``init_memory`` is
        ``None`` (static: pass them in ``static_args`` under ``optax.inject_hyperparams``).
      hidden: a fixed hidden width for every leaf instead of ``hidden_factor`` (the low-rank
        memory of `init_dmgd_memory`; e.g. 8: a step within a few times AdamW's).
    """
    dmgd_memory(1, objective)  # validates the objective before anything is traced
    _check_hidden(hidden)

    def init_fn(params):
        n = len(jax.tree.leaves(params))
        if init_memory is None:
            mem = init_dmgd_memory(
                jax.random.key(seed), params, hidden_factor=hidden_factor, hidden=hidden
            )
            return DMGDState(jnp.zeros([], jnp.int32), mem)
        mem = tuple(init_memory)
        if len(mem) != n or not all(isinstance(m, MLPParams) for m in mem):
            raise ValueError(
                f"init_memory must be a tuple of {n} MLPParams, one per parameter leaf; build it "
                "with nested_jax.optim.init_dmgd_memory(key, params)."
            )
        return DMGDState(jnp.zeros([], jnp.int32), f32(mem))

    def inner_step(mem: MLPParams, g):
        memory = dmgd_memory(mem.w2.shape[-2], objective)
        u, norm = _normalised_rows(g, eps)

        def loss(p):
            return jnp.mean(memory.objective.loss(memory.apply(p, u), u))

        grads = jax.grad(loss)(mem)
        one = jnp.ones([], jnp.float32)
        w1, _ = rule_step(GD(), mem.w1, None, grads.w1, None, inner_lr * one, decay * one, one)
        w2, _ = rule_step(GD(), mem.w2, None, grads.w2, None, inner_lr * one, decay * one, one)
        new = MLPParams(w1, w2)
        return new, (norm * memory.apply(new, u)).reshape(jnp.shape(g))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        g, treedef = jax.tree.flatten(f32(updates))
        pairs = [inner_step(m, x) for m, x in zip(state.memory, g, strict=True)]
        memory = tuple(p[0] for p in pairs)
        direction = jax.tree.unflatten(treedef, [p[1] for p in pairs])
        count = optax.safe_increment(state.count)
        return cast_like(direction, updates), DMGDState(count, memory)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dmgd(
    learning_rate: optax.ScalarOrSchedule,
    init_memory: Any | None = None,
    *,
    inner_lr: float = 0.01,
    decay: float = 1.0,
    objective: Objective = L2(),
    hidden_factor: float = 2.0,
    seed: int = 0,
    hidden: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """DMGD optimizer: ``params <- params - lr * m_psi(g)`` (``hidden``: see
    `scale_by_dmgd`)."""
    return optax.chain(
        scale_by_dmgd(
            init_memory,
            inner_lr=inner_lr,
            decay=decay,
            objective=objective,
            hidden_factor=hidden_factor,
            seed=seed,
            hidden=hidden,
        ),
        optax.scale_by_learning_rate(learning_rate),
    )


def _read(state: DMGDState, probe):
    """The memory's answer to the probe (row-wise, as in the update), or the memory itself."""
    if probe is None:
        return state.memory
    leaves, treedef = jax.tree.flatten(f32(probe))
    out = []
    for mem, p in zip(state.memory, leaves, strict=True):
        u, norm = _normalised_rows(p, 1e-12)
        out.append((norm * dmgd_memory(mem.w2.shape[-2]).apply(mem, u)).reshape(jnp.shape(p)))
    return jax.tree.unflatten(treedef, out)


register_reader(DMGDState, _read)
