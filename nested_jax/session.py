"""Learning after deployment: a model that keeps learning from what it reads.

A `Session` is a deployed model's running memory: the trained params, every layer's fast
state (self-modifying and Titans memories, CMS levels, attention cache), how many tokens it has
read and the log-probabilities of its next-token prediction. It is a pytree, and every function
here is pure: `absorb` learns from a stream of tokens (no sampling) and returns the new
session and the per-token negative log-likelihood; `generate` continues a prompt and learns
from what it writes too. Cutting a stream anywhere gives the same session as one call (the model's
``step`` carries chunk boundaries across calls).

A `Policy` says which levels keep learning (``"all"``, ``"fast"``: the in-context memories
only, the CMS frozen at the trained weights, or ``"none"``; per CMS level with ``cms_levels``,
per kind with ``memories``) and when each kind of memory resets (``"never"`` or at every
`end_document`; the CMS separately with ``cms_reset``). The policy builds the
model the session runs from the trained config, so the trained run is never edited.

`save_session` / `load_session` keep a session on disk with orbax (written to a
temporary directory and renamed, so a killed process loses nothing already saved), next to but
apart from the trained weights; a session saved for another model, tokenizer or set of weights is
refused with a clear message. `absorb` checks the memory after every piece: a non-finite
state is reported and the session rolls back to the last good one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nested_jax.models.config import ModelConfig
from nested_jax.models.lm import LanguageModel, LMState, check_token_ids, sample_token

__all__ = [
    "Absorbed",
    "Policy",
    "Session",
    "SessionMismatchError",
    "absorb",
    "cms_drift",
    "end_document",
    "from_run",
    "generate",
    "list_sessions",
    "load_trained",
    "load_session",
    "open_session",
    "reset",
    "save_session",
]

log = logging.getLogger("nested_jax.session")

LEARN = ("all", "fast", "none")
RESETS = ("never", "document")


class SessionMismatchError(ValueError):
    """A saved session belongs to another model, tokenizer or set of trained weights."""


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which levels keep learning after deployment, and when each kind of memory resets.

    Two kinds of memory: the sequence layers' (self-modifying / Titans memories, the attention
    cache: they learn within a context) and the CMS levels' (the MLP weights that keep learning
    from the stream at their own frequencies).

    Attributes:
      learn: ``"all"`` (every memory and CMS level learns in context), ``"fast"`` (the sequence
        layers' memories learn; the CMS stays at its trained weights) or ``"none"`` (nothing
        learns: the memories' and the CMS's inner learning rates are zero; the memories' retention
        still applies, and attention still sees its window).
      cms_levels: per CMS level, whether it learns (overrides ``learn`` for the CMS); ``None``:
        as ``learn`` says.
      memories: whether the sequence layers' memories learn (overrides ``learn`` for them;
        ``False`` with ``learn="all"``: only the CMS learns); ``None``: as ``learn`` says.
      reset: when the sequence layers' memory resets: ``"never"`` (it persists across
        documents) or ``"document"`` (every `end_document` returns it to the trained
        initial state). `reset` resets everything on demand.
      cms_reset: the same for the CMS levels; ``None``: as ``reset``. ``reset="document",
        cms_reset="never"`` is the paper's picture of a deployed model: the fast memories start
        every context afresh, the CMS consolidates across them.
    """

    learn: str = "all"
    cms_levels: tuple | None = None
    reset: str = "never"
    memories: bool | None = None
    cms_reset: str | None = None

    def __post_init__(self):
        if self.learn not in LEARN:
            raise ValueError(f"policy learn must be one of {LEARN}, got {self.learn!r}.")
        for name in ("reset", "cms_reset"):
            value = getattr(self, name)
            if value not in RESETS and not (name == "cms_reset" and value is None):
                raise ValueError(f"policy {name} must be one of {RESETS}, got {value!r}.")
        if self.cms_levels is not None:
            object.__setattr__(self, "cms_levels", tuple(bool(x) for x in self.cms_levels))
        if self.memories is not None:
            object.__setattr__(self, "memories", bool(self.memories))

    @property
    def memories_learn(self) -> bool:
        return self.learn != "none" if self.memories is None else self.memories

    @property
    def resets(self) -> tuple[bool, bool]:
        """Whether `end_document` resets ``(sequence layers, CMS)``.

        Examples:
            >>> Policy(reset="document", cms_reset="never").resets  # the CMS consolidates
            (True, False)
            >>> Policy(reset="document").resets  # cms_reset follows reset unless given
            (True, True)
        """
        return self.reset == "document", (self.cms_reset or self.reset) == "document"

    def model_config(self, trained: ModelConfig) -> ModelConfig:
        """The config the session runs: the trained one with the policy's levels frozen."""
        cfg = trained
        if cfg.has_cms:
            periods = cfg.cms.periods
            if self.cms_levels is not None:
                if len(self.cms_levels) != len(periods):
                    raise ValueError(
                        f"policy cms_levels has {len(self.cms_levels)} entries but the model has "
                        f"{len(periods)} CMS levels {periods}."
                    )
                learns = self.cms_levels
            else:
                learns = (self.learn == "all",) * len(periods)
            periods = tuple(p if on else 0 for p, on in zip(periods, learns, strict=True))
            cfg = cfg.replace(cms={"periods": periods, "persistent": not self.resets[1]})
        if not self.memories_learn and cfg.kind != "transformer":
            cfg = cfg.replace(**{"titans.eta_max": 0.0})
        return cfg

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Policy:
        """The policy `to_json` wrote (sessions saved before ``memories`` / ``cms_reset``
        existed load with their defaults)."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "state", "position", "logp"],
    meta_fields=["model", "policy"],
)
@dataclasses.dataclass(frozen=True)
class Session:
    """A deployed model's running memory (a pytree; see the module docstring).

    Attributes:
      params: the trained params (never changed by a session).
      state: the model's `LMState` now (what it learned in context).
      position: tokens read so far (int32 scalar).
      logp: log-probabilities of the next token, ``[batch, vocab]`` (the prediction of whatever
        comes next; used to score the first token of the next call).
      model: the `LanguageModel` the session runs (the policy's config).
      policy: the `Policy`.
    """

    params: Any
    state: LMState
    position: jax.Array
    logp: jax.Array
    model: LanguageModel
    policy: Policy


def open_session(
    model: LanguageModel | ModelConfig, params, *, policy: Policy = Policy(), batch_size: int = 1
) -> Session:
    """A fresh session of a trained ``model`` (or its config) with ``params`` under ``policy``."""
    config = model.config if isinstance(model, LanguageModel) else model
    run_model = LanguageModel(policy.model_config(config))
    state = run_model.init_state(params, batch_size)
    logp = jnp.full((batch_size, config.vocab_size), -np.log(config.vocab_size), jnp.float32)
    return Session(params, state, jnp.zeros([], jnp.int32), logp, run_model, policy)


def load_trained(run_dir):
    """The newest checkpoint of a training run for deployment: ``(model, params, tokenizer)``,
    the params as plain single-device arrays (the restored ones carry the training mesh's
    sharding, which a session's fresh state does not: its step would compile twice)."""
    from nested_jax.train.loop import load_run

    run, state, _ = load_run(run_dir, load_data=False)
    params = jax.tree.map(jnp.asarray, jax.device_get(state.params))
    return run.model, params, run.tokenizer


def from_run(run_dir, *, policy: Policy = Policy(), batch_size: int = 1):
    """A fresh session of the newest checkpoint of a training run: ``(session, tokenizer)``."""
    model, params, tokenizer = load_trained(run_dir)
    return open_session(model, params, policy=policy, batch_size=batch_size), tokenizer


def reset(session: Session) -> Session:
    """The session back at the trained initial memory (on demand), position kept; the next
    token is scored as by a fresh session (uniform: nothing has been read since)."""
    fresh = session.model.init_state(session.params, session.logp.shape[0])
    uniform = jnp.full_like(session.logp, -np.log(session.logp.shape[-1]))
    return dataclasses.replace(session, state=fresh, logp=uniform)


def end_document(session: Session) -> Session:
    """A document ended: each kind of memory the policy resets per document (the sequence
    layers', the CMS's) returns to its trained initial state; the others keep what they learned.
    Resetting only the sequence layers is the model's ``next_sequence`` with a persistent CMS;
    the next token is then scored as by a fresh session."""
    seq, cms = session.policy.resets
    cms = cms and session.model.config.has_cms  # no CMS: only the sequence layers' rule counts
    if seq and (cms or not session.model.config.has_cms):
        return reset(session)
    if not (seq or cms):
        return session
    fresh = reset(session)
    if seq:  # the session's config has a persistent CMS: the model's own next_sequence
        return dataclasses.replace(
            fresh, state=session.model.next_sequence(session.params, session.state)
        )
    # the CMS restarts, the fast memories keep what they read (a CMS chunk in progress restarts)
    kept = {**session.state.layers, "cms": fresh.state.layers["cms"]}
    state = fresh.state._replace(layers=kept)
    if state.start is not None:
        state = state._replace(start=kept, teach=kept if state.teach is not None else None)
    return dataclasses.replace(session, state=state)


_COMPILED: set = set()


def _announce_compile(session: Session, shape, parallel: bool) -> None:
    """Log once per process when a piece of a new shape is about to compile (what a user waits
    for; later calls of that shape reuse it, and the CLI keeps it in its persistent cache)."""
    key = (session.model, session.policy, tuple(shape), parallel)
    if key not in _COMPILED:
        _COMPILED.add(key)
        log.info(
            "compiling the session step for pieces of %d tokens (%s) ...",
            shape[1],
            "chunk-parallel" if parallel else "token by token",
        )


@functools.partial(jax.jit, static_argnums=2)
def _absorb_piece(session: Session, tokens: jax.Array, parallel: bool):
    model = session.model
    logits, state = model.step(session.params, session.state, tokens, parallel=parallel)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, n, V]
    prev = jnp.concatenate([session.logp[:, None], logp[:, :-1]], axis=1)
    nll = -jnp.take_along_axis(prev, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state)]))
    new = dataclasses.replace(
        session, state=state, position=session.position + tokens.shape[1], logp=logp[:, -1]
    )
    return new, nll, finite & jnp.all(jnp.isfinite(logp[:, -1]))


