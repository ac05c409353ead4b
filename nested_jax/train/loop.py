"""The training loop: `Run` (everything a run needs, built and checked once) and
`train` / `evaluate` / `generate` on top of it.

A run lives in one directory::

    OUT/config.json        the TrainConfig (resuming re-reads nothing else)
    OUT/checkpoints/<step> orbax checkpoints (state + data position + metadata), newest `keep`
    OUT/metrics.jsonl      one JSON object per logged step / evaluation (append-only, flushed);
                           each process's first step also writes ``first_step_s`` (compile +
                           one step: the wait before training starts)
    OUT/loss.png           the loss curve (at the end)
    OUT/tokenizer.json     the BPE vocabulary (BPE runs only)
    OUT/tb/                TensorBoard events (``tensorboard=True``)

Running the same command again resumes from the newest good checkpoint, with the same batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nested_jax.models import LanguageModel, sample_token
from nested_jax.models.migrate import RENAMED, migrate_model_json, migrate_model_name
from nested_jax.train import data as data_lib
from nested_jax.train import sharding as sh
from nested_jax.train.checkpoint import CheckpointMismatchError, Checkpoints
from nested_jax.train.config import ConfigError, TrainConfig, dumps, model_config, validate
from nested_jax.train.optimizers import make_optimizer, make_schedule
from nested_jax.train.step import bits_per_byte, eval_step, init_train_state, train_step

__all__ = ["Run", "RunResult", "NonFiniteLossError", "train", "evaluate", "generate", "sample"]

log = logging.getLogger("nested_jax.train")


class NonFiniteLossError(RuntimeError):
    """A step produced a non-finite loss or gradient (the update was not applied).

    Attributes:
      step: the step (1-based) whose loss or gradient was non-finite (``None`` if unknown).
    """

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


@dataclasses.dataclass
class RunResult:
    """What a run ended with; ``train_s``: its training time so far (seconds, every resume
    counted, the first step's compile not); ``budget_spent``: it stopped at ``max_minutes``."""

    out_dir: Path
    step: int
    train_loss: float
    val_loss: float
    val_bpb: float
    checkpoint: Path | None
    skipped: int
    train_s: float = float("nan")
    budget_spent: bool = False


def _json_model(mc) -> dict:
    """A model config as flat JSON values keyed by field path (``"cms.periods"``)."""
    return _flat(json.loads(json.dumps(mc.to_json())))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


@dataclasses.dataclass(frozen=True)
class _Compiled:
    opt: Any
    schedule: Any
    state_sharding: Any
    abstract_state: Any
    init: Any
    step: Any
    eval: Any


@functools.lru_cache(maxsize=16)
def _compiled(model_config, optim_config, steps: int, mesh) -> _Compiled:
    """The jitted init / train / eval functions of one (model, optimizer, steps, mesh), shared
    by every `Run` that has them (re-creating a run, or resuming in the same process,
    does not recompile)."""
    model = LanguageModel(model_config)
    opt = make_optimizer(optim_config, steps)
    init = functools.partial(init_train_state, model, opt)
    abstract = jax.eval_shape(init, jax.random.key(0))
    state_sharding = sh.param_sharding(abstract, mesh)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding
    )
    bs, rep = sh.batch_sharding(mesh), sh.replicated(mesh)
    return _Compiled(
        opt,
        make_schedule(optim_config, steps),
        state_sharding,
        abstract_state,
        jax.jit(init, out_shardings=state_sharding),
        jax.jit(
            functools.partial(train_step, model, opt),
            in_shardings=(state_sharding, bs),
            out_shardings=(state_sharding, rep),
            donate_argnums=0,
        ),
        jax.jit(
            functools.partial(eval_step, model),
            in_shardings=(state_sharding.params, bs),
            out_shardings=rep,
        ),
    )


