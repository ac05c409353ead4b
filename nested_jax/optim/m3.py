"""M3 — Multi-scale Momentum Muon (paper §3.8, arXiv Algorithm 1).

An independent (head-wise) CMS applied to the momentum: a fast momentum ``M1`` written every step
and a slow momentum ``M2`` written every ``f`` steps with the sum of that chunk's gradients. Both
are orthogonalised by Newton-Schulz, mixed with weight ``alpha`` and divided element-wise by an
Adam-style second moment:

    M1 <- M1 + b1 g            (literal)   |  M1 <- b1 M1 + g               (ema)
    V  <- V + b2 g^2           (literal)   |  V  <- b2 V + (1 - b2) g^2     (ema)
    buf <- buf + g
    direction = (NS(M1) + alpha * O2) / (sqrt(V) + eps)
    every f-th step:  M2 <- M2 + b3 buf (literal) | M2 <- b3 M2 + buf (ema);  O2 <- NS(M2); buf <- 0

The slow term lags one chunk (it uses the previous chunk's gradients), as in Algorithm 1.
``scale_by_m3`` acts on matrices, or stacks of them (``[..., m, n]``: Newton-Schulz on each
``[m, n]``, e.g. a model's layers stacked on a leading axis); `m3` sends non-matrix leaves
(biases, norms, and embeddings if asked) to AdamW, as Muon setups do, and is told which leading
axes stack matrices with ``stacked=`` (``docs/decisions.md`` D76).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from nested_jax.levels import fire
from nested_jax.optim.base import (
    cast_like,
    f32,
    register_reader,
    write_gradient_memory,
    zeros_f32,
)
from nested_jax.optim.newton_schulz import newton_schulz, ns_coefficients

__all__ = ["M3Reading", "M3State", "m3", "scale_by_m3"]


class M3State(NamedTuple):
    """``m1`` fast momentum, ``m2`` slow momentum, ``v`` second moment, ``buf`` the current
    chunk's gradient sum, ``o2`` the orthogonalised slow momentum (all float32), ``count``."""

    count: chex.Array
    m1: optax.Updates
    m2: optax.Updates
    v: optax.Updates
    buf: optax.Updates
    o2: optax.Updates


class M3Reading(NamedTuple):
    """Both memories of M3 (`read_memory`): raw and orthogonalised."""

    fast: optax.Updates
    slow: optax.Updates
    slow_orthogonal: optax.Updates


