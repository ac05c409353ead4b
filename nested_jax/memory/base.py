"""The associative-memory interface shared by every memory (paper §2.1; decisions D5-D7).

A memory is a frozen, hashable spec (objective, update rule, sizes) whose methods are pure functions
of a per-sample, per-head state pytree:

* ``write(state, k, v, eta, alpha, beta, at=None)`` and ``read(state, q)`` act on one token
  (``k, v, q: [batch, heads, dim]``; rates ``[batch, heads]``).
* ``write_read_chunk(state, q, k, v, eta, alpha, beta)`` processes one chunk in parallel
  (``[batch, C, heads, dim]``, rates ``[batch, C, heads]``): every inner gradient is taken at the
  chunk-boundary state and token ``t`` reads the per-token state after the writes of tokens ``< t``.
* `AbstractMemory.write_read` runs a whole sequence (``[batch, seq, heads, dim]``) chunk by
  chunk inside ``lax.scan``; `AbstractMemory.write_read_reference` is its slow twin, a
  token-by-token scan over ``write``/``read`` with gradients at the chunk boundary
  (``chunk_size=1`` is the exact online recurrence, e.g. DeltaNet).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from nested_jax.levels import first_order_update, scan_chunks, sever

PyTree = Any

__all__ = [
    "AbstractMemory",
    "Rates",
    "StreamState",
    "advance_stream",
    "first_order_update",
    "sever",
]


class Rates(NamedTuple):
    """The per-token rates of a memory write, as one value: the same names in every package.

    ``eta``: learning rate (inner step size); ``alpha``: retention (the fraction of the state kept
    before the step, 1 = no forgetting; a weight decay of ``1 - alpha``); ``beta``: momentum (the
    fraction of the previous update carried, where the update rule has one).

    Each field is ``None`` (the memory's default: 1, and the rule's own momentum), a scalar, a
    per-head value ``[heads]``, or a per-token value ``[batch, seq, heads]``; the sequence drivers
    broadcast them (`broadcast`). The chunk API (`AbstractMemory.write_chunk`) takes
    them already in its heads-first layout (``[batch, heads, C]``).
    """

    eta: Any = None
    alpha: Any = None
    beta: Any = None

    def broadcast(self, shape) -> Rates:
        """Each given rate as f32 of ``shape = [batch, seq, heads]`` (``None`` stays ``None``)."""
        return Rates(*(_rates(x, shape, name) for name, x in zip(self._fields, self, strict=True)))


class StreamState(NamedTuple):
    """A memory state that can be continued at any token (see `AbstractMemory.stream`).

    ``state``: the per-token memory state; ``boundary``: the state at the start of the current
    chunk (where inner gradients are taken); ``offset``: tokens written since that boundary.
    """

    state: PyTree
    boundary: PyTree
    offset: jax.Array


def _rates(x, shape, name: str) -> jax.Array:
    """Broadcast a rate (None, scalar, ``[heads]`` or ``[batch, seq, heads]``) to ``shape`` in f32."""
    if x is None:
        return None
    shape = tuple(shape)
    x = jnp.asarray(x, jnp.float32)
    if (x.ndim, x.shape) not in ((0, ()), (1, shape[-1:]), (3, shape)):
        raise ValueError(
            f"{name} must be a scalar, a per-head value [heads] = {shape[-1:]} or per token "
            f"[batch, seq, heads] = {shape}; got shape {x.shape}."
        )
    return jnp.broadcast_to(x, shape)


def _as_rates(eta, alpha, beta, rates) -> Rates:
    """The rates of a driver call: either the three keywords or one `Rates`, not both."""
    if rates is None:
        return Rates(eta, alpha, beta)
    if not isinstance(rates, Rates):
        raise TypeError(f"rates must be a nested_jax.memory.Rates, got {type(rates).__name__}.")
    if any(x is not None for x in (eta, alpha, beta)):
        raise ValueError(
            "pass the rates either as eta/alpha/beta or as rates=Rates(...), not both."
        )
    return rates


def advance_stream(st, bnd, off, chunk_size):
    """One token later in a stream: at a chunk end the boundary moves to the current state (so
    a stream at offset 0 always has ``boundary == state``, as `AbstractMemory.start_stream`
    returns it)."""
    off = (off + 1) % chunk_size
    bnd = jax.tree.map(lambda a, b: jnp.where(off == 0, a, b), st, bnd)
    return st, bnd, off


class AbstractMemory:
    """Base class: shared sequence drivers on top of the per-memory token and chunk methods."""

    #: Whether token t's read sees token t's own write (softmax attention) or only earlier ones.
    inclusive: ClassVar[bool] = False

    # --- per-memory methods (overridden) -------------------------------------------------------
    def write(self, state, k, v, eta=None, alpha=None, beta=None, *, at=None):
        raise NotImplementedError

    def read(self, state, q):
        raise NotImplementedError

    def _chunk_prep(self, q, k, v, eta, alpha, beta) -> tuple:
        """State-independent work for chunks ``[..., C, d]`` (any leading dims; runs outside the
        scan over chunks, batched over all of them)."""
        return (q, k, v, eta, alpha, beta)

    def _chunk_step(self, state, *prepared):
        """The state-dependent part of one chunk: ``(state, y)``."""
        raise NotImplementedError

    def _chunk(self, state, q, k, v, eta, alpha, beta):
        """One chunk in the internal layout (``[B, H, C, d]``, rates ``[B, H, C]``)."""
        return self._chunk_step(state, *self._chunk_prep(q, k, v, eta, alpha, beta))

    def write_chunk(self, state, k, v, rates: Rates):
        """One chunk of writes in the heads-first layout (``k, v: [batch, heads, C, dim]``; every
        field of ``rates`` given, ``[batch, heads, C]``; no checks or transposes): the state after
        the chunk, every inner gradient taken at ``state`` (the chunk boundary). For layers that
        keep that layout, e.g. self-modifying Titans' generator memories."""
        return self._chunk(state, k, k, v, *rates)[0]

    def write_read_heads(self, state, q, k, v, rates: Rates):
        """One chunk in the heads-first layout (``k, v: [batch, heads, C, dim]``, every field of
        ``rates`` given, ``[batch, heads, C]``): ``(state, y)``, every head writing its pairs
        with the inner gradients at ``state``, and the per-token reads ``y`` (before each
        token's write) at ``q``. Memories that support it (`MLPMemory`) take queries for only the
        first ``r`` heads (``q: [batch, r, C, d_k]``) and read only those: heads stacked from
        several memories that write the same pairs, only one of them read (self-modifying
        Titans)."""
        return self._chunk(state, q, k, v, *rates)

    def _default_rates(self, like):
        """Rates used when the caller passes None: (eta, alpha, beta) for ``like: [B, T, H, d]``:
        ones, and the update rule's momentum ``beta`` where the memory has a rule that sets one."""
        ones = jnp.ones(like.shape[:3], jnp.float32)
        b = getattr(getattr(self, "rule", None), "beta", None)
        return ones, ones, (ones if b is None else jnp.full_like(ones, b))

    def widths(self, state) -> tuple[int, int, int] | None:
        """``(heads, d_k, d_v)``: the heads and the key and value widths ``state`` takes as
        inputs (``None``: not known). Overridden by each memory."""
        return None

    def _check_widths(self, state, k, v) -> None:
        """A clear error, before any matmul, when the inputs do not fit ``state``."""
        want = self.widths(state)
        if want is None or jnp.ndim(k) != 4 or jnp.ndim(v) != 4:
            return  # (shapes are checked in _prepare)
        got = (k.shape[2], k.shape[3], v.shape[3])
        if got != tuple(want):
            raise ValueError(
                f"this {type(self).__name__} state takes {want[0]} heads of keys of width "
                f"{want[1]} and values of width {want[2]}; got k {tuple(k.shape)} and v "
                f"{tuple(v.shape)} ([batch, seq, heads, dim]). Pass inputs of the widths given "
                "to init_params, or make params for these widths."
            )

    # --- shared drivers ------------------------------------------------------------------------
    def _prepare(self, q, k, v, rates: Rates):
        """Check and lay out a sequence call: ``(q, k, v, eta, alpha, beta)`` heads first."""
        for name, a in (("q", q), ("k", k), ("v", v)):
            if jnp.ndim(a) != 4:
                raise ValueError(
                    f"{name} must have shape [batch, seq, heads, dim], got {jnp.shape(a)}."
                )
        if q.shape[:3] != k.shape[:3] or v.shape[:3] != k.shape[:3]:
            raise ValueError(
                "q, k and v must agree on [batch, seq, heads]; got "
                f"{q.shape[:3]}, {k.shape[:3]}, {v.shape[:3]}."
            )
        if q.shape[-1] != k.shape[-1]:
            raise ValueError(
                f"q and k must share their last dim, got {q.shape[-1]} vs {k.shape[-1]}."
            )
        given = rates.broadcast(k.shape[:3])
        rates = tuple(
            d if r is None else r for d, r in zip(self._default_rates(k), given, strict=True)
        )
        f32 = lambda a: jnp.asarray(a, jnp.float32)
        # [B, T, H, d] -> [B, H, T, d]; rates [B, T, H] -> [B, H, T]
        seqs = tuple(jnp.swapaxes(f32(a), 1, 2) for a in (q, k, v))
        rates = tuple(jnp.swapaxes(r, 1, 2) for r in rates)
        return seqs + rates

    def _reads_after(self, read) -> bool:
        """Whether token t's output reads the state after its own write (``read="after"``)."""
        if read is None:
            return self.inclusive
        if read not in ("before", "after"):
            raise ValueError(f'read must be "before", "after" or None, got {read!r}.')
        if self.inclusive and read == "before":
            raise ValueError(
                f"{type(self).__name__} reads after its own write (a token attends to itself); "
                'read="before" is not available for it.'
            )
        return read == "after"

    def check_options(self, *, chunk_size: int, read: str | None = None) -> None:
        """Raise the drivers' ``ValueError`` now for a bad ``chunk_size`` or ``read`` (for
        wrappers that take them once, e.g. `nested_jax.nnx.MemoryLayer`)."""
        self._check_chunk(chunk_size)
        self._reads_after(read)

    def _shift_queries(self, arrays, after: bool):
        """For ``read="after"`` on a memory that reads before writing: token t's query is asked at
        position t + 1 (where the state holds token t's write); the last one is read separately."""
        if not after or self.inclusive:
            return arrays
        q = arrays[0]
        return (jnp.concatenate([q[:, :, :1], q[:, :, :-1]], axis=2),) + tuple(arrays[1:])

    def _unshift(self, state, arrays, y, after: bool):
        """Undo `_shift_queries` on the outputs ``y: [B, H, T, d_v]``."""
        if not after or self.inclusive:
            return y
        last = self.read(state, arrays[0][:, :, -1])  # the last query, after every write
        return jnp.concatenate([y[:, :, 1:], last[:, :, None].astype(y.dtype)], axis=2)

    def write_read_chunk(
        self, state, q, k, v, eta=None, alpha=None, beta=None, *, rates=None, read=None
    ):
        """One chunk in parallel: all ``C`` tokens of the inputs form a single chunk.

        Same layout and arguments as `write_read`; equal to ``write_read(...,
        chunk_size=C)``.
        """
        after = self._reads_after(read)
        self._check_widths(state, k, v)
        arrays = self._prepare(q, k, v, _as_rates(eta, alpha, beta, rates))
        state, y = self._chunk(state, *self._shift_queries(arrays, after))
        return state, jnp.swapaxes(self._unshift(state, arrays, y, after), 1, 2)

    @staticmethod
    def _check_chunk(chunk_size):
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")

    @staticmethod
    def _check_cut(gradient_cut, chunk_size):
        if gradient_cut and (gradient_cut < 0 or gradient_cut % chunk_size):
            raise ValueError(
                f"gradient_cut ({gradient_cut}) must be 0 or a multiple of chunk_size "
                f"({chunk_size})."
            )

    def write_read(
        self,
        state,
        q,
        k,
        v,
        eta=None,
        alpha=None,
        beta=None,
        *,
        rates: Rates | None = None,
        chunk_size: int,
        read: str | None = None,
        first_order: bool = False,
        gradient_cut: int = 0,
    ):
        """Chunk-parallel write-and-read over a sequence.

        Args:
          state: the memory state (per sample and head).
          q, k: ``[batch, seq, heads, d_k]``; v: ``[batch, seq, heads, d_v]``.
          eta, alpha, beta: learning rate, retention and momentum: each ``None`` (the memory's
            default), a scalar, per head ``[heads]`` or per token ``[batch, seq, heads]``.
          rates: the same three as one `Rates` (instead of ``eta``/``alpha``/``beta``).
          chunk_size: tokens per chunk; the sequence need not be a multiple of it.
          read: ``"before"``: token ``t`` reads the state before its own write (the memory's
            prediction of ``v_t``, as Titans and the paper's recurrences); ``"after"``: after it
            (standard causal linear attention / DeltaNet outputs, ``y_t = M_t q_t``). ``None``:
            the memory's own order (``"before"``, or ``"after"`` for softmax attention).
          first_order: stop the outer gradient through the inner updates: the state carried from
            one chunk to the next is ``state_prev + stop_gradient(state_new - state_prev)`` (same
            values; the carried state's gradient passes straight to the previous state, as in
            first-order MAML). Inside a chunk, reads still differentiate through that chunk's writes.
          gradient_cut: ``0`` or a multiple of ``chunk_size``: no gradient flows through the state
            carried into a block of ``gradient_cut`` tokens (same values), so an output's gradient
            reaches only the inputs of its own block (the teach signal's first pass, decisions D52).

        Returns:
          ``(state, y)`` with ``y: [batch, seq, heads, d_v]``.

        Examples:
            DeltaNet, exact for every chunk size, against its token-by-token twin:

            >>> import jax, jax.numpy as jnp
            >>> from nested_jax.memory import L2, GD, LinearMemory
            >>> mem = LinearMemory(objective=L2(), rule=GD(), gradient_at="token")
            >>> params = mem.init_params(jax.random.key(0), heads=1, d_k=4, d_v=4)
            >>> k = jax.random.normal(jax.random.key(1), (1, 6, 1, 4))
            >>> k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
            >>> _, y = mem.write_read(mem.init_state(params, 1), k, k, k, 0.5, chunk_size=3)
            >>> _, y1 = mem.write_read_reference(mem.init_state(params, 1), k, k, k, 0.5, chunk_size=1)
            >>> y.shape, bool(jnp.allclose(y, y1, atol=1e-5))
            ((1, 6, 1, 4), True)
        """
        res, y = self._run_chunks(
            state,
            q,
            k,
            v,
            _as_rates(eta, alpha, beta, rates),
            chunk_size,
            read,
            first_order,
            gradient_cut,
        )
        return res.carry, y

    def _run_chunks(self, state, q, k, v, rates, chunk_size, read, first_order, gradient_cut):
        """``write_read``'s chunk scan: ``(ChunkScan, y)`` (see `scan_chunks`)."""
        self._check_chunk(chunk_size)
        self._check_cut(gradient_cut, chunk_size)
        after = self._reads_after(read)
        self._check_widths(state, k, v)
        arrays = self._prepare(q, k, v, rates)
        # Remat of each chunk step: on CPU, recomputing a chunk's cheap forward in the backward
        # pass is faster than storing its residuals (measured: ~2x for the MLP memory), and it
        # keeps training memory at one state per chunk.
        res = scan_chunks(
            self._chunk_step,
            state,
            self._shift_queries(arrays, after),
            chunk_size,
            axis=2,
            prep=self._chunk_prep,
            remat=True,
            first_order=first_order,
            cut=gradient_cut,
        )
        return res, jnp.swapaxes(self._unshift(res.carry, arrays, res.outputs, after), 1, 2)

    def start_stream(
        self,
        state,
        q,
        k,
        v,
        eta=None,
        alpha=None,
        beta=None,
        *,
        rates: Rates | None = None,
        chunk_size: int,
        read: str | None = None,
        first_order: bool = False,
        gradient_cut: int = 0,
    ) -> tuple[StreamState, jax.Array]:
        """`write_read` from a chunk boundary, returning a `StreamState` that
        `stream` continues exactly (the chunk-parallel way to begin a stream, e.g. a
        prompt). Same arguments and outputs as ``write_read``."""
        res, y = self._run_chunks(
            state,
            q,
            k,
            v,
            _as_rates(eta, alpha, beta, rates),
            chunk_size,
            read,
            first_order,
            gradient_cut,
        )
        return StreamState(res.carry, res.boundary, jnp.asarray(res.tail, jnp.int32)), y

    def _token_step(self, st, inp, boundary=None, after=None):
        """One token of the reference and streaming drivers: read and write in the given order
        (``after``: write first; default the memory's own order), the gradient taken at
        ``boundary``."""
        after = self.inclusive if after is None else after
        qt, kt, vt, et, at_, bt = inp
        if not after:
            y = self.read(st, qt)
        st = self.write(st, kt, vt, et, at_, bt, at=boundary)
        if after:
            y = self.read(st, qt)
        return st, y

    def init_stream(self, state) -> StreamState:
        """Start a stream at a chunk boundary."""
        return StreamState(state, state, jnp.zeros([], jnp.int32))

    def stream(
        self,
        stream: StreamState,
        q,
        k,
        v,
        eta=None,
        alpha=None,
        beta=None,
        *,
        rates: Rates | None = None,
        chunk_size: int,
        read: str | None = None,
    ):
        """Continue a stream with the next tokens (``[batch, n, heads, dim]``, any ``n``).

        Cutting a sequence into pieces of any lengths and streaming them one after the other gives
        exactly what `write_read` gives on the whole sequence with the same ``chunk_size``
        (and ``read``): the chunk boundaries stay where they were (every ``chunk_size`` tokens from
        the start of the stream), because the stream carries the boundary state and the offset
        within the chunk. Token by token (a scan); meant for decoding and for resuming, not for
        training.

        Returns:
          ``(stream, y)`` with ``y: [batch, n, heads, d_v]``.
        """
        self._check_chunk(chunk_size)
        after = self._reads_after(read)
        self._check_widths(stream.state, k, v)
        arrays = self._prepare(q, k, v, _as_rates(eta, alpha, beta, rates))

        def token(carry, inp):
            st, bnd, off = carry
            st, y = self._token_step(st, inp, bnd, after)
            return advance_stream(st, bnd, off, chunk_size), y

        carry, y = jax.lax.scan(token, tuple(stream), tuple(jnp.moveaxis(a, 2, 0) for a in arrays))
        return StreamState(*carry), jnp.swapaxes(jnp.moveaxis(y, 0, 2), 1, 2)

    def write_read_reference(
        self,
        state,
        q,
        k,
        v,
        eta=None,
        alpha=None,
        beta=None,
        *,
        rates: Rates | None = None,
        chunk_size: int,
        read: str | None = None,
    ):
        """Slow twin of `write_read`: one token at a time through ``write`` and ``read``.

        Inner gradients are taken at the state of the last chunk boundary, exactly as in the
        chunk-parallel form; ``chunk_size=1`` gives the exact online recurrence.
        """
        self._check_chunk(chunk_size)
        after = self._reads_after(read)
        self._check_widths(state, k, v)
        arrays = self._prepare(q, k, v, _as_rates(eta, alpha, beta, rates))
        mv = lambda a: jnp.moveaxis(a, 2, 0)

        def token(st, inp, boundary=None):
            return self._token_step(st, inp, boundary, after)

        if chunk_size == 1:
            # every token is its own boundary: one flat scan, gradients at the current state
            state, y = jax.lax.scan(token, state, tuple(mv(a) for a in arrays))
            return state, jnp.swapaxes(jnp.moveaxis(y, 0, 2), 1, 2)

        def chunk(state, qc, kc, vc, ec, ac, bc):
            boundary = state

            step = lambda st, inp: token(st, inp, boundary)
            state, y = jax.lax.scan(step, state, tuple(mv(a) for a in (qc, kc, vc, ec, ac, bc)))
            return state, jnp.moveaxis(y, 0, 2)

        res = scan_chunks(chunk, state, arrays, chunk_size, axis=2)
        return res.carry, jnp.swapaxes(res.outputs, 1, 2)