class Run:
    """A configured run: data, model, optimizer, mesh, jitted steps and checkpoints.

    ``load_data=False`` (for ``generate``) skips the corpus; the vocabulary then comes from the
    run directory (its checkpoints and saved tokenizer)."""

    def __init__(self, cfg: TrainConfig, out_dir: str | os.PathLike, *, load_data: bool = True):
        self.out_dir = Path(out_dir)
        self.cfg = cfg = self._renamed(validate(cfg))
        if cfg.distributed:
            sh.initialize_distributed()
        d = cfg.data
        self.splits = None
        if load_data:
            self.splits = data_lib.prepare(
                d.corpus,
                tokenizer=d.tokenizer,
                bpe_vocab=d.bpe_vocab,
                val_fraction=d.val_fraction,
                seed=cfg.seed,
                cache_dir=d.cache_dir,
            )
            self.tokenizer, vocab = self.splits.tokenizer, self.splits.vocab_size
            tr, va = self.splits.n_docs
            log.info(
                "data %s (%s tokens): %s training and %s validation tokens (%d / %d documents)",
                d.corpus,
                self.splits.tokenizer.name if self.splits.tokenizer is not None else "npy",
                f"{len(self.splits.train):,}",
                f"{len(self.splits.val):,}",
                tr,
                va,
            )
            data_lib.check_length(self.splits.train, d.seq_len, "training")
            if len(self.splits.val):
                self._val_windows()  # a too-small validation split stops the run before training
        else:
            self.tokenizer, vocab = self._saved_tokenizer()
        self.model_config = model_config(cfg, vocab_size=vocab)
        self.model = LanguageModel(self.model_config)
        try:
            self.mesh = sh.make_mesh(*cfg.mesh)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        n_rows = self.mesh.size  # the batch is split over every device of the mesh
        if d.batch_size % n_rows or d.batch_size % jax.process_count():
            raise ConfigError(
                f"data.batch_size={d.batch_size} must be a multiple of the mesh's size "
                f"({dict(self.mesh.shape)}: {n_rows} devices, each computing its own rows) and of "
                f"the number of hosts ({jax.process_count()}); change data.batch_size or mesh."
            )
        c = _compiled(self.model_config, cfg.optim, cfg.steps, self.mesh)
        self.opt, self.schedule = c.opt, c.schedule
        self.state_sharding, self.abstract_state = c.state_sharding, c.abstract_state
        self._init, self._train_step, self._eval = c.init, c.step, c.eval
        self.ckpt = Checkpoints(self.out_dir / "checkpoints", cfg.keep)

    # ---------------------------------------------------------------------------- helpers
    def _renamed(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg``, or for a run saved before decisions D95 (D99) under a registry name whose
        model moved (``hope_tiny``), the same run naming the model it trained
        (``hope_paper_tiny``), read off its newest checkpoint."""
        directory = self.out_dir / "checkpoints"
        if cfg.model not in RENAMED or not directory.is_dir():
            return cfg
        ck = Checkpoints(directory, cfg.keep)
        try:
            saved = ck.metadata(ck.steps[-1])["model"] if ck.steps else None
        except Exception:  # noqa: BLE001 (a bad checkpoint is reported where it is restored)
            saved = None
        finally:
            ck.close()
        new = cfg.model if saved is None else migrate_model_name(cfg.model, saved)
        if new != cfg.model:
            log.warning(
                "%s was trained as %r before that name's model changed (decisions D95, D99); it is "
                "the model now named %r, and is loaded as that.",
                self.out_dir,
                cfg.model,
                new,
            )
        return dataclasses.replace(cfg, model=new)

    def _saved_tokenizer(self):
        path = self.out_dir / "tokenizer.json"
        if self.cfg.data.tokenizer == "bpe":
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: this BPE run's vocabulary is gone.")
            import tokenizers

            tok = data_lib.BPETokenizer(tokenizers.Tokenizer.from_file(str(path)))
            return tok, tok.vocab_size
        if Path(self.cfg.data.corpus).suffix == ".npy":
            ck = Checkpoints(self.out_dir / "checkpoints", self.cfg.keep)
            if not ck.steps:
                raise FileNotFoundError(f"no checkpoint in {ck.directory}.")
            return None, int(ck.metadata(ck.steps[-1])["model"]["vocab_size"])
        return data_lib.ByteTokenizer(), 256

    def meta(self) -> dict:
        tok = self.tokenizer.name if self.tokenizer is not None else "npy"
        return {
            "config": self.cfg.to_json(),
            "model": _json_model(self.model_config),
            "tokenizer": tok,
        }

    def check_meta(self, meta: dict, path: Path) -> None:
        mine = _json_model(self.model_config)
        theirs = _flat(migrate_model_json(meta.get("model", {})))  # and flat names of older runs
        if theirs.get("vocab_size") != mine["vocab_size"]:
            raise CheckpointMismatchError(
                f"checkpoint {path} was trained with vocab_size {theirs.get('vocab_size')} "
                f"(tokenizer {meta.get('tokenizer')!r}), but this config gives "
                f"{mine['vocab_size']} (tokenizer {self.meta()['tokenizer']!r}). Use the run's "
                "own data/tokenizer settings, or a new output directory for a new run."
            )
        diff = sorted(k for k in mine if theirs.get(k) != mine[k])
        if diff:
            raise CheckpointMismatchError(
                f"checkpoint {path} was trained with a different model: "
                + ", ".join(f"{k}={theirs.get(k)!r} (config: {mine[k]!r})" for k in diff)
                + ". Use the run's config, or a new output directory for a new run."
            )

    def data_iterator(self):
        import grain

        d = self.cfg.data
        local = d.batch_size // jax.process_count()
        ds = data_lib.train_dataset(
            self.splits.train,
            seq_len=d.seq_len,
            batch_size=local,
            seed=self.cfg.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        opts = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
        return iter(ds.to_iter_dataset(read_options=opts))

    def init_state(self):
        return self._init(jax.random.key(self.cfg.seed))

    def step(self, state, batch: jax.Array):
        """One jitted training step: ``(state, metrics)`` (a non-finite step is not applied)."""
        return self._train_step(state, batch)

    def restore(self, data_iter=None, *, read_only: bool = False):
        """``(step, state)`` from the newest good checkpoint, or ``None`` (``read_only``: leave
        unreadable checkpoints where they are; see `Checkpoints.restore`)."""
        got = self.ckpt.restore(
            self.abstract_state, data_iter, check_meta=self.check_meta, read_only=read_only
        )
        if got is None:
            return None
        step, state, _ = got
        return step, state

    def save(self, step: int, state, data_iter) -> Path:
        return self.ckpt.save(step, state, data_iter, self.meta())

    def batch(self, local: np.ndarray) -> jax.Array:
        return sh.global_batch(np.asarray(local, np.int32), self.mesh)

    def _val_windows(self):
        """The validation windows; a `DataError` if they do not fill one batch."""
        d = self.cfg.data
        w = data_lib.eval_windows(self.splits.val, seq_len=d.seq_len, max_windows=10**9)
        if len(w) < d.batch_size:
            raise data_lib.DataError(
                f"the validation split holds {len(w)} windows of {d.seq_len} tokens, fewer than "
                f"one batch ({d.batch_size}); lower data.batch_size or data.seq_len, or raise "
                "data.val_fraction."
            )
        return w

    def evaluate(self, params) -> dict:
        """Validation loss (nats / token) and bits per byte over ``eval_batches`` batches."""
        d = self.cfg.data
        if self.splits is None or len(self.splits.val) == 0:
            return {"val_loss": float("nan"), "val_bpb": float("nan")}
        w = self._val_windows()
        n = min(len(w) // d.batch_size, d.eval_batches)
        pc, pi = jax.process_count(), jax.process_index()
        losses = []
        for i in range(n):
            rows = w[i * d.batch_size : (i + 1) * d.batch_size][pi::pc]
            losses.append(float(self._eval(params, self.batch(rows))))
        loss = float(np.mean(losses))
        return {"val_loss": loss, "val_bpb": bits_per_byte(loss, self.splits.bytes_per_token)}


# ----------------------------------------------------------------------------- metrics sink
class _Metrics:
    """Append-only JSONL (flushed per record), optional TensorBoard, the PNG at the end. In a
    multi-process job only process 0 writes (``enabled``); the values are the job's, the same
    on every process."""

    def __init__(self, out_dir: Path, resume_step: int, tensorboard: bool, enabled: bool = True):
        self.path = out_dir / "metrics.jsonl"
        self.f = self.tb = None
        if not enabled:
            return
        if self.path.exists():  # drop records past the step we resume from (they are redone)
            keep = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_step
            ]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, self.path)
        self.f = open(self.path, "a")  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as e:
                raise ConfigError(
                    "tensorboard=True needs the tensorboardX package: pip install tensorboardX"
                ) from e
            self.tb = SummaryWriter(str(out_dir / "tb"))

    def write(self, record: dict) -> None:
        if self.f is None:
            return
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(out_dir) -> list[dict]:
    path = Path(out_dir) / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def plot_losses(out_dir) -> Path | None:
    """``OUT/loss.png`` from ``metrics.jsonl`` (``None`` if matplotlib is missing)."""
    try:  # a Figure of its own, no pyplot: the caller's backend (a notebook's inline one) stays
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: no loss plot.")
        return None
    rec = read_metrics(out_dir)
    tr = [(r["step"], r["loss"]) for r in rec if "loss" in r]
    va = [(r["step"], r["val_loss"]) for r in rec if "val_loss" in r]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    if tr:
        ax.plot(*zip(*tr, strict=True), label="train")
    if va:
        ax.plot(*zip(*va, strict=True), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("next-token loss (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    path = Path(out_dir) / "loss.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


# ------------------------------------------------------------------------------- the loop
class _Stops:
    """Ctrl-C and SIGTERM (what schedulers, CI and ending sessions send) stop a run between
    steps: a signal that lands inside `between_steps`'s block (one step, its logging, evaluation
    and checkpoint) is held until the block ends, then raised as `KeyboardInterrupt`, so the loop
    saves a checkpoint of a whole step. A second signal while one is held stops at once: the
    block is then ``torn`` (its step half done, its input state possibly donated to it), so
    nothing is saved and the newest checkpoint stays the resume point. The previous handlers are
    restored after; off the main thread, where handlers cannot be set, nothing changes."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.held: int | None = None
        self.inside = False
        self.torn = False
        self.old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)
        return False

    def _handler(self, signum, frame):
        if self.inside and self.held is None:
            self.held = signum
            log.warning("signal %d: stopping after this step (signal again to stop now)", signum)
            return
        raise KeyboardInterrupt(f"signal {signum}")

    @contextlib.contextmanager
    def between_steps(self):
        self.inside = True
        try:
            yield
        except BaseException:
            self.torn = True
            raise
        finally:
            self.inside = False
        if self.held is not None:
            raise KeyboardInterrupt(f"signal {self.held}")


