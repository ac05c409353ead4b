"""The long-context part of the language-modelling experiments (issue 15, part 3).

For a finished training cell (:mod:`experiments.lm.run`):

* **loss by position**: held-out sequences 4x and 16x the training length ``T``, streamed in
  pieces of ``T`` tokens (each model's ``step``, chunk-parallel; the memories carry their state
  across pieces); bits per byte in bins of ``T / 4`` tokens.
* **needle in a haystack** (:mod:`experiments.lm.niah`): every task at contexts of 1k-8k tokens
  (bytes for the byte-level models), the queried needle at depths 10-90%; per example the
  answer's bits (teacher-forced), whether every answer token is the argmax (exact recall), and
  the same answer's bits in the control without needles: ``gain = control - needle`` bits per
  answer token, > 0 when the model uses the needle.

Attention models (Transformer++, Hope-Attention) run in two ways: ``window``, a sliding window of
the training length (``attn_window = T``; what they were trained to see; Hope-Attention's CMS keeps
learning across the whole stream), and ``full``, attention over the whole context (RoPE positions
beyond any seen in training). Memory models run once (``stream``).
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import mean_std, pyplot, save_figure
from experiments.lm import niah
from experiments.lm.configs import ALL, LABELS, by_grid, grid_key

LONG = (4, 16)  # held-out lengths in multiples of the training length
FULL = {"windows": 8, "niah_lengths": (1024, 2048, 4096, 8192), "depths": (0.1, 0.5, 0.9)}
SMOKE = {"windows": 2, "niah_lengths": (384,), "depths": (0.5,)}


def _modes(model_config, seq_len: int, length: int) -> dict:
    """``{mode: model config}`` to evaluate sequences of ``length`` tokens with."""
    if not model_config.attends:
        return {"stream": model_config}
    return {
        "window": model_config.replace(attn_window=seq_len, max_len=2 * seq_len),
        "full": model_config.replace(max_len=length),
    }


@functools.cache
def _stepper(model):
    """One jitted streaming step per model (a config compiles once per piece shape)."""

    def run(p, state, t):
        logits, state = model.step(p, state, t, parallel=True)
        return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), state

    return jax.jit(run)


def stream_nll(model, params, tokens: np.ndarray, piece: int):
    """``(nll, hit)``, both ``[B, L - 1]``: the next-token loss (nats) at every position of
    ``tokens [B, L]`` read in pieces of ``piece`` tokens, and whether the next token was the
    argmax (greedy decoding's choice)."""
    b, n = tokens.shape
    piece = min(piece, n, model.config.max_len)
    run = _stepper(model)
    state = model.init_state(params, b)
    lps = []
    for s in range(0, n, piece):
        lp, state = run(params, state, jnp.asarray(tokens[:, s : s + piece]))
        lps.append(np.asarray(lp))
    lp = np.concatenate(lps, axis=1)[:, :-1]  # position i predicts token i + 1
    nxt = tokens[:, 1:, None]
    return -np.take_along_axis(lp, nxt, axis=-1)[..., 0], lp.argmax(-1) == nxt[..., 0]


def evaluate_cell(cell: dict, cell_run: Path, setup: dict, ctx: dict) -> dict:
    """Loss by position and the NIAH suite for one trained cell."""
    from nested_jax.models import LanguageModel
    from nested_jax.train.loop import load_run

    run, state, _ = load_run(cell_run)
    params = state.params
    t = setup["seq_len"]
    bpt = run.splits.bytes_per_token
    to_bits = 1 / math.log(2) / bpt
    rec = {k: cell[k] for k in ("model", "size", "corpus", "budget_bytes", "seed", "params")}
    rec.update({"seq_len": t, "bytes_per_token": bpt, "by_position": {}, "niah": []})
    t0 = time.perf_counter()
    for mult in LONG:
        length = mult * t
        n = min(ctx["windows"], len(run.splits.val) // length)
        windows = np.asarray(run.splits.val[: n * length], np.int32).reshape(n, length)
        for mode, mc in _modes(run.model_config, t, length).items():
            nll, _ = stream_nll(LanguageModel(mc), params, windows, t)
            bin_ = max(1, t // 4)
            k = nll.shape[1] // bin_
            bins = nll[:, : k * bin_].reshape(n, k, bin_).mean((0, 2)) * to_bits
            rec["by_position"][f"{mult}x/{mode}"] = {
                "bin_tokens": bin_,
                "bits_per_byte": bins.tolist(),
                "mean": float(nll.mean() * to_bits),
                "beyond_train_len": float(nll[:, t:].mean() * to_bits),
                "windows": int(n),
            }
    text = run.tokenizer.decode(np.asarray(run.splits.val).tolist())
    encode = lambda s: np.asarray(run.tokenizer.encode(s), np.int32)
    for task in niah.TASKS:
        for length in ctx["niah_lengths"]:
            batch = niah.make_batch(task, length, ctx["depths"], [text], encode, seed=cell["seed"])
            both = np.stack([e.tokens for e in batch] + [e.control for e in batch])
            for mode, mc in _modes(run.model_config, t, length).items():
                nll, hit = stream_nll(LanguageModel(mc), params, both, t)
                for i, e in enumerate(batch):
                    row = _score(nll[i], hit[i], nll[len(batch) + i], e)
                    rec["niah"].append(
                        {"task": task, "length": length, "depth": e.depth, "mode": mode, **row}
                    )
    rec["eval_seconds"] = time.perf_counter() - t0
    return rec


def _score(nll: np.ndarray, hit: np.ndarray, nll_ctl: np.ndarray, e: niah.Example) -> dict:
    """Bits per answer token with and without the needles, and exact recall (every answer
    token the argmax: what greedy decoding would reproduce)."""
    idx = np.concatenate([np.arange(s - 1, t - 1) for s, t in e.spans])
    bits = float(nll[idx].mean() / math.log(2))
    ctl = float(nll_ctl[idx].mean() / math.log(2))
    return {
        "answer_bits": bits,
        "control_bits": ctl,
        "gain_bits": ctl - bits,
        "exact": bool(hit[idx].all()),
    }


def context_grid(size, corpus, nbytes, models, seeds, out: Path, setup, max_minutes, smoke):
    from experiments.lm.run import cell_dir

    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    for seed in seeds:
        for model in models:
            cdir = cell_dir(out, size, corpus, nbytes, model, seed)
            if deadline is not None and time.monotonic() > deadline and _pending(out, cdir):
                print(f"--max-minutes {max_minutes} reached; run again to go on", flush=True)
                return
            context_cell(out, cdir, setup, smoke)


def _dest(out: Path, cell: dict) -> Path:
    key = grid_key(cell["size"], cell["corpus"], cell["budget_bytes"])
    return out / "context" / key / cell["model"] / f"seed{cell['seed']}.json"


def _pending(out: Path, cdir: Path) -> bool:
    """A finished, non-diverged cell whose weights are here and whose evaluation is not."""
    if not (cdir / "cell.json").exists():
        return False
    cell = json.loads((cdir / "cell.json").read_text())
    return (
        cell.get("diverged_at_step") is None
        and not _dest(out, cell).exists()
        and (cdir / "run").is_dir()
    )


def context_cell(out: Path, cdir: Path, setup: dict, smoke: bool) -> dict | None:
    """Evaluate one finished training cell (``cdir``) unless it is evaluated already, diverged,
    or its weights are gone; ``None`` then. The trained weights live in the cell's ``run/``
    folder, which is not committed (checkpoints are megabytes), so ``train`` calls this right
    after a cell finishes: a fresh checkout keeps ``cell.json`` but can no longer evaluate it."""
    if not _pending(out, cdir):
        if (cdir / "cell.json").exists() and not (cdir / "run").is_dir():
            cell = json.loads((cdir / "cell.json").read_text())
            if cell.get("diverged_at_step") is None and not _dest(out, cell).exists():
                print(
                    f"context {cell['model']} seed {cell['seed']}: not evaluated, its weights "
                    f"({cdir / 'run'}) are not in this checkout; retrain the cell to evaluate it",
                    flush=True,
                )
        return None
    cell = json.loads((cdir / "cell.json").read_text())
    rec = evaluate_cell(cell, cdir / "run", setup, dict(SMOKE if smoke else FULL))
    dest = _dest(out, cell)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(rec) + "\n")
    print(f"context {cell['model']} seed {cell['seed']}: {rec['eval_seconds']:.0f} s", flush=True)
    return rec


def summarize(records: list[dict]) -> dict:
    """Mean ± std over seeds: bits per byte beyond the training length at 4x / 16x, and per NIAH
    task the answer-bit gain from the needle (over lengths and depths)."""
    summary = {}
    for key, by_model in by_grid(records).items():
        summary[key] = {}
        for m, rs in by_model.items():
            row = {"seeds": [r["seed"] for r in rs]}
            for k in rs[0]["by_position"]:
                row[f"beyond_train_len_bpb/{k}"] = mean_std(
                    [r["by_position"][k]["beyond_train_len"] for r in rs]
                )
            for mode in sorted({x["mode"] for x in rs[0]["niah"]}):
                for task in niah.TASKS:
                    per_seed = [
                        np.mean(
                            [
                                x["gain_bits"]
                                for x in r["niah"]
                                if x["task"] == task and x["mode"] == mode
                            ]
                        )
                        for r in rs
                    ]
                    row[f"niah_gain_bits/{task}/{mode}"] = mean_std([float(v) for v in per_seed])
                    row[f"niah_exact/{task}/{mode}"] = mean_std(
                        [
                            float(
                                np.mean(
                                    [
                                        x["exact"]
                                        for x in r["niah"]
                                        if x["task"] == task and x["mode"] == mode
                                    ]
                                )
                            )
                            for r in rs
                        ]
                    )
            summary[key][m] = row
    return summary


def _gain_by(records: list[dict], mode: str, by: str):
    """The NIAH needle gain in ``mode`` averaged over everything but ``by`` (length or depth)."""
    xs = sorted({x[by] for r in records for x in r["niah"]})
    pick = lambda v: [
        x["gain_bits"] for r in records for x in r["niah"] if x[by] == v and x["mode"] == mode
    ]
    return xs, [float(np.mean(pick(v))) for v in xs]


def plot_context(out: Path, records: list[dict]) -> None:
    plt = pyplot()
    for key, by_model in by_grid(records).items():
        rs = [r for mine in by_model.values() for r in mine]
        fig, axes = plt.subplots(1, 3, figsize=(16, 4))
        for m, mine in by_model.items():
            i = ALL.index(m)
            for mode, style in (("stream", "-"), ("window", "-"), ("full", ":")):
                k = f"{LONG[-1]}x/{mode}"
                if k not in mine[0]["by_position"]:
                    continue
                y = np.mean([r["by_position"][k]["bits_per_byte"] for r in mine], axis=0)
                b = mine[0]["by_position"][k]["bin_tokens"]
                lab = LABELS[m] + ("" if mode == "stream" else f" ({mode})")
                axes[0].plot((np.arange(len(y)) + 0.5) * b, y, style, color=f"C{i % 10}", label=lab)
                for ax, by in ((axes[1], "length"), (axes[2], "depth")):
                    xs, gains = _gain_by(mine, mode, by)
                    ax.plot(xs, gains, style + "o", ms=3, color=f"C{i % 10}", label=lab)
        seq = rs[0]["seq_len"]
        axes[0].axvline(seq, color="grey", lw=0.8)
        axes[0].set_xlabel(
            f"position (tokens) in held-out {LONG[-1]}x sequences; grey: training length"
        )
        axes[0].set_ylabel("bits per byte")
        axes[1].set_xlabel("NIAH context (tokens)")
        axes[1].set_xscale("log", base=2)
        axes[1].set_ylabel("needle gain (bits per answer token)")
        axes[2].set_xlabel("depth of the queried needle")
        axes[2].set_ylabel("needle gain (bits per answer token)")
        for ax in axes:
            ax.legend(fontsize=6)
        fig.suptitle(key)
        save_figure(fig, out / f"context-{key}.png")
