"""Update rules of a parametric memory layer: GD, GD with momentum, Delta Gradient Descent (DGD).

Every rule acts on one weight matrix ``W: [..., d_out, d_in]`` that received the input ``x`` and the
loss gradient ``G = dL/dW`` (for a linear layer ``G = u x^T`` with surprise ``u``), with per-token
learning rate ``eta``, retention / weight decay ``alpha`` and (momentum rules) momentum ``beta``:

* `GD`:        ``W <- alpha W - eta G``                              (paper §2.1, §3.2)
* `Momentum`:  ``S <- beta S + G;  W <- alpha W - eta S``            (§2.2.2, Titans §5.1)
* `DGD`:       ``W <- W (alpha I - eta' x x^T) - eta' D``,  ``eta' = eta / (1 + eta ||x||^2)``
  with ``D = G`` or, when ``beta`` is set, ``D = S`` (momentum as above). For ``alpha = 1`` and
  ``D = -u x^T`` this is the exact proximal step ``argmin_W 1/2||W x - u||^2 + 1/(2 eta)||W - W_t||^2``
  (paper §3.5, Sherman-Morrison). Retention enters as in the paper's Hope form (Eq. 88/§5.2).

`rule_step` is the plain token-level form (the "slow twin"); the chunk-parallel form of the same
recurrences lives in `nested_jax.memory.chunkwise`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["DGD", "GD", "Momentum", "Rule", "dgd_rate", "nlms_rate", "rule_step"]


@dataclasses.dataclass(frozen=True)
class GD:
    """Plain (decayed) gradient descent."""

    @property
    def beta(self) -> float | None:
        return None

    @property
    def delta(self) -> bool:
        return False


@dataclasses.dataclass(frozen=True)
class Momentum:
    """Gradient descent with momentum ``beta`` (the default when no per-token beta is given)."""

    beta: float = 0.9

    def __post_init__(self):
        if not 0.0 <= float(self.beta) <= 1.0:
            raise ValueError(f"Momentum.beta must be in [0, 1], got {self.beta}.")

    @property
    def delta(self) -> bool:
        return False


@dataclasses.dataclass(frozen=True)
class DGD:
    """Delta Gradient Descent (closed form); ``beta=None`` for no momentum."""

    beta: float | None = None

    def __post_init__(self):
        if self.beta is not None and not 0.0 <= float(self.beta) <= 1.0:
            raise ValueError(f"DGD.beta must be None or in [0, 1], got {self.beta}.")

    @property
    def delta(self) -> bool:
        return True


Rule = GD | Momentum | DGD


def dgd_rate(eta: jax.Array, x: jax.Array) -> jax.Array:
    """``eta' = eta / (1 + eta ||x||^2)``; ``eta: [...]``, ``x: [..., d]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> float(dgd_rate(jnp.float32(1.0), jnp.array([1.0, 0.0])))  # a unit key: half the step
        0.5
    """
    return eta / (1.0 + eta * jnp.sum(x * x, axis=-1))


def nlms_rate(eta, gain, strength=1.0):
    """The normalised (NLMS) rate ``eta / (1 + strength eta gain)``: the one stable-step helper
    of the deep memories (`MLPMemory`'s ``step_norm``,
    `SwiGLUMemory`'s levels of the CMS).

    ``gain`` is how far a rate-1 gradient step moves the memory's output along its error at that
    input (each memory computes its own, e.g. `SwiGLUMemory.gain`); dividing by
    ``1 + strength eta gain`` bounds the step at ``1 / strength`` errors' worth whatever ``eta``,
    the width or the weights, and leaves small rates nearly unchanged.

    Examples:
        >>> round(float(nlms_rate(1e6, 2.0)), 4)  # a huge rate: bounded at 1 / gain
        0.5
    """
    return eta / (1.0 + strength * eta * gain)


def rule_step(rule, w, s, g, x, eta, alpha, beta):
    """One token-level update of one weight matrix (the reference form).

    Args:
      rule: `GD`, `Momentum` or `DGD`.
      w: ``[..., d_out, d_in]`` weights.
      s: momentum of the same shape, or ``None`` without momentum.
      g: ``[..., d_out, d_in]`` gradient ``dL/dW`` (taken wherever the caller chose).
      x: ``[..., d_in]`` the layer's input (used by DGD's decay).
      eta, alpha, beta: ``[...]`` per-example rates (``beta`` ignored without momentum).

    Returns:
      ``(w, s)`` after the update.
    """
    e = lambda a: a[..., None, None]
    if rule.delta:
        eta = dgd_rate(eta, x)
    if s is not None:
        s = e(beta) * s + g
        d = s
    else:
        d = g
    if rule.delta:
        eye = jnp.broadcast_to(
            jnp.eye(x.shape[-1], dtype=w.dtype), w.shape[:-2] + (x.shape[-1],) * 2
        )
        decay = e(alpha) * eye - e(eta) * (x[..., :, None] * x[..., None, :])
        w = w @ decay - e(eta) * d
    else:
        w = e(alpha) * w - e(eta) * d
    return w, s