def train(
    cfg: TrainConfig, out_dir: str | os.PathLike, *, progress: bool = True, resume: bool = True
) -> RunResult:
    """Train (or resume) the run in ``out_dir``. Raises `NonFiniteLossError` on a
    non-finite step under ``nan_policy="stop"`` (the last good checkpoint stays as it was). A
    finished run (its newest checkpoint at ``steps``) is left as it is."""
    run = Run(cfg, out_dir)  # data and config errors raise here, before any folder is made
    if resume and (done := _finished(run)) is not None:
        return done
    _write_run_files(run, resume)
    it = run.data_iterator()
    step, state = _start(run, it, resume)
    hooks = _Hooks(run, step, progress)
    guard = _NanGuard(run.cfg, hooks)
    with _Stops() as stops:
        try:
            while step < run.cfg.steps and not hooks.budget_spent:
                with stops.between_steps():
                    state, m = hooks.step(state, run.batch(next(it)), step + 1)
                    step += 1
                    guard.check(step, m)
                    hooks.after_step(step, state, m, it)
            ev = hooks.finish(step, state, it)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep the current step, then stop
            hooks.interrupted(step, state, it, torn=stops.torn)
            raise
        finally:  # whatever happened: the bar, the files and the checkpointer closed
            hooks.close()
    return hooks.result(step, state, ev)