class Absorbed(NamedTuple):
    """What `absorb` returns: the new ``session``, the per-token negative log-likelihood
    ``nll: [batch, n]`` in nats (the first token of a fresh session is scored against a uniform
    prediction), and ``rolled_back``: how many pieces left the memory non-finite and were undone."""

    session: Session
    nll: jax.Array
    rolled_back: int


def absorb(session: Session, tokens, *, piece: int | None = None) -> Absorbed:
    """Learn from ``tokens: int [batch, n]`` (or ``[n]``) without sampling.

    The stream is read in pieces of at most ``piece`` tokens (default: the model's ``max_len``),
    each a jitted `step` (a piece of a new length or form compiles; it is logged when it does):
    chunk-parallel whenever the
    memory is at a chunk boundary (``model.at_boundary``; after a cut elsewhere, token by token
    up to the next one); the memory after each piece is checked, and a piece that leaves it non-finite is
    undone (the session keeps its last good state, the piece's losses are NaN, and it is
    logged). Any cut gives the same session as one call (up to float rounding: the two forms
    sum in different orders).
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    batch = session.logp.shape[0]
    if tokens.ndim != 2 or tokens.shape[0] != batch:
        raise ValueError(
            f"tokens must be [batch={batch}, n] (or [n] for batch 1), got {tokens.shape}."
        )
    check_token_ids(tokens, session.model.config.vocab_size)
    piece = piece or session.model.config.max_len
    out, bad = [], 0
    s, n, model = 0, tokens.shape[1], session.model
    while s < n:
        # chunk-parallel from a boundary (the model's parallel step is exact only there); token
        # by token up to where a stream would reach the next one (after resetting one kind of
        # memory only, the chunks may not line up again: then token by token throughout)
        parallel = model.at_boundary(session.state)
        lead = 0 if parallel else (-int(session.position)) % model.boundary
        stop = min(n, s + piece, s + lead) if lead else min(n, s + piece)
        chunk = tokens[:, s:stop]
        s = stop
        _announce_compile(session, chunk.shape, parallel)
        new, nll, ok = _absorb_piece(session, chunk, parallel)
        if bool(ok):
            session = new
        else:
            bad += 1
            log.warning(
                "session memory became non-finite at tokens %d..%d; rolled back to the last good "
                "state (lower the policy's rates, or learn='fast' / 'none').",
                int(session.position),
                int(session.position) + chunk.shape[1],
            )
            nll = jnp.full_like(nll, jnp.nan)
        out.append(nll)
    nll = jnp.concatenate(out, axis=1) if out else jnp.zeros((batch, 0), jnp.float32)
    return Absorbed(session, nll, bad)


def generate(
    session: Session,
    prompt,
    n: int,
    *,
    key,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> tuple[Session, jax.Array]:
    """Read ``prompt`` (may be empty) then write ``n`` tokens, learning from both as from any
    stream: ``(session, tokens [batch, n])``. ``temperature=0``: greedy; ``top_k`` / ``top_p``:
    sample from the ``k`` most likely tokens / the smallest set holding ``p`` of the mass."""
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(
            f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}."
        )
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt.ndim == 1:
        prompt = prompt[None]
    if prompt.shape[1]:
        session = absorb(session, prompt).session
    toks = []
    for k in jax.random.split(key, n):
        tok = _pick(session.logp, k, temperature, top_k, top_p)
        session = absorb(session, tok[:, None]).session
        toks.append(tok)
    return session, jnp.stack(toks, axis=1) if toks else jnp.zeros((prompt.shape[0], 0), jnp.int32)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _pick(logp, key, temperature, top_k, top_p):
    return sample_token(logp, key, temperature=temperature, top_k=top_k, top_p=top_p)


# --- inspection ------------------------------------------------------------------------------
def cms_drift(session: Session) -> np.ndarray:
    """How far each CMS level has moved from its trained initial weights: ``[layers, levels]``
    relative Frobenius distance ``||W - W0|| / ||W0||`` over the level's MLP weights (batch
    averaged). Empty for models without a CMS."""
    if not session.model.config.has_cms:
        return np.zeros((0, 0))
    now = session.state.layers["cms"].params  # per level, stacked [layers, batch, ...]
    init = [lv["mlp"] for lv in session.params["layers"]["cms"]["levels"]]  # [layers, ...]
    out = []
    for w_now, w0 in zip(now, init, strict=True):
        num = sum(
            jnp.sum((a - b[:, None]) ** 2, axis=tuple(range(2, a.ndim)))
            for a, b in zip(jax.tree.leaves(w_now), jax.tree.leaves(w0), strict=True)
        )
        den = sum(jnp.sum(b**2, axis=tuple(range(1, b.ndim))) for b in jax.tree.leaves(w0))
        out.append(np.asarray(jnp.mean(jnp.sqrt(num) / jnp.sqrt(den)[:, None], axis=1)))
    return np.stack(out, axis=1)


# --- save and restore -----------------------------------------------------------------------
def _params_id(params) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()[:16]


def _meta(session: Session, tokenizer: str | None) -> dict:
    return {
        "model": json.loads(json.dumps(session.model.config.to_json())),
        "policy": session.policy.to_json(),
        "tokenizer": tokenizer,
        "params": _params_id(session.params),
        "batch": int(session.logp.shape[0]),
    }


def _session_dir(directory, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"a session name must be a plain non-empty name, got {name!r}.")
    return Path(directory) / "sessions" / name


def save_session(session: Session, directory, name: str, *, tokenizer: str | None = None) -> Path:
    """Save ``session`` as ``<directory>/sessions/<name>`` (orbax; the newest two kept, each
    saved atomically at its position): the memory, position and next-token prediction, with the
    model config, policy, tokenizer name and a fingerprint of the trained weights."""
    from nested_jax.train.checkpoint import Checkpoints

    ck = Checkpoints(_session_dir(directory, name), keep=2)
    try:
        data = {"state": session.state, "position": session.position, "logp": session.logp}
        return ck.save(int(session.position), data, None, _meta(session, tokenizer))
    finally:
        ck.close()


def list_sessions(directory) -> list[dict]:
    """The sessions saved under ``directory``: name, position, policy, tokenizer."""
    from nested_jax.train.checkpoint import Checkpoints

    root = Path(directory) / "sessions"
    out = []
    for d in sorted(p for p in root.glob("*") if p.is_dir()) if root.exists() else []:
        ck = Checkpoints(d, keep=2)
        try:
            if ck.steps:
                meta = ck.metadata(ck.steps[-1])
                out.append(
                    {
                        "name": d.name,
                        "position": ck.steps[-1],
                        "policy": meta.get("policy"),
                        "tokenizer": meta.get("tokenizer"),
                    }
                )
        finally:
            ck.close()
    return out


def load_session(
    directory,
    name: str,
    model: LanguageModel | ModelConfig,
    params,
    *,
    tokenizer: str | None = None,
) -> Session:
    """The newest save of session ``name`` for this trained ``model`` / ``params`` (and
    ``tokenizer``). A session saved for another model, tokenizer or set of weights raises
    `SessionMismatchError` saying which."""
    from nested_jax.train.checkpoint import Checkpoints

    path = _session_dir(directory, name)
    if not path.exists():
        raise FileNotFoundError(f"no session {name!r} under {Path(directory) / 'sessions'}.")
    ck = Checkpoints(path, keep=2)
    try:
        if not ck.steps:
            raise FileNotFoundError(f"session {name!r} at {path} has no saved state.")
        meta = ck.metadata(ck.steps[-1])
        policy = Policy.from_json(meta["policy"])
        base = open_session(model, params, policy=policy, batch_size=int(meta["batch"]))
        mine = _meta(base, tokenizer)

        def check(theirs, where):
            for key, what in (
                ("model", "model config"),
                ("tokenizer", "tokenizer"),
                ("params", "trained weights"),
            ):
                if theirs.get(key) != mine[key]:
                    raise SessionMismatchError(
                        f"session {name!r} ({where}) was saved for another {what} "
                        f"({theirs.get(key)!r} vs {mine[key]!r} here); open it with the model it "
                        "was saved from, or start a new session."
                    )

        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
            {"state": base.state, "position": base.position, "logp": base.logp},
        )
        got = ck.restore(abstract, None, check_meta=check)
        if got is None:
            raise FileNotFoundError(f"session {name!r} at {path} has no readable save.")
        _, data, _ = got
    finally:
        ck.close()
    return dataclasses.replace(
        base, state=data["state"], position=data["position"], logp=data["logp"]
    )
