"""Command-line entry point: ``nested-jax COMMAND [options]`` (also ``python -m nested_jax``).

Commands: ``quickstart`` (train the tiny Hope on Shakespeare bytes, CPU, ~2 minutes), ``train``,
``eval``, ``generate``, ``stream`` and ``sessions`` (learning after deployment:
`nested_jax.session`) and ``configs``. Errors in configs and inputs are printed
as one message and exit with status 2; a non-finite loss under ``nan_policy=stop`` exits with 3;
a multi-process job that cannot form exits with 4 (``train --processes N`` runs one on this
machine: `nested_jax.train.launch`);
Ctrl-C prints one line and exits with 130 (training saves a checkpoint first).

Compiled programs are kept in XLA's persistent compilation cache, so running the same model again
(resuming, evaluating, sampling) skips most of its compile: ``$NESTED_JAX_COMPILE_CACHE`` (a
directory, or ``off``), by default ``$XDG_CACHE_HOME/nested_jax/xla/<cpu>`` (``~/.cache/...``; one
directory per CPU type, so a home shared by different machines never loads code built for another
CPU's instruction set), at most 2 GiB (least recently used entries go first). A cache directory
set through JAX's own configuration (``JAX_COMPILATION_CACHE_DIR``) is left as it is.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

COMMANDS = {
    "quickstart": "train the tiny Hope on Shakespeare bytes (CPU, ~2 min), checkpoint, sample",
    "train": "train or resume a run: --config NAME [--set key=value ...] [--out DIR]",
    "eval": "validation loss and bits per byte of a run's newest checkpoint: --run DIR",
    "generate": "sample from a run's newest checkpoint: --run DIR --prompt TEXT [--session NAME]",
    "stream": "a deployed model learns from text: --run DIR --session NAME [--file F | stdin]",
    "sessions": "list a run's saved sessions: --run DIR",
    "configs": "list the named training and model configs",
}


class _TqdmHandler(logging.Handler):
    """Log lines that do not break a tqdm progress bar."""

    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except ImportError:  # pragma: no cover
            print(self.format(record), file=sys.stderr)


def _setup_logging() -> None:
    from nested_jax.train.sharding import ENV_PROCESS_ID

    # a process of a multi-process job other than process 0: warnings and errors only, marked
    other = os.environ.get(ENV_PROCESS_ID, "0").strip() not in ("", "0")
    logger = logging.getLogger("nested_jax")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        h = _TqdmHandler()
        prefix = f"[process {os.environ[ENV_PROCESS_ID].strip()}] " if other else ""
        h.setFormatter(logging.Formatter(prefix + "%(message)s"))
        logger.addHandler(h)
    logger.setLevel(logging.WARNING if other else logging.INFO)
    logger.propagate = False
    for noisy in ("absl", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:  # pragma: no cover
        pass


CACHE_ENV = "NESTED_JAX_COMPILE_CACHE"
CACHE_MAX_BYTES = 2 << 30


def compile_cache_dir() -> str | None:
    """The CLI's persistent compilation-cache directory (``None``: off); see the module docstring."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in ("off", "0", "none", "false"):
        return None
    if value:
        return os.path.expanduser(value)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nested_jax", "xla", _cpu_tag())


def _cpu_tag() -> str:
    """``<arch>-<hash of the CPU's model and feature flags>``."""
    import hashlib
    import platform

    info = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            info += "".join(
                line for line in f if line.startswith(("model name", "flags", "Features"))
            )
    except OSError:
        pass
    return f"{platform.machine() or 'cpu'}-{hashlib.sha256(info.encode()).hexdigest()[:12]}"


