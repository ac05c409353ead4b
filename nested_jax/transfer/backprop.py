"""Backpropagation as a self-referential associative memory (paper §3.1, §3.5, Definition 5).

A linear layer ``y = W x`` trained by gradient descent is a memory that maps its input ``x`` to its
*local surprise signal* (LSS) ``delta = dL/dy``: ``W <- W - eta delta x^T`` is the one proximal
step of the dot-product objective ``<W x, delta>``. This module exposes those signals and the
update family built on them:

* `surprise_signals`: ``delta_l = dL/dy_l`` for every layer output of a network written as
  a list of layers (one extra ``jax.vjp``: a zero probe is added to each output and the loss is
  differentiated with respect to the probes), together with every layer's input ``x_l``. Then
  ``dL/dW_l = delta_l x_l^T`` (summed over the batch), which the tests check against ``jax.grad``.
* `ggd_step`, Generalized Gradient Descent: ``W_{t+1} = argmin_W l(W x_t, u_t) +
  ||W - alpha W_t||^2 / (2 eta)`` with a *self-generated* target ``u_t = f_{W_t}(x_t)`` (by
  default ``u = -dL/dy``, the negated LSS). The minimiser differs from ``alpha W_t`` by a rank-one
  term ``a x^T``; ``a`` solves a ``d_out``-dimensional proximal problem, solved by damped Newton
  steps (exact in one step for quadratic and linear objectives). With the dot-product objective
  ``l = -<y, u>`` it is plain GD; with ``l = 1/2 ||y - u||^2`` it is Delta Gradient Descent's
  closed form (`nested_jax.memory.rule_step` with `DGD`); the tests
  hold both equal without either being called here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["surprise_signals", "ggd_step", "dot_objective", "l2_objective", "lss_target"]

Layer = Callable[[Any, jax.Array], jax.Array]


def surprise_signals(layers: Sequence[Layer], params: Sequence[Any], x: jax.Array, loss_fn):
    """Run ``x`` through ``layers`` (``y_l = layers[l](params[l], x_l)``, ``x_{l+1} = y_l``) and
    return ``(loss, inputs, deltas)``: every layer's input ``x_l`` and its local surprise signal
    ``delta_l = d loss / d y_l`` (same shape as ``y_l``). ``loss_fn(y_last) -> scalar``."""

    def forward(probes):
        h, inputs = x, []
        for layer, p, z in zip(layers, params, probes, strict=True):
            inputs.append(h)
            h = layer(p, h) + z
        return loss_fn(h), inputs

    shapes, h = [], x
    for layer, p in zip(layers, params, strict=True):
        h = jax.eval_shape(layer, p, h)
        shapes.append(h)
    zeros = [jnp.zeros(s.shape, s.dtype) for s in shapes]
    loss, pullback, inputs = jax.vjp(forward, zeros, has_aux=True)
    (deltas,) = pullback(jnp.ones_like(loss))
    return loss, inputs, deltas


def dot_objective(y: jax.Array, u: jax.Array) -> jax.Array:
    """``-<y, u>``: the Hebbian objective whose proximal step is GD."""
    return -jnp.sum(y * u)


def l2_objective(y: jax.Array, u: jax.Array) -> jax.Array:
    """``1/2 ||y - u||^2``: the regression objective whose proximal step is DGD."""
    return 0.5 * jnp.sum((y - u) ** 2)


def lss_target(loss_of_output: Callable[[jax.Array], jax.Array]):
    """The self-generated target ``u = f_W(x) = -dL/dy`` at ``y = W x`` (the negated LSS)."""

    def target(w, x):
        return -jax.grad(loss_of_output)(w @ x)

    return target


def ggd_step(
    w: jax.Array,
    x: jax.Array,
    target,
    eta,
    *,
    objective: Callable[[jax.Array, jax.Array], jax.Array] = l2_objective,
    alpha=1.0,
    newton_steps: int = 1,
) -> jax.Array:
    """One Generalized Gradient Descent step of ``w: [d_out, d_in]`` on input ``x: [d_in]``.

    ``target``: the value ``u`` (an array) or a self-generating function ``(w, x) -> u`` evaluated
    at the current ``w``. ``objective(y, u)``: the inner loss. ``alpha``: retention (the proximal
    anchor is ``alpha w``). ``newton_steps``: Newton iterations on the rank-one coefficient
    (1 is exact for quadratic and linear objectives; use more for others).
    """
    u = target(w, x) if callable(target) else target
    anchor = alpha * w
    s = jnp.sum(x * x)
    base = anchor @ x

    def phi(a):  # the proximal objective restricted to W = anchor + a x^T
        return objective(base + s * a, u) + s * jnp.sum(a * a) / (2.0 * eta)

    a = jnp.zeros_like(base)
    eye = jnp.eye(base.shape[0], dtype=base.dtype)
    degenerate = (s == 0).astype(base.dtype)  # x = 0: nothing to write, W = alpha W_t
    steps = 0.5 ** jnp.arange(8.0)  # damped Newton: the best of t = 1, 1/2, ..., 1/128
    for _ in range(newton_steps):
        g = jax.grad(phi)(a)
        h = jax.hessian(phi)(a) + degenerate * eye
        d = jnp.linalg.solve(h, g)
        vals = jax.vmap(lambda t, a=a, d=d: phi(a - t * d))(steps)
        a = a - steps[jnp.argmin(vals)] * d
    return anchor + a[:, None] * x[None, :]