def _finished(run: Run) -> RunResult | None:
    """The result of a run whose newest checkpoint is at its last step (nothing is trained,
    and its files are left alone; a changed config is reported and not used), else ``None``."""
    cfg, saved = run.cfg, run.out_dir / "config.json"
    if not (saved.exists() and run.ckpt.steps):
        return None
    step = run.ckpt.steps[-1]
    rec = read_metrics(run.out_dir) if (run.out_dir / "metrics.jsonl").exists() else []
    last = lambda key: next((r[key] for r in reversed(rec) if key in r), float("nan"))
    spent = _budget_spent(cfg, last("train_s"))
    if step < cfg.steps and not spent:
        return None
    if TrainConfig.from_json(json.loads(saved.read_text())) != cfg:
        log.warning("%s differs from this config; the run is finished, so it is not used.", saved)
    skipped = sum(1 for r in rec if r.get("skipped"))
    ckpt = run.ckpt.path(step)
    run.ckpt.close()
    log.info(
        "the run in %s is finished (step %d of %d%s; train loss %.4f, val loss %.4f, %.3f "
        "bits/byte); nothing to train. Raise %s to train it further.",
        run.out_dir,
        step,
        cfg.steps,
        f", its {cfg.max_minutes:g}-minute budget spent" if spent else "",
        last("loss"),
        last("val_loss"),
        last("val_bpb"),
        "max_minutes" if spent else "steps",
    )
    return RunResult(
        run.out_dir,
        step,
        last("loss"),
        last("val_loss"),
        last("val_bpb"),
        ckpt,
        skipped,
        last("train_s"),
        spent,
    )


