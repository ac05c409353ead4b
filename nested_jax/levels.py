"""Learning levels and the multi-frequency runner (paper §2.3, §4.1; DESIGN §4 "Levels and frequency").

A *level* is one learning process of a nested system: a static, hashable :class:`Level` spec
(name, period, pure update function) plus a pytree state. Its update function has the signature
``update(state, inputs) -> (candidate_state, outputs)``: the state it would move to if it updated on
this one input, and what it emits at this step.

Frequency semantics (the CMS rule, paper Eq. 30-31, with the off-by-one of the paper's sum fixed):
a level with period ``C`` *accumulates* the increments ``candidate_state - state`` of every step,
all evaluated at the state it had when its chunk began, and *fires* on steps ``t`` (0-based) where
``(t + 1) % C == 0``: it then adds the accumulated increments to its state and clears the buffer.
Period 1 updates every step; period ``0`` or ``None`` is frozen (it still emits outputs).

Levels are chained in the order given: level 0 receives the sequence element ``x_t``, level ``i``
receives the outputs of level ``i - 1`` at the same step. Every step uses the pre-firing states, so
the order of levels never changes *when* a level sees its inputs.

Two interchangeable runners:

* :func:`run_levels` with ``form="masked"``: one ``lax.scan`` over time; each level's firing is a
  per-step mask applied with ``jnp.where`` (the ``optax.MultiSteps`` idiom). Any periods.
* ``form="nested"``: nested ``lax.scan`` s, one per distinct period, no masks; requires every
  period to divide the next larger one (e.g. 2, 4, 8).

Both return a :class:`LevelsResult` with every level's final state, the per-step outputs and a boolean
``fired[t, level]`` record.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
UpdateFn = Callable[[PyTree, PyTree], tuple[PyTree, PyTree]]

__all__ = ["Level", "LevelsResult", "run_levels", "run_levels_reference", "firing_schedule"]


@dataclasses.dataclass(frozen=True)
class Level:
    """Static spec of one learning level.

    Attributes:
      name: label used in records and error messages.
      period: fire every ``period`` steps (``(t + 1) % period == 0``); ``0`` or ``None`` = frozen.
      update: pure ``(state, inputs) -> (candidate_state, outputs)``. ``candidate_state`` must have
        the structure, shapes and dtypes of ``state``.
    """

    name: str
    period: int | None
    update: UpdateFn

    def __post_init__(self):
        p = self.period
        if p is not None and (isinstance(p, bool) or not isinstance(p, int | np.integer)):
            raise TypeError(
                f"Level {self.name!r}: period must be an int >= 0 or None (frozen), got "
                f"{p!r} of type {type(p).__name__}. Use e.g. period=4 to fire every 4 steps."
            )
        if p is not None and p < 0:
            raise ValueError(
                f"Level {self.name!r}: period must be >= 0 (0 or None = frozen), got {p}."
            )
        if not callable(self.update):
            raise TypeError(f"Level {self.name!r}: update must be callable, got {self.update!r}.")
        if p is not None:
            object.__setattr__(self, "period", int(p))

    @property
    def frozen(self) -> bool:
        return not self.period


class LevelsResult(NamedTuple):
    """What a multi-frequency run returns.

    Attributes:
      states: tuple of every level's final state (same order as the levels).
      outputs: tuple of every level's per-step outputs, each leaf with a leading time axis ``[T]``.
      fired: ``bool[T, n_levels]``; ``fired[t, i]`` is True when level ``i`` applied its update
        at step ``t``.
      pending: tuple of every level's accumulated, not yet applied increments (pass it back as
        ``pending=`` with ``start=`` to continue the stream exactly).
    """

    states: tuple
    outputs: tuple
    fired: jax.Array
    pending: tuple


def firing_schedule(periods: Sequence[int | None], length: int, start: int = 0) -> np.ndarray:
    """``bool[length, len(periods)]``: which level fires at which step (static, numpy)."""
    t = start + np.arange(length)[:, None]
    cols = [(np.zeros(length, bool) if not p else ((t[:, 0] + 1) % p == 0)) for p in periods]
    return np.stack(cols, axis=1) if cols else np.zeros((length, 0), bool)


def _check(levels: Sequence[Level], states: Sequence[PyTree], xs: PyTree) -> int:
    if not isinstance(levels, tuple | list) or not levels:
        raise ValueError("levels must be a non-empty tuple of Level specs.")
    for lv in levels:
        if not isinstance(lv, Level):
            raise TypeError(f"levels must contain Level specs, got {type(lv).__name__}.")
    names = [lv.name for lv in levels]
    if len(set(names)) != len(names):
        raise ValueError(f"level names must be unique, got {names}.")
    if len(states) != len(levels):
        raise ValueError(
            f"got {len(states)} states for {len(levels)} levels ({names}); pass one state per level."
        )
    leaves = jax.tree.leaves(xs)
    if not leaves:
        raise ValueError("xs has no array leaves; pass the sequence with a leading time axis.")
    lengths = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(xs):
        shape = np.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                f"input leaf {jax.tree_util.keystr(path)} is a scalar; every input needs a leading "
                "time axis."
            )
        lengths[jax.tree_util.keystr(path) or "xs"] = shape[0]
    if len(set(lengths.values())) != 1:
        raise ValueError(
            f"inputs disagree on the leading (time) axis: {lengths}. Every leaf of xs must have the "
            "same sequence length."
        )
    length = next(iter(lengths.values()))
    if length == 0:
        raise ValueError("the input sequence is empty (length 0).")
    return int(length)


def _tree_add(a, b):
    return jax.tree.map(operator.add, a, b)


def _tree_sub(a, b):
    return jax.tree.map(operator.sub, a, b)


def _step_all(levels, states, accs, x):
    """Evaluate every level at its current (pre-firing) state; accumulate increments."""
    outs, cands, new_accs = [], [], []
    inp = x
    for lv, st, acc in zip(levels, states, accs, strict=True):
        cand, out = lv.update(st, inp)
        _check_candidate(lv, st, cand)
        cands.append(cand)
        # frozen levels never update; period-1 levels apply the candidate itself, nothing pends
        pends = not lv.frozen and lv.period != 1
        new_accs.append(_tree_add(acc, _tree_sub(cand, st)) if pends else acc)
        outs.append(out)
        inp = out
    return cands, new_accs, tuple(outs)


def _check_candidate(lv, st, cand):
    s1 = jax.tree.structure(st)
    s2 = jax.tree.structure(cand)
    if s1 != s2:
        raise ValueError(
            f"level {lv.name!r}: update returned a state with structure {s2}, expected {s1}."
        )
    for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(cand), strict=True):
        if jnp.shape(a) != jnp.shape(b) or jnp.result_type(a) != jnp.result_type(b):
            raise ValueError(
                f"level {lv.name!r}: update changed a state leaf from {jnp.shape(a)} "
                f"{jnp.result_type(a)} to {jnp.shape(b)} {jnp.result_type(b)}; the candidate state "
                "must keep shapes and dtypes."
            )


def _fire(lv, st, cand, acc, fire):
    """New (state, acc) for one level given a (traced or static) fire flag."""
    if lv.period == 1:
        # Fires every step: the candidate itself, bit-exact (no add/subtract round trip).
        return cand, acc
    new = _tree_add(st, acc)
    zero = jax.tree.map(jnp.zeros_like, acc)
    if isinstance(fire, bool):
        return (new, zero) if fire else (st, acc)
    sel = lambda a, b: jax.tree.map(lambda u, v: jnp.where(fire, u, v), a, b)
    return sel(new, st), sel(zero, acc)


def _zeros(states):
    return [jax.tree.map(jnp.zeros_like, s) for s in states]


def _masked(levels, states, xs, length, pending, start):
    def body(carry, inp):
        sts, accs = carry
        t, x = inp
        cands, accs, outs = _step_all(levels, sts, accs, x)
        new_s, new_a, fired = [], [], []
        for lv, st, cand, acc in zip(levels, sts, cands, accs, strict=True):
            if lv.frozen:
                new_s.append(st)
                new_a.append(acc)
                fired.append(jnp.zeros((), bool))
                continue
            fire = (t + 1) % lv.period == 0
            s2, a2 = _fire(lv, st, cand, acc, fire)
            new_s.append(s2)
            new_a.append(a2)
            fired.append(fire)
        return (new_s, new_a), (outs, jnp.stack(fired))

    ts = start + jnp.arange(length, dtype=jnp.int32)
    (sts, accs), (outs, fired) = jax.lax.scan(body, (list(states), list(pending)), (ts, xs))
    return LevelsResult(tuple(sts), outs, fired, tuple(accs))


def _nested(levels, states, xs, length, pending, start):
    distinct = sorted({lv.period for lv in levels if not lv.frozen})
    for small, big in zip(distinct, distinct[1:], strict=False):
        if big % small:
            raise ValueError(
                f"form='nested' needs every period to divide the next larger one; got periods "
                f"{distinct} ({small} does not divide {big}). Use form='masked' for these periods."
            )

    def token_step(carry, x):
        sts, accs = carry
        cands, accs, outs = _step_all(levels, sts, accs, x)
        new_s, new_a = [], []
        for lv, st, cand, acc in zip(levels, sts, cands, accs, strict=True):
            if lv.period == 1:
                st, acc = cand, acc
            new_s.append(st)
            new_a.append(acc)
        return (new_s, new_a), outs

    def fire_period(carry, p):
        sts, accs = carry
        new_s, new_a = [], []
        for lv, st, acc in zip(levels, sts, accs, strict=True):
            if lv.period == p and p != 1:
                st, acc = _fire(lv, st, None, acc, True)
            new_s.append(st)
            new_a.append(acc)
        return new_s, new_a

    def segment(carry, seg, n, depth):
        """Run ``n`` steps (static) whose start is aligned to ``distinct[depth]``."""
        if depth < 0 or distinct[depth] == 1:
            # Period-1 levels fire inside token_step; nothing slower fires inside this segment.
            return jax.lax.scan(token_step, carry, seg)
        p = distinct[depth]
        nb, r = divmod(n, p)
        out_parts = []
        if nb:
            blocks = jax.tree.map(lambda a: a[: nb * p].reshape((nb, p) + a.shape[1:]), seg)

            def block(c, xb):
                c, o = segment(c, xb, p, depth - 1)
                return fire_period(c, p), o

            carry, o = jax.lax.scan(block, carry, blocks)
            out_parts.append(jax.tree.map(lambda a: a.reshape((nb * p,) + a.shape[2:]), o))
        if r:
            tail = jax.tree.map(lambda a: a[nb * p :], seg)
            carry, o = segment(carry, tail, r, depth - 1)
            out_parts.append(o)
        outs = (
            out_parts[0]
            if len(out_parts) == 1
            else jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *out_parts)
        )
        return carry, outs

    if distinct and start % distinct[-1]:
        raise ValueError(
            f"form='nested' needs start ({start}) to be a multiple of the slowest period "
            f"({distinct[-1]}); use form='masked' to resume mid-chunk."
        )
    carry = (list(states), list(pending))
    (sts, accs), outs = segment(carry, xs, length, len(distinct) - 1)
    fired = jnp.asarray(firing_schedule([lv.period for lv in levels], length, start))
    return LevelsResult(tuple(sts), outs, fired, tuple(accs))


def run_levels(
    levels: Sequence[Level],
    states: Sequence[PyTree],
    xs: PyTree,
    *,
    form: Literal["masked", "nested"] = "masked",
    pending: Sequence[PyTree] | None = None,
    start: int = 0,
) -> LevelsResult:
    """Run an ordered chain of levels over a sequence.

    Args:
      levels: the level specs, in chain order (level 0 reads ``xs``).
      states: one initial state per level.
      xs: the sequence; a pytree whose leaves all have the same leading time axis ``[T, ...]``.
      form: ``"masked"`` (one scan, per-level masks, any periods) or ``"nested"`` (nested scans,
        periods must divide each other). Both give the same result.
      pending: accumulated increments from a previous call (``LevelsResult.pending``); ``None``
        starts with empty accumulators.
      start: index of ``xs[0]`` in the whole stream (firing uses absolute steps). With
        ``form="nested"`` it must be a multiple of the slowest period.

    Returns:
      :class:`LevelsResult` ``(states, outputs, fired)``.

    Raises:
      ValueError / TypeError before tracing for bad configs (see :class:`Level` and the checks on
      ``xs``). Jit with ``jax.jit(run_levels, static_argnames=("levels", "form"))`` and pass
      ``levels`` as a tuple.
    """
    length = _check(levels, states, xs)
    levels = tuple(levels)
    pending = _check_pending(levels, states, pending)
    start = _check_start(start)
    if form == "masked":
        return _masked(levels, states, xs, length, pending, start)
    if form == "nested":
        return _nested(levels, states, xs, length, pending, start)
    raise ValueError(f"form must be 'masked' or 'nested', got {form!r}.")


def _check_pending(levels, states, pending):
    if pending is None:
        return _zeros(states)
    if len(pending) != len(levels):
        raise ValueError(f"pending has {len(pending)} entries for {len(levels)} levels.")
    for lv, st, acc in zip(levels, states, pending, strict=True):
        if jax.tree.structure(st) != jax.tree.structure(acc):
            raise ValueError(f"level {lv.name!r}: pending does not match the state's structure.")
    return list(pending)


def _check_start(start):
    if isinstance(start, bool) or not isinstance(start, int | np.integer) or start < 0:
        raise ValueError(f"start must be an int >= 0 (the stream index of xs[0]), got {start!r}.")
    return int(start)


def run_levels_reference(levels, states, xs, *, pending=None, start: int = 0) -> LevelsResult:
    """Slow twin of :func:`run_levels`: a plain Python loop with ``if (t + 1) % C == 0``.

    Eager, one step at a time; for tests and for reading. Same semantics as the fast forms.
    """
    length = _check(levels, states, xs)
    accs = _check_pending(levels, states, pending)
    start = _check_start(start)
    states = list(states)
    outs_t, fired = [], []
    for i_t in range(length):
        t = start + i_t
        x = jax.tree.map(lambda a, i_t=i_t: a[i_t], xs)
        inp = x
        cands, outs = [], []
        for i, lv in enumerate(levels):
            cand, out = lv.update(states[i], inp)
            cands.append(cand)
            outs.append(out)
            inp = out
        row = []
        for i, lv in enumerate(levels):
            if lv.frozen:
                row.append(False)
                continue
            accs[i] = _tree_add(accs[i], _tree_sub(cands[i], states[i]))
            if (t + 1) % lv.period == 0:
                states[i] = cands[i] if lv.period == 1 else _tree_add(states[i], accs[i])
                accs[i] = jax.tree.map(jnp.zeros_like, accs[i])
                row.append(True)
            else:
                row.append(False)
        outs_t.append(tuple(outs))
        fired.append(row)
    outputs = jax.tree.map(lambda *a: jnp.stack(a), *outs_t)
    fired = jnp.asarray(np.array(fired, bool))
    return LevelsResult(tuple(states), outputs, fired, tuple(accs))
