"""Checkpoints with orbax-checkpoint v1 (``ocp.training.Checkpointer``).

A checkpoint at step ``s`` holds the train state after ``s`` steps (``"state"``: parameters,
optimizer state, step, RNG), the data iterator's position (``"data"``: the grain iterator, a JSON
checkpointable) and, as custom metadata, the run's config, its model config and a fingerprint
of the state (per-leaf sums) checked on restore. Orbax writes each checkpoint to a temporary
directory and renames it on commit, so a crash mid-save never leaves a partial step; the newest
``keep`` are kept.

`Checkpoints.restore` starts from the newest step; a step that cannot be read (truncated,
corrupted, fingerprint mismatch) is reported by name, moved aside to ``corrupt-<step>`` (nothing
is deleted) and the previous one is tried. A checkpoint made for a different model (vocabulary,
shapes) is not corruption: it raises `CheckpointMismatchError`.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Checkpoints", "CheckpointMismatchError", "CorruptCheckpointError", "fingerprint"]

log = logging.getLogger("nested_jax.train")


class CheckpointMismatchError(ValueError):
    """The checkpoint was written for a different model or vocabulary than the config gives."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint step exists but cannot be restored."""


@jax.jit
def _sums(tree):
    return [jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)]


def fingerprint(tree) -> list[float]:
    """Per-leaf ``sum |x|`` of the numeric leaves (a cheap corruption check)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.number)]
    return [float(s) for s in _sums(leaves)]


def _same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=1e-5, atol=1e-6))


class Checkpoints:
    """The run's checkpoints under ``directory``; keeps the newest ``keep``."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        from orbax.checkpoint import v1 as ocp

        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ck = ocp.training.Checkpointer(
            self.directory,
            preservation_policy=ocp.training.preservation_policies.LatestN(keep),
            cleanup_tmp_directories=True,
        )

    @property
    def steps(self) -> list[int]:
        return sorted(c.step for c in self._ck.checkpoints)

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, state: Any, data_iter: Any, meta: dict) -> Path:
        """Save synchronously (returns once committed)."""
        meta = dict(meta, fingerprint=fingerprint(state))
        items = {"state": state} if data_iter is None else {"state": state, "data": data_iter}
        self._ck.save_checkpointables(step, items, custom_metadata=meta, force=True, overwrite=True)
        self._ck.wait()
        return self.path(step)

    def metadata(self, step: int) -> dict:
        meta = self._ck.metadata(step).custom_metadata
        if not isinstance(meta, dict) or not {"model", "fingerprint"} <= set(meta):
            raise CorruptCheckpointError(f"checkpoint {self.path(step)} has no run metadata.")
        return meta

    def _quarantine(self, step: int, err: Exception) -> None:
        src = self.path(step)
        dst = self.directory / f"corrupt-{step}"
        n = 1
        while dst.exists():
            n += 1
            dst = self.directory / f"corrupt-{step}.{n}"
        log.error(
            "checkpoint %s cannot be restored: %s. Moved it to %s (delete it when you no longer "
            "need it); resuming from the previous checkpoint.",
            src,
            _reason(err),
            dst,
        )
        os.rename(src, dst)
        self._ck.reload()

    def _skip(self, step: int, err: Exception) -> None:
        log.error(
            "checkpoint %s cannot be restored: %s. Reading the previous checkpoint instead "
            "(this one is left in place; resuming the run moves it aside).",
            self.path(step),
            _reason(err),
        )

    def restore(self, abstract_state: Any, data_iter: Any, check_meta=None, *, read_only=False):
        """Restore the newest readable step: ``(step, state, meta)``, or ``None`` if there is none.

        ``abstract_state``: a pytree of ``jax.ShapeDtypeStruct`` (with shardings) giving the
        structure, shapes, dtypes and placement. ``data_iter`` (may be ``None``) is restored in
        place. ``check_meta(meta, path)`` may raise `CheckpointMismatchError`.
        ``read_only``: an unreadable step is reported and skipped but not moved aside (for
        commands that only read a run: eval, generate, sessions).
        """
        # in a multi-process job only process 0 moves a bad step aside (the others skip it)
        bad = self._skip if read_only or jax.process_index() != 0 else self._quarantine
        for step in reversed(self.steps):
            try:
                with _quiet_orbax():
                    meta = self.metadata(step)
            except Exception as e:  # unreadable metadata: corrupt
                bad(step, e)
                continue
            if check_meta is not None:
                check_meta(meta, self.path(step))  # a mismatch is the user's to fix: raise
            items = {"state": abstract_state}
            if data_iter is not None:
                items["data"] = data_iter
            try:
                with _quiet_orbax():
                    out = self._ck.load_checkpointables(step, items)
                state = out["state"]
                if not _same(fingerprint(state), meta.get("fingerprint", [])):
                    raise CorruptCheckpointError("the restored values do not match the fingerprint")
            except Exception as e:
                bad(step, e)
                continue
            return step, state, meta
        return None

    def close(self):
        self._ck.close()


def _reason(err: Exception) -> str:
    """What went wrong with a checkpoint, in a sentence (orbax's own message at DEBUG level)."""
    log.debug("checkpoint restore failed", exc_info=err)
    if isinstance(err, CorruptCheckpointError):
        return str(err)
    text = str(err)
    markers = ("DATA_LOSS", "Error decoding", "incompatible handler", "NOT_FOUND", "No such file")
    for marker in markers:
        if marker in text:
            return f"its files are damaged or incomplete ({type(err).__name__}; {marker})"
    first = text.splitlines()[0][:160] if text else ""
    return f"its files could not be read ({type(err).__name__}: {first})"


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax, absl and uvloop print tracebacks and coroutine warnings for every unreadable file;
    the restore reports each bad checkpoint itself, in one line (what they printed is logged at
    DEBUG level). After a failed read, orbax's abandoned tasks would report the same error again
    when the process ends: asyncio's "never retrieved" log stays silenced from then on."""
    loggers = [logging.getLogger(n) for n in ("absl", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    failed = True
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()) as err:
            warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
            try:
                yield
                failed = False
            finally:
                gc.collect()  # orbax's failed futures report themselves when collected: now
        if err.getvalue():
            log.debug("orbax printed while restoring:\n%s", err.getvalue())
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            if not (failed and lg.name == "asyncio"):
                lg.setLevel(level)
        if failed and not getattr(sys.unraisablehook, "_nested_jax", False):
            sys.unraisablehook = _drop_orbax_leftovers(sys.unraisablehook)


def _drop_orbax_leftovers(previous):
    """An unraisable-exception hook that drops what orbax's abandoned reads raise later (their
    event loop closed, their coroutines never awaited) and passes everything else on."""

    def hook(unraisable):
        exc = unraisable.exc_value
        leftover = (isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)) or (
            "orbax" in repr(unraisable.object) or "_read_array" in repr(unraisable.object)
        )
        if not leftover:
            previous(unraisable)

    hook._nested_jax = True
    return hook