def _budget_spent(cfg: TrainConfig, train_s: float) -> bool:
    """Whether ``train_s`` seconds of training have used the run's ``max_minutes``."""
    return bool(cfg.max_minutes) and math.isfinite(train_s) and train_s >= 60 * cfg.max_minutes


def _write_run_files(run: Run, resume: bool) -> None:
    """The run directory with this config (atomically) and the BPE vocabulary; resuming with a
    changed config (other than more steps) is reported."""
    cfg, out_dir = run.cfg, run.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() != 0:  # a multi-process job: process 0 writes the run's files
        return
    saved = out_dir / "config.json"
    if saved.exists() and resume and run.ckpt.steps:
        old = TrainConfig.from_json(json.loads(saved.read_text()))
        if dataclasses.replace(old, steps=cfg.steps) != cfg:  # more steps is not a change
            log.warning("%s differs from this run's config; resuming with the new one.", saved)
    tmp = saved.with_suffix(".tmp")
    tmp.write_text(dumps(cfg))
    os.replace(tmp, saved)
    if run.tokenizer is not None and run.tokenizer.name == "bpe":
        run.tokenizer.save(out_dir / "tokenizer.json")


def _start(run: Run, it, resume: bool):
    """``(step, state)``: the newest good checkpoint's (the data iterator moved to its
    position), or a fresh state at step 0."""
    got = run.restore(it) if resume else None
    if got is None:
        return 0, run.init_state()
    log.info("resumed from %s at step %d", run.ckpt.path(got[0]), got[0])
    return got