def scale_by_m3(
    b1: float = 0.95,
    b2: float = 0.999,
    b3: float = 0.9,
    alpha: float = 1.0,
    eps: float = 1e-8,
    *,
    slow_period: int = 100,
    ns_steps: int = 5,
    ns_coeffs="quintic",
    variant: Literal["literal", "ema"] = "ema",
) -> optax.GradientTransformationExtraArgs:
    """M3's direction for matrix leaves (Algorithm 1). Every leaf must be a matrix or a stack of
    matrices ``[..., m, n]`` (Newton-Schulz orthogonalises each ``[m, n]`` on its own; the rest
    of the algorithm is elementwise).

    Args:
      b1, b2, b3: fast momentum, second moment and slow momentum factors.
      alpha: weight of the slow (orthogonalised) momentum.
      eps: added to ``sqrt(V)``.
      slow_period: ``f``, steps per slow update (with ``optax.inject_hyperparams``, pass
        ``static_args=("ns_steps",)``: the number of Newton-Schulz steps must be static).
      ns_steps, ns_coeffs: Newton-Schulz steps and coefficients (``"quintic"`` or ``"cubic"``).
      variant: ``"literal"`` (Algorithm 1's undecayed sums) or ``"ema"`` (decayed, Muon-style).
    """
    if variant not in ("literal", "ema"):
        raise ValueError(f"variant must be 'literal' or 'ema', got {variant!r}.")
    # slow_period may arrive as an array (e.g. injected by optax.inject_hyperparams); only a
    # Python value can be checked here.
    if isinstance(slow_period, bool) or (
        isinstance(slow_period, int | float)
        and (slow_period < 1 or slow_period != int(slow_period))
    ):
        raise ValueError(f"slow_period must be a positive int, got {slow_period!r}.")
    ns_coefficients(ns_coeffs)

    def ns(x):  # each matrix of a stack [..., m, n] on its own
        f = lambda m: newton_schulz(m, ns_steps, ns_coeffs)
        for _ in range(x.ndim - 2):
            f = jax.vmap(f)
        return f(x)

    def init_fn(params):
        for path, p in jax.tree_util.tree_leaves_with_path(params):
            if jnp.ndim(p) < 2:
                raise ValueError(
                    f"scale_by_m3 acts on matrices (or stacks of them), but "
                    f"{jax.tree_util.keystr(path)} has shape {jnp.shape(p)}; use "
                    "nested_jax.optim.m3, which sends non-matrix leaves to AdamW."
                )
        z = lambda: zeros_f32(params)
        return M3State(jnp.zeros([], jnp.int32), z(), z(), z(), z(), z())

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        g = f32(updates)
        g2 = jax.tree.map(lambda g: g * g, g)
        literal = variant == "literal"  # every moment is the one gradient memory (optim.base)
        m1 = write_gradient_memory(state.m1, g, *((1.0, b1) if literal else (b1, 1.0)))
        v = write_gradient_memory(state.v, g2, *((1.0, b2) if literal else (b2, 1 - b2)))
        buf = jax.tree.map(jnp.add, state.buf, g)
        direction = jax.tree.map(
            lambda m, o2, v: (ns(m) + alpha * o2) / (jnp.sqrt(v) + eps), m1, state.o2, v
        )
        count = optax.safe_increment(state.count)

        def commit(slow, pending):  # the slow level's update from its accumulated gradients
            m2 = write_gradient_memory(slow[0], pending, *((1.0, b3) if literal else (b3, 1.0)))
            return m2, jax.tree.map(ns, m2)

        # the slow memory is a level of period slow_period (decisions D1, D63): lazy, so the
        # Newton-Schulz iteration of its output runs only on the steps where it fires
        (m2, o2), buf = fire((state.m2, state.o2), buf, count % slow_period == 0, commit, lazy=True)
        return cast_like(direction, updates), M3State(count, m1, m2, v, buf, o2)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _default_labels(embeddings: Callable[[Any], Any] | None, stacked=None):
    def labels(params):
        lead = jax.tree.map(lambda _: 0, params) if stacked is None else stacked(params)
        lab = jax.tree.map(lambda p, n: "m3" if jnp.ndim(p) - n == 2 else "adamw", params, lead)
        if embeddings is not None:
            mask = embeddings(params)
            lab = jax.tree.map(lambda lb, e: "adamw" if e else lb, lab, mask)
        return lab

    return labels


def m3(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.95,
    b2: float = 0.999,
    b3: float = 0.9,
    alpha: float = 1.0,
    eps: float = 1e-8,
    *,
    slow_period: int = 100,
    ns_steps: int = 5,
    ns_coeffs="quintic",
    variant: Literal["literal", "ema"] = "ema",
    weight_decay: float = 0.0,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_weight_decay: float = 0.0,
    embeddings: Callable[[Any], Any] | None = None,
    stacked: Callable[[Any], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """M3 on the matrices, AdamW on everything else.

    A leaf is a matrix when it has two axes besides its ``stacked`` leading ones: a language
    model's per-layer weights are stacked ``[n_layers, m, n]`` (one matrix per layer, each
    orthogonalised on its own) and its per-layer norms ``[n_layers, d]`` are not matrices.

    Args:
      learning_rate: M3's learning rate.
      b1, b2, b3, alpha, eps, slow_period, ns_steps, ns_coeffs, variant: see `scale_by_m3`.
      weight_decay: decoupled weight decay on the M3 leaves.
      adam_learning_rate: AdamW's learning rate (default: ``learning_rate``).
      adam_b1, adam_b2, adam_weight_decay: AdamW's settings.
      embeddings: optional ``params -> bool pytree`` marking 2-D leaves (embeddings, output
        heads) that should also go to AdamW.
      stacked: optional ``params -> int pytree``: how many leading axes of each leaf stack
        matrices (default 0 everywhere: only 2-D leaves are matrices). For a
        `LanguageModel`: 1 for the leaves under ``"layers"``.
    """
    adam_lr = learning_rate if adam_learning_rate is None else adam_learning_rate
    matrix = optax.chain(
        scale_by_m3(
            b1,
            b2,
            b3,
            alpha,
            eps,
            slow_period=slow_period,
            ns_steps=ns_steps,
            ns_coeffs=ns_coeffs,
            variant=variant,
        ),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )
    other = optax.adamw(adam_lr, b1=adam_b1, b2=adam_b2, weight_decay=adam_weight_decay)
    return optax.partition({"m3": matrix, "adamw": other}, _default_labels(embeddings, stacked))


def _read(state: M3State, probe) -> M3Reading:
    del probe
    return M3Reading(state.m1, state.m2, state.o2)


register_reader(M3State, _read)
