"""Learning levels and the multi-frequency runner (paper §2.3, §4.1; decisions D1-D4).

A *level* is one learning process of a nested system: a static, hashable `Level` spec
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
the order of levels never changes *when* a level sees its inputs. An optional ``peek`` reads every
level's pre-firing state before the chain (a read phase), for levels that must see the outputs of
levels after them at the same step.

Two interchangeable runners:

* `run_levels` with ``form="masked"``: one ``lax.scan`` over time; each level's firing is a
  per-step mask applied with ``jnp.where`` (the ``optax.MultiSteps`` idiom). Any periods.
* ``form="nested"``: nested ``lax.scan`` s, one per distinct period, no masks; requires every
  period to divide the next larger one (e.g. 2, 4, 8).

Both return a `LevelsResult` with every level's final state, the per-step outputs and a boolean
``fired[t, level]`` record.

`scan_chunks` is the chunk engine under every chunked learner (a memory's chunk-parallel
write and read, the CMS levels, self-modifying Titans' generator memories, the language model's
CMS chunks, and the nested form above): full chunks in a ``lax.scan``, then the tail, outputs back
in token order, with remat, first-order updates and gradient cuts as options.
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

__all__ = [
    "ChunkScan",
    "Level",
    "LevelsResult",
    "fire",
    "firing_schedule",
    "run_levels",
    "run_levels_reference",
    "scan_chunks",
    "sever",
    "UNROLL_UPTO",
]

# The models' chunk loops (Hope's CMS chunks, self-modifying Titans' memory chunks) of at most this
# many chunks run unrolled (`scan_chunks`' ``unroll_upto``): at the sizes meant for training they
# are short (a quarter of the sequence per CMS chunk: 4), and unrolled they skip each iteration's
# copies of the carry and of the stacked outputs (decisions D103: Hope's 512-token step 17% less
# time, 5 s more compile). Longer loops (the tiny test configs' many small chunks) stay loops, so
# that compile time does not grow with the sequence.
UNROLL_UPTO = 4


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


class ChunkScan(NamedTuple):
    """What `scan_chunks` returns.

    Attributes:
      carry: the carry after every full chunk and the tail.
      outputs: the per-token outputs, along the input's time axis (full chunks, then the tail).
      boundary: the carry after the last full chunk (the state at the last chunk boundary; equal
        to ``carry`` when there is no tail). Streaming continues from it.
      tail: how many tokens follow the last full chunk (static, ``0 <= tail < chunk_size``).
    """

    carry: PyTree
    outputs: PyTree
    boundary: PyTree
    tail: int


def sever(state, flag):
    """``state`` with its gradient stopped where ``flag`` (a traced bool) is true: same values."""
    return jax.tree.map(lambda a: jnp.where(flag, jax.lax.stop_gradient(a), a), state)


def first_order_update(new, old):
    """``old + stop_gradient(new - old)``: the values of ``new``, the gradient of ``old`` (the
    first-order approximation of differentiating through an inner update)."""
    return jax.tree.map(lambda n, o: o + jax.lax.stop_gradient(n - o), new, old)


def scan_chunks(
    fn: Callable,
    carry: PyTree,
    xs: tuple,
    chunk_size: int,
    *,
    axis: int = 0,
    prep: Callable | None = None,
    tail_fn: Callable | None = None,
    whole: bool = False,
    remat: bool = False,
    unroll_upto: int = 0,
    first_order: bool = False,
    cut: int = 0,
) -> ChunkScan:
    """The chunk engine under every chunked learner: full chunks, then the tail, then one output.

    A sequence of ``T`` tokens is ``T // chunk_size`` full chunks and a tail of ``T % chunk_size``
    tokens. ``fn(carry, *chunk) -> (carry, y)`` runs once per full chunk in a ``lax.scan`` (the
    chunk's state-dependent work: a memory's write and read, a CMS level's learning step, one
    level of `run_levels`' nested form), and ``tail_fn`` (default ``fn``) on the tail. The
    outputs are put back in token order along ``axis``.

    Args:
      fn: ``(carry, *chunk) -> (carry, y)``; ``chunk`` has the leaves of ``xs`` cut to one chunk
        (``chunk_size`` tokens along ``axis``), ``y``'s leaves have the chunk's tokens along ``axis``.
      carry: the initial carry (a pytree).
      xs: a tuple of pytrees (``None`` leaves allowed) whose array leaves share the time axis
        ``axis``.
      chunk_size: tokens per chunk (a positive int).
      axis: the time axis of every leaf of ``xs`` and of the outputs.
      prep: optional state-independent work ``prep(*chunk) -> tuple``, run once on all full chunks
        stacked on a leading axis (outside the scan, batched over chunks) and on the tail.
      tail_fn: what runs on the tail instead of ``fn`` (same signature; ``prep`` is not applied).
      whole: call ``fn`` once on all full chunks together (the arrays unsplit) instead of scanning
        it per chunk: for a chunk computation that is itself parallel over chunks.
      remat: ``jax.checkpoint`` each chunk step (recompute it in the backward pass).
      unroll_upto: a loop of at most this many full chunks runs unrolled (one straight program:
        no per-iteration copies of the carry and the stacked outputs, more to compile; the
        models pass `UNROLL_UPTO`); ``0``: always a loop. Same values.
      first_order: stop the outer gradient through each step's change of the carry
        (`first_order_update`; same values).
      cut: ``0`` or a multiple of ``chunk_size``: the carry entering every chunk that starts at a
        multiple of ``cut`` tokens has its gradient stopped (same values), so an output's gradient
        reaches only its own block of ``cut`` tokens.

    Returns:
      `ChunkScan` ``(carry, outputs, boundary, tail)``.
    """
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int | np.integer)
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    if cut and (cut < 0 or cut % chunk_size):
        raise ValueError(f"cut ({cut}) must be 0 or a multiple of chunk_size ({chunk_size}).")
    if whole and cut:
        raise ValueError("cut applies to a scan over chunks; it cannot be used with whole=True.")
    leaves = jax.tree.leaves(xs)
    if not leaves:
        raise ValueError("xs has no array leaves; pass the sequence with a time axis.")
    lengths = {np.shape(a)[axis] for a in leaves}
    if len(lengths) != 1:
        raise ValueError(f"the leaves of xs disagree on the time axis {axis}: lengths {lengths}.")
    t = lengths.pop()
    n, r = divmod(t, chunk_size)
    full = n * chunk_size
    prep = prep or (lambda *a: a)
    step = fn
    if first_order:

        def step(c, *a):
            new, y = fn(c, *a)
            return first_order_update(new, c), y

    body = jax.checkpoint(step) if remat else step
    take = lambda sl: jax.tree.map(lambda a: jax.lax.slice_in_dim(a, *sl, axis=axis), xs)
    outs = []
    if n and whole:
        carry, y = body(carry, *take((0, full)))
        outs.append(y)
    elif n:

        def split(a):  # [..., n * C, ...] -> [n, ..., C, ...]
            a = a.reshape(a.shape[:axis] + (n, chunk_size) + a.shape[axis + 1 :])
            return jnp.moveaxis(a, axis, 0)

        chunks = prep(*jax.tree.map(split, take((0, full))))
        unroll = True if n <= unroll_upto else 1
        if n == 1 and not cut:  # one chunk: no loop around it (a loop of one costs a copy)
            carry, y = body(carry, *jax.tree.map(lambda a: a[0], chunks))
            y = jax.tree.map(lambda a: a[None], y)
        elif cut:
            cuts = (jnp.arange(n) * chunk_size) % cut == 0
            carry, y = jax.lax.scan(
                lambda c, x: body(sever(c, x[0]), *x[1]), carry, (cuts, chunks), unroll=unroll
            )
        else:
            carry, y = jax.lax.scan(lambda c, x: body(c, *x), carry, chunks, unroll=unroll)

        def merge(a):  # [n, ..., C, ...] -> [..., n * C, ...]
            a = jnp.moveaxis(a, 0, axis)
            return a.reshape(a.shape[:axis] + (full,) + a.shape[axis + 2 :])

        outs.append(jax.tree.map(merge, y))
    boundary = carry
    if r:
        if cut and full % cut == 0:
            carry = jax.tree.map(jax.lax.stop_gradient, carry)
        tail = take((full, t))
        if tail_fn is None:
            carry, y = step(carry, *prep(*tail))
        else:
            carry, y = tail_fn(carry, *tail)
        outs.append(y)
    y = outs[0] if len(outs) == 1 else jax.tree.map(lambda *a: jnp.concatenate(a, axis), *outs)
    return ChunkScan(carry, y, boundary, r)


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


def _step_all(levels, states, accs, x, peek=None):
    """Evaluate every level at its current (pre-firing) state; accumulate increments. ``peek``
    (optional) first maps the step's input with every level's pre-firing state."""
    outs, cands, new_accs = [], [], []
    inp = x if peek is None else peek(tuple(states), x)
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


def fire(state, pending, flag, commit=None, *, lazy: bool = False):
    """The firing step of a level (decisions D2): where ``flag`` (a Python bool or a traced bool
    scalar), ``(commit(state, pending), 0)``; elsewhere ``(state, pending)`` unchanged.

    ``commit`` defaults to ``state + pending`` (the accumulated increments applied at once); a
    level whose slow state is not a sum passes its own (M3: ``m2 <- b3 m2 + buf`` and its
    orthogonalisation). A traced flag selects with ``jnp.where`` (both sides computed: right for
    cheap commits inside a scan); ``lazy=True`` uses ``lax.cond`` instead, so an expensive
    commit runs only on the steps that fire.
    """
    commit = _tree_add if commit is None else commit
    zeros = lambda: jax.tree.map(jnp.zeros_like, pending)
    if isinstance(flag, bool):
        return (commit(state, pending), zeros()) if flag else (state, pending)
    if lazy:
        return jax.lax.cond(
            flag, lambda: (commit(state, pending), zeros()), lambda: (state, pending)
        )
    sel = lambda a, b: jax.tree.map(lambda u, v: jnp.where(flag, u, v), a, b)
    return sel(commit(state, pending), state), sel(zeros(), pending)


def _fire(lv, st, cand, acc, flag):
    """New (state, acc) for one level given a (traced or static) fire flag."""
    if lv.period == 1:
        # Fires every step: the candidate itself, bit-exact (no add/subtract round trip).
        return cand, acc
    return fire(st, acc, flag)


def _zeros(states):
    return [jax.tree.map(jnp.zeros_like, s) for s in states]


def _masked(levels, states, xs, length, pending, start, peek):
    def body(carry, inp):
        sts, accs = carry
        t, x = inp
        cands, accs, outs = _step_all(levels, sts, accs, x, peek)
        new_s, new_a, fired = [], [], []
        for lv, st, cand, acc in zip(levels, sts, cands, accs, strict=True):
            if lv.frozen:
                new_s.append(st)
                new_a.append(acc)
                fired.append(jnp.zeros((), bool))
                continue
            flag = (t + 1) % lv.period == 0
            s2, a2 = _fire(lv, st, cand, acc, flag)
            new_s.append(s2)
            new_a.append(a2)
            fired.append(flag)
        return (new_s, new_a), (outs, jnp.stack(fired))

    ts = start + jnp.arange(length, dtype=jnp.int32)
    (sts, accs), (outs, fired) = jax.lax.scan(body, (list(states), list(pending)), (ts, xs))
    return LevelsResult(tuple(sts), outs, fired, tuple(accs))


def _nested(levels, states, xs, length, pending, start, peek):
    distinct = sorted({lv.period for lv in levels if not lv.frozen})
    for small, big in zip(distinct, distinct[1:], strict=False):
        if big % small:
            raise ValueError(
                f"form='nested' needs every period to divide the next larger one; got periods "
                f"{distinct} ({small} does not divide {big}). Use form='masked' for these periods."
            )

    def token_step(carry, x):
        sts, accs = carry
        cands, accs, outs = _step_all(levels, sts, accs, x, peek)
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

    def segment(carry, seg, depth):
        """Run the steps of ``seg`` (its start aligned to ``distinct[depth]``)."""
        if depth < 0 or distinct[depth] == 1:
            # Period-1 levels fire inside token_step; nothing slower fires inside this segment.
            return jax.lax.scan(token_step, carry, seg)
        p = distinct[depth]

        def block(c, xb):
            c, o = segment(c, xb, depth - 1)
            return fire_period(c, p), o

        res = scan_chunks(block, carry, (seg,), p, tail_fn=lambda c, xt: segment(c, xt, depth - 1))
        return res.carry, res.outputs

    if distinct and start % distinct[-1]:
        raise ValueError(
            f"form='nested' needs start ({start}) to be a multiple of the slowest period "
            f"({distinct[-1]}); use form='masked' to resume mid-chunk."
        )
    carry = (list(states), list(pending))
    (sts, accs), outs = segment(carry, xs, len(distinct) - 1)
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
    peek: Callable[[tuple, PyTree], PyTree] | None = None,
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
      peek: optional ``(states, x_t) -> x_t'``: a read phase at every step, before the chain,
        given every level's pre-firing state (a tuple, in chain order); level 0 receives its
        result instead of ``x_t``. It lets a level's update depend on the outputs of levels
        *after* it at the same step (`nested_jax.transfer.run_nest`'s ``"joint"``
        members), which the chain alone cannot. It must not change any state.

    Returns:
      `LevelsResult` ``(states, outputs, fired)``.

    Raises:
      ValueError: before tracing, for bad configs and inputs (see `Level` and the checks
        on ``xs``).
      TypeError: before tracing, for arguments of the wrong kind.

    Jit with ``jax.jit(run_levels, static_argnames=("levels", "form"))`` and pass ``levels`` as
    a tuple.

    Examples:
      >>> import jax.numpy as jnp
      >>> from nested_jax import Level, run_levels
      >>> fast = Level("fast", 1, lambda s, x: (s + 0.5 * (x - s), s))
      >>> slow = Level("slow", 4, lambda s, x: (s + 0.5 / 4 * (x - s), s))
      >>> res = run_levels((fast, slow), (jnp.zeros(()), jnp.zeros(())), jnp.ones((8,)))
      >>> res.fired.sum(axis=0).tolist()  # the slow level fired at steps 3 and 7
      [8, 2]
    """
    length = _check(levels, states, xs)
    levels = tuple(levels)
    pending = _check_pending(levels, states, pending)
    start = _check_start(start)
    if peek is not None and not callable(peek):
        raise TypeError(f"peek must be a callable (states, x) -> x or None, got {peek!r}.")
    if form == "masked":
        return _masked(levels, states, xs, length, pending, start, peek)
    if form == "nested":
        return _nested(levels, states, xs, length, pending, start, peek)
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


def run_levels_reference(
    levels, states, xs, *, pending=None, start: int = 0, peek=None
) -> LevelsResult:
    """Slow twin of `run_levels`: a plain Python loop with ``if (t + 1) % C == 0``.

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
        inp = x if peek is None else peek(tuple(states), x)
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