class _NanGuard:
    """The NaN policy (the train step never applies a non-finite update): ``"stop"`` raises
    `NonFiniteLossError`; ``"skip"`` goes on, up to ``max_skips`` in a row."""

    def __init__(self, cfg: TrainConfig, hooks: _Hooks):
        self.cfg, self.hooks, self.in_row = cfg, hooks, 0

    def check(self, step: int, m: dict) -> None:
        if bool(m["finite"]):
            self.in_row = 0
            return
        where = (
            f"non-finite loss ({float(m['loss'])}) or gradient norm ({float(m['grad_norm'])}) at "
            f"step {step} (data batch {step - 1}); the update was not applied"
        )
        last = self.hooks.last_ckpt
        good = f"the last good checkpoint is {last}" if last else "no checkpoint"
        self.in_row += 1
        if self.cfg.nan_policy == "stop" or self.in_row > self.cfg.max_skips:
            why = "" if self.cfg.nan_policy == "stop" else f" ({self.in_row} in a row)"
            raise NonFiniteLossError(f"{where}{why}. Stopping; {good}.", step=step)
        log.warning("%s; skipping (nan_policy='skip').", where)
        self.hooks.metrics.write({"step": step, "skipped": True})


class _Hooks:
    """What happens around the steps: the first step's timing, logged metrics and the progress
    bar, evaluations and checkpoints on schedule, the final save and evaluation."""

    def __init__(self, run: Run, step: int, progress: bool):
        cfg = self.cfg = run.cfg
        self.run, self.progress, self.first = run, progress, True
        self.primary = jax.process_index() == 0  # a multi-process job: process 0 reports
        self.metrics = _Metrics(run.out_dir, step, cfg.tensorboard, enabled=self.primary)
        self.last_ckpt = run.ckpt.path(run.ckpt.steps[-1]) if run.ckpt.steps else None
        self.tokens = cfg.data.batch_size * cfg.data.seq_len
        self.loss, self.bar = float("nan"), None
        self.t_last, self.steps_since = time.perf_counter(), 0
        # training time so far, across resumes (the first step of each process, which compiles,
        # is not counted): read back from the metrics of the steps this run keeps
        past = read_metrics(run.out_dir) if (run.out_dir / "metrics.jsonl").exists() else []
        rec = [r for r in past if "train_s" in r and r["step"] <= step]
        self.train_s = rec[-1]["train_s"] if rec else 0.0
        params = jax.tree.leaves(run.abstract_state.params)
        log.info(
            "model %s (%s, %.2fM parameters), %s on %d device(s) mesh %s; %d tokens/step",
            cfg.model,
            run.model_config.kind,
            sum(int(np.prod(a.shape)) for a in params) / 1e6,
            cfg.optim.name,
            jax.device_count(),
            dict(run.mesh.shape),
            self.tokens,
        )
        if step < cfg.steps:
            log.info("compiling the train step (the first step includes it) ...")

    def step(self, state, batch: jax.Array, step: int):
        """Run training step number ``step`` (1-based); the first one is timed (compile, or a
        compile-cache load, plus one step: what a user waits for)."""
        t = time.perf_counter()
        state, m = self.run.step(state, batch)
        self.loss = float(m["loss"])
        dt = time.perf_counter() - t
        if not self.first:
            self.train_s += dt
        else:
            self.first = False
            self.metrics.write({"step": step, "first_step_s": dt})
            log.info("first step %.1f s (compiling the train step included)", dt)
            self._new_bar(step - 1)  # after it: compile time is not in the bar's speed or ETA
        return state, m

    def after_step(self, step: int, state, m: dict, it) -> None:
        cfg = self.cfg
        self.steps_since += 1
        if cfg.log_every and step % cfg.log_every == 0 or step == cfg.steps:
            self._log(step, m)
        if self.bar is not None:
            self.bar.update(1)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            self._evaluate(step, state)
        if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
            self.last_ckpt = self.run.save(step, state, it)
        if cfg.step_sleep:
            time.sleep(cfg.step_sleep)

    @property
    def budget_spent(self) -> bool:
        """Whether the training time has reached ``max_minutes``."""
        return _budget_spent(self.cfg, self.train_s)

    def _new_bar(self, at: int) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            return
        show = self.progress and self.primary
        self.bar = tqdm(total=self.cfg.steps, initial=at, disable=not show, unit="step")

    def _log(self, step: int, m: dict) -> None:
        now = time.perf_counter()
        rate = self.steps_since * self.tokens / max(now - self.t_last, 1e-9)
        self.t_last, self.steps_since = now, 0
        rec = {
            "step": step,
            "loss": self.loss,
            "grad_norm": float(m["grad_norm"]),
            "lr": float(self.run.schedule(step - 1)),
            "tokens_per_s": rate,
            "train_s": self.train_s,
        }
        self.metrics.write(rec)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.loss:.3f}", tok_s=f"{rate:,.0f}")

    def _evaluate(self, step: int, state) -> None:
        t_eval = time.perf_counter()
        ev = self.run.evaluate(state.params)
        self.metrics.write({"step": step, **ev})
        log.info("step %d: val loss %.4f, %.3f bits/byte", step, *ev.values())
        self.t_last += time.perf_counter() - t_eval  # evaluation is not training speed
        if self.bar is not None:
            self.bar.unpause()  # nor in the bar's (its timer restarts from its last print)

    def _save_if_new(self, step: int, state, it) -> None:
        if self.run.ckpt.steps and self.run.ckpt.steps[-1] == step:
            return
        self.last_ckpt = self.run.save(step, state, it)

    def finish(self, step: int, state, it) -> dict:
        """The final checkpoint and evaluation (also when the time budget ends the run)."""
        if self.budget_spent and step < self.cfg.steps:
            self.metrics.write({"step": step, "train_s": self.train_s})
            log.info(
                "time budget of %g minutes reached at step %d of %d; checkpointing and "
                "evaluating. Raise max_minutes to go on.",
                self.cfg.max_minutes,
                step,
                self.cfg.steps,
            )
        self._save_if_new(step, state, it)
        ev = self.run.evaluate(state.params)
        self.metrics.write({"step": step, **ev})
        return ev

    def interrupted(self, step: int, state, it, *, torn: bool) -> None:
        """Save the last whole step, unless the stop tore a step (`_Stops`)."""
        self.metrics.write({"step": step, "train_s": self.train_s})  # the budget's clock
        if torn:
            log.warning(
                "stopped inside a step, so nothing is saved; the newest checkpoint (%s) is "
                "where a run resumes.",
                self.last_ckpt,
            )
        else:
            self._save_if_new(step, state, it)
        log.warning(
            "interrupted at step %d; newest checkpoint %s. Run again to resume.",
            step,
            self.last_ckpt,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.metrics.close()
        self.run.ckpt.close()

    def result(self, step: int, state, ev: dict) -> RunResult:
        if self.cfg.plot and self.primary:
            plot_losses(self.run.out_dir)
        log.info(
            "done: step %d, train loss %.4f, val loss %.4f (%.3f bits/byte); checkpoint %s",
            step,
            self.loss,
            ev["val_loss"],
            ev["val_bpb"],
            self.last_ckpt,
        )
        return RunResult(
            self.run.out_dir,
            step,
            self.loss,
            ev["val_loss"],
            ev["val_bpb"],
            self.last_ckpt,
            int(state.skipped),
            self.train_s,
            self.budget_spent and step < self.cfg.steps,
        )


def _readable(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` for reading its run in this process: a multi-process job's run, or one whose mesh
    does not fit the devices here (or their number does not divide its batch), is read on one
    device (the checkpoint is restored onto whatever mesh the reader has)."""
    n = jax.device_count()
    data, fsdp = cfg.mesh
    size = n if data == 0 else data * fsdp
    fits = (n % fsdp == 0 if data == 0 else size <= n) and cfg.data.batch_size % size == 0
    if fits and not cfg.distributed:
        return cfg
    log.info(
        "reading the run on one device (it was trained on mesh %s%s)",
        cfg.mesh,
        " by several processes" if cfg.distributed else "",
    )
    return dataclasses.replace(cfg, mesh=(1, 1), distributed=False)


def load_run(out_dir, *, load_data: bool = True) -> tuple[Run, Any, int]:
    """The run in ``out_dir`` and its newest good state: ``(run, state, step)``."""
    out_dir = Path(out_dir)
    saved = out_dir / "config.json"
    if not saved.exists():
        raise FileNotFoundError(f"{saved} not found: {out_dir} is not a training run directory.")
    cfg = _readable(TrainConfig.from_json(json.loads(saved.read_text())))
    run = Run(cfg, out_dir, load_data=load_data)
    got = run.restore(None, read_only=True)  # reading a run never changes it
    if got is None:
        steps = run.ckpt.steps
        run.ckpt.close()  # orbax's background threads end before the error does
        if steps:
            raise FileNotFoundError(
                f"no checkpoint in {run.ckpt.directory} can be restored (steps {steps}, each "
                "reported above). Train again into a new directory (`nested-jax train --out "
                "NEW_DIR ...`), or put back an intact copy of the checkpoints."
            )
        raise FileNotFoundError(
            f"no checkpoint in {run.ckpt.directory} yet: the run saved none (it was stopped "
            "before its first checkpoint). Resume it with `nested-jax train` to continue."
        )
    step, state = got
    return run, state, step


def evaluate(out_dir) -> dict:
    """Validation loss and bits per byte of the newest checkpoint in ``out_dir``."""
    run, state, step = load_run(out_dir)
    return {"step": step, **run.evaluate(state.params)}


def sample(
    model: LanguageModel,
    params,
    prompt: jax.Array,
    key,
    *,
    length: int,
    temperature=1.0,
    top_k: int = 0,
    top_p=1.0,
) -> jax.Array:
    """Continue ``prompt: int [B, P]`` by ``length`` tokens drawn by
    :func:`~nested_jax.models.sample_token` (``temperature=0``: greedy). The prompt runs
    chunk-parallel; the continuation streams one token at a time."""
    logits, state = model.apply(params, prompt)

    def one(carry, k):
        st, lg = carry
        tok = sample_token(lg, k, temperature=temperature, top_k=top_k, top_p=top_p)
        out, st = model.step(params, st, tok[:, None])
        return (st, out[:, 0]), tok

    _, toks = jax.lax.scan(one, (state, logits[:, -1]), jax.random.split(key, length))
    return toks.T


def generate(
    out_dir,
    prompt: str,
    *,
    length: int = 200,
    temperature: float = 0.8,
    top_k: int = 0,
    seed: int = 0,
) -> str:
    """Sample a continuation of ``prompt`` from the newest checkpoint in ``out_dir``."""
    run, state, _ = load_run(out_dir, load_data=False)
    if run.tokenizer is None:
        raise ValueError("this run was trained on a token array (.npy): no tokenizer to decode.")
    ids = run.tokenizer.encode(prompt or "\n")
    mc = run.model_config
    if mc.attends and len(ids) + length > mc.max_len:
        raise ValueError(
            f"prompt ({len(ids)} tokens) + length ({length}) exceeds the model's attention "
            f"context max_len={mc.max_len}; shorten them."
        )
    if len(ids) > mc.max_len:
        raise ValueError(f"the prompt ({len(ids)} tokens) exceeds max_len={mc.max_len}.")
    params = jax.device_get(state.params)
    fn = jax.jit(
        functools.partial(sample, run.model, length=length, temperature=temperature, top_k=top_k)
    )
    out = fn(params, jnp.asarray(ids, jnp.int32)[None], jax.random.key(seed))
    return run.tokenizer.decode(np.asarray(out[0]))