def _enable_compile_cache() -> None:
    import jax

    if jax.config.jax_compilation_cache_dir:  # set by the user through JAX: theirs
        return
    path = compile_cache_dir()
    if path is None:
        return
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:  # an unwritable home must not stop training
        logging.getLogger("nested_jax").warning("compile cache off (%s: %s)", path, e)
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _train_parser(prog: str, default_config: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--config", default=default_config, required=default_config is None)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. steps=500, data.seq_len=256, model.d_model=64",
    )
    p.add_argument("--out", default=None, help="run directory (default: runs/<config>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--fresh", action="store_true", help="do not resume (the directory must be new)")
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        metavar="N",
        help="run as a job of N processes on this machine (CPU; the multi-host path, tried "
        "locally: see docs/scaling_out.md)",
    )
    p.add_argument(
        "--devices", type=int, default=2, metavar="K", help="with --processes: CPU devices each"
    )
    p.add_argument(
        "--dist-timeout",
        type=int,
        default=30,
        metavar="S",
        help="with --processes: seconds to wait for every process to join, and for a silent "
        "process before the job fails",
    )
    return p


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` without ``flags`` and their values (``--flag V`` or ``--flag=V``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in flags)):
            out.append(a)
    return out


def _train(argv, *, quickstart: bool) -> int:
    from nested_jax import train as tr

    prog = "nested-jax quickstart" if quickstart else "nested-jax train"
    p = _train_parser(prog, "quickstart" if quickstart else None)
    if quickstart:
        p.add_argument("--steps", type=int, default=None, help="training steps (default 150)")
        p.add_argument("--prompt", default="ROMEO:\n", help="prompt for the sample")
    a = p.parse_args(argv)
    if a.processes:
        from nested_jax.train.launch import launch_local

        if quickstart:
            p.error("--processes is for `nested-jax train`.")
        rest = _without(list(argv), ("--processes", "--devices", "--dist-timeout"))
        try:
            return launch_local(["train", *rest], a.processes, a.devices, a.dist_timeout)
        except ValueError as e:
            p.error(str(e))
    overrides = list(a.overrides)
    if quickstart and a.steps is not None:
        overrides.append(f"steps={a.steps}")
    cfg = tr.get_train_config(a.config, overrides)
    out = a.out or (
        time.strftime("runs/quickstart-%Y%m%d-%H%M%S") if quickstart else f"runs/{a.config}"
    )
    from pathlib import Path

    if (
        a.fresh
        and (Path(out) / "checkpoints").exists()
        and any((Path(out) / "checkpoints").iterdir())
    ):
        print(
            f"{prog}: --fresh but {out} already holds checkpoints; choose a new --out.",
            file=sys.stderr,
        )
        return 2
    if quickstart:
        print(
            f"nested_jax quickstart: {cfg.model} ({dict(cfg.model_overrides)}) on "
            f"{cfg.data.corpus} bytes, {cfg.steps} steps of {cfg.data.batch_size} x "
            f"{cfg.data.seq_len} tokens -> {out}",
            flush=True,
        )
    res = tr.train(cfg, out, progress=not a.no_progress)
    if quickstart:
        rec = [r for r in tr.read_metrics(out) if "loss" in r]
        print(
            f"\ntrain loss fell from {rec[0]['loss']:.3f} (step {rec[0]['step']}) to "
            f"{rec[-1]['loss']:.3f} (step {rec[-1]['step']}); validation {res.val_loss:.3f} nats "
            f"= {res.val_bpb:.3f} bits/byte (uniform over bytes: 8.000)"
        )
        print(f"checkpoint: {res.checkpoint}\nmetrics: {out}/metrics.jsonl, plot: {out}/loss.png")
        text = tr.generate(out, a.prompt, length=200, temperature=0.8)
        print(f"\nsample (temperature 0.8):\n{a.prompt}{text}")
    return 0


def _eval(argv) -> int:
    from nested_jax import train as tr

    p = argparse.ArgumentParser(prog="nested-jax eval")
    p.add_argument("--run", required=True, help="a run directory")
    a = p.parse_args(argv)
    r = tr.evaluate(a.run)
    print(
        f"step {r['step']}: validation loss {r['val_loss']:.4f} nats, {r['val_bpb']:.4f} bits/byte"
    )
    return 0


def _generate(argv) -> int:
    from nested_jax import train as tr

    p = argparse.ArgumentParser(prog="nested-jax generate")
    p.add_argument("--run", required=True, help="a run directory")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument(
        "--session", default=None, help="continue a saved session (created if new) and save it back"
    )
    a = p.parse_args(argv)
    if a.length < 1 or a.temperature < 0 or a.top_k < 0 or not 0 < a.top_p <= 1:
        p.error("--length must be >= 1, --temperature >= 0, --top-k >= 0, 0 < --top-p <= 1")
    if a.session is not None:
        import jax

        from nested_jax import session as ses

        s, tok = _open_session(a.run, a.session, None)
        prompt = tok.encode(a.prompt) if a.prompt else []
        s, out = ses.generate(
            s,
            prompt,
            a.length,
            key=jax.random.key(a.seed),
            temperature=a.temperature,
            top_k=a.top_k,
            top_p=a.top_p,
        )
        ses.save_session(s, a.run, a.session, tokenizer=tok.name)
        print(a.prompt + tok.decode([int(t) for t in out[0]]))
        return 0
    if a.top_p != 1.0:
        p.error("--top-p needs --session (the plain sampler has temperature and top-k)")
    text = tr.generate(
        a.run, a.prompt, length=a.length, temperature=a.temperature, top_k=a.top_k, seed=a.seed
    )
    print(a.prompt + text)
    return 0


def _policy(a):
    """The --learn / --memories / --cms-levels / --reset / --cms-reset options as a Policy
    (None: none given)."""
    from nested_jax import session as ses

    given = (a.learn, a.memories, a.cms_levels, a.reset, a.cms_reset)
    if all(x is None for x in given):
        return None
    levels = None
    if a.cms_levels is not None:
        levels = tuple(x.strip() in ("1", "true", "on") for x in a.cms_levels.split(","))
    memories = None if a.memories is None else a.memories == "on"
    return ses.Policy(a.learn or "all", levels, a.reset or "never", memories, a.cms_reset)


def _open_session(run_dir, name, policy):
    """Session ``name`` of the run (restored if saved, else fresh) and the run's tokenizer."""
    from nested_jax import session as ses

    fresh, tok = ses.from_run(run_dir, policy=policy or ses.Policy())
    if tok is None:
        raise ValueError("this run was trained on a token array (.npy): no tokenizer for text.")
    saved = [r for r in ses.list_sessions(run_dir) if r["name"] == name]
    if not saved:
        return fresh, tok
    s = ses.load_session(run_dir, name, fresh.model.config, fresh.params, tokenizer=tok.name)
    if policy is not None and policy != s.policy:
        raise ValueError(
            f"session {name!r} was saved with policy {s.policy.to_json()}; omit the policy "
            "options to continue it, or start a new --session."
        )
    return s, tok


def _stream(argv) -> int:
    import math

    import numpy as np

    from nested_jax import session as ses

    p = argparse.ArgumentParser(prog="nested-jax stream")
    p.add_argument("--run", required=True, help="a training run directory")
    p.add_argument("--session", required=True, help="session name (continued if saved)")
    p.add_argument("--file", default=None, help="text file to read (default: stdin)")
    p.add_argument("--learn", choices=ses.LEARN, default=None, help="which levels learn")
    p.add_argument(
        "--memories", choices=("on", "off"), default=None, help="do the fast memories learn"
    )
    p.add_argument("--cms-levels", default=None, help="per CMS level 1/0, e.g. 0,1")
    p.add_argument("--reset", choices=ses.RESETS, default=None, help="when the memory resets")
    p.add_argument(
        "--cms-reset", choices=ses.RESETS, default=None, help="the CMS's (default: --reset)"
    )
    p.add_argument("--piece", type=int, default=128, help="tokens read per step (default 128)")
    p.add_argument("--save-every", type=int, default=16, help="save every N pieces (default 16)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.piece < 1 or a.save_every < 1:
        p.error("--piece and --save-every must be >= 1")
    from nested_jax.train.data import DataError, read_text

    text = read_text(a.file) if a.file else sys.stdin.read()
    if not text:
        raise DataError(f"no text to read: {a.file or 'stdin'} is empty.")
    s, tok = _open_session(a.run, a.session, _policy(a))
    ids = np.asarray(tok.encode(text))
    total = len(text.encode("utf-8"))
    bits = n_bytes = 0.0
    bar = None
    if not a.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc=a.session)
    try:  # fixed-size pieces: one compiled step for the whole stream (and the last piece)
        for i, start in enumerate(range(0, len(ids), a.piece)):
            part = ids[start : start + a.piece]
            out = ses.absorb(s, part[None])
            s = out.session
            bits += float(np.nansum(np.asarray(out.nll[0]))) / math.log(2)
            size = len(tok.decode([int(t) for t in part]).encode("utf-8"))
            n_bytes += size
            if bar is not None:
                bar.update(size)
                bar.set_postfix(bits_per_byte=f"{bits / max(n_bytes, 1):.3f}")
            if (i + 1) % a.save_every == 0:
                ses.save_session(s, a.run, a.session, tokenizer=tok.name)
    finally:
        if bar is not None:
            bar.close()
        if n_bytes:  # what was read is kept, also when interrupted
            ses.save_session(s, a.run, a.session, tokenizer=tok.name)
    print(
        f"read {int(n_bytes)} bytes: {bits / n_bytes:.4f} bits/byte; session {a.session!r} saved "
        f"at position {int(s.position)} ({a.run}/sessions/{a.session})"
    )
    return 0


def _sessions(argv) -> int:
    from nested_jax import session as ses

    p = argparse.ArgumentParser(prog="nested-jax sessions")
    p.add_argument("--run", required=True, help="a training run directory")
    a = p.parse_args(argv)
    if not (Path(a.run) / "config.json").exists():
        raise FileNotFoundError(f"{a.run} is not a training run directory (no config.json).")
    rows = ses.list_sessions(a.run)
    if not rows:
        print(f"no sessions under {a.run}/sessions")
    for r in rows:
        print(f"{r['name']:<20} position {r['position']:>8}  policy {r['policy']}")
    return 0


def _configs(argv) -> int:
    from nested_jax.models import list_configs
    from nested_jax.train import list_train_configs

    print("training configs (nested-jax train --config NAME):", ", ".join(list_train_configs()))
    print("model configs (--set model=NAME):", ", ".join(list_configs()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: nested-jax COMMAND [options]\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:<12} {text}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(
            f"nested-jax: unknown command {cmd!r}; choose one of: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    _setup_logging()
    _enable_compile_cache()
    from nested_jax.train import (
        CheckpointMismatchError,
        ConfigError,
        DataError,
        NonFiniteLossError,
    )
    from nested_jax.train.sharding import DistributedError

    try:
        if cmd in ("quickstart", "train"):
            return _train(rest, quickstart=cmd == "quickstart")
        commands = {
            "eval": _eval,
            "generate": _generate,
            "stream": _stream,
            "sessions": _sessions,
            "configs": _configs,
        }
        return commands[cmd](rest)
    except (ConfigError, DataError, CheckpointMismatchError, FileNotFoundError, ValueError) as e:
        print(f"nested-jax {cmd}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"nested-jax {cmd}: stopped: {e}", file=sys.stderr)
        return 3
    except DistributedError as e:
        print(f"nested-jax {cmd}: the multi-process job failed: {e}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        print(
            f"nested-jax {cmd}: interrupted; what was saved (checkpoints, sessions) is kept.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
