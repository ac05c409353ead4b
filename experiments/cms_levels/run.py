"""CMS levels and frequencies on drifting facts: retention of old facts vs adaptation to new ones
(issue 16 item 4; paper Fig. 7 and Table 6's "CMS with 1 / 2 / 3 levels").

A sequence is a stream of facts ``k v`` (16 key tokens, 16 value tokens) about a mapping that
drifts: every sequence starts from a random mapping, each pair states one uniformly drawn key
with its current value, and every 16 pairs one key gets a new value. The loss is on the values. A
value is *predictable* once its key has been stated with that value before; what is measured at
those positions is recall accuracy (argmax), split by

* the **gap** since the key's last statement (1-16 tokens: inside the attention window; 17-64,
  65-256, 257+: out of it, only weights that learned in context can hold the fact), for facts that
  never changed in the sequence (**retention**); and
* facts that changed earlier in the sequence and were restated with the new value
  (**adaptation**), where a model that keeps the old fact answers the stale value (also counted).

Every model is Transformer++-shaped with sliding-window attention (16 tokens, 2 layers: nothing
beyond 32 tokens back reaches a prediction through attention). The MLP sublayer is either a plain
MLP (``swa``) or a CMS whose levels learn in context with the teach signal (Hope-Attention): one
level (period 16), two (16 / 64), three (16 / 64 / 256), and two with the slow level faster
(16 / 32) or slower (16 / 256). Full causal attention (``full``) is the reference that sees
everything. Parameters matched to the two-level CMS within 5% by the MLP width; the same data,
steps and AdamW rate for every model; 3 seeds.

Run: ``python -m experiments.cms_levels.run [--smoke] [--models ...] [--report]``; one file per
(model, seed) in ``results/runs/``, so a stopped run resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import (
    Batches,
    adamw_step,
    mean_std,
    parse_args,
    pyplot,
    run_grid,
    save_figure,
    train_loop,
    write_grid,
)

OUT = "experiments/cms_levels/results"
N_KEYS = N_VALUES = 16  # keys [0, 16), values [16, 32)
WINDOW = 16
# max_len: the longest test sequence plus the window's ring buffer (decisions D77)
SHAPE = {"vocab_size": 32, "d_model": 32, "n_layers": 2, "n_heads": 2, "max_len": 1024 + WINDOW}
_HA = lambda periods: ("hope_attention_paper_tiny", {"cms.periods": periods, "attn_window": WINDOW})
MODELS = {
    "full": ("tiny", {}),
    "swa": ("tiny", {"attn_window": WINDOW}),
    "cms1": _HA((16,)),
    "cms2": _HA((16, 64)),
    "cms3": _HA((16, 64, 256)),
    "cms2_fast": _HA((16, 32)),
    "cms2_slow": _HA((16, 256)),
}
REFERENCE = "cms2"  # every model's parameter count is matched to this one's
LABELS = {
    "full": "full attention (reference)",
    "swa": "window 16, plain MLP",
    "cms1": "window 16, CMS 16",
    "cms2": "window 16, CMS 16/64",
    "cms3": "window 16, CMS 16/64/256",
    "cms2_fast": "window 16, CMS 16/32",
    "cms2_slow": "window 16, CMS 16/256",
}
GAPS = {"1-16": (1, 16), "17-64": (17, 64), "65-256": (65, 256), "257+": (257, 1 << 30)}
FULL = {
    "steps": 600,
    "batch": 16,
    "train_len": 256,
    "drift_every": 16,
    "n_drift": 1,
    "lr": 3e-3,
    "test_lens": (256, 1024),
    "test_batches": 4,
    "seeds": (0, 1, 2),
}
SMOKE = {**FULL, "steps": 3, "batch": 2, "train_len": 64, "test_lens": (64,), "test_batches": 1}


def make_batch(rng: np.random.Generator, batch: int, length: int, drift_every: int, n_drift: int):
    """``(tokens [B, L], info)``; ``info`` arrays are ``[B, L - 1]`` over the positions ``j``
    whose next token is a value: ``answer`` (every value), ``gap`` (tokens since the key's last
    statement; 0 if never stated), ``known`` (stated before with the same value: predictable),
    ``updated`` (known, and the key was stated with another value earlier in the sequence), ``stale`` (the
    key's previous value when it changed since its last statement, else -1)."""
    if length % 2:
        raise ValueError(f"the length must be even (pairs), got {length}.")
    tokens = np.empty((batch, length), np.int32)
    info = {k: np.zeros((batch, length - 1), np.int32) for k in ("answer", "gap", "known")}
    info["updated"] = np.zeros((batch, length - 1), np.int32)
    info["stale"] = np.full((batch, length - 1), -1, np.int32)
    for b in range(batch):
        f = rng.integers(0, N_VALUES, N_KEYS)
        last_pos = np.full(N_KEYS, -1)  # where each key was last stated
        last_val = np.full(N_KEYS, -1)  # the value it was stated with
        restated = np.zeros(N_KEYS, bool)  # stated with another value before, in this sequence
        for i in range(length // 2):
            if i and i % drift_every == 0:
                for k in rng.choice(N_KEYS, n_drift, replace=False):
                    f[k] = (f[k] + rng.integers(1, N_VALUES)) % N_VALUES  # a different value
            k = int(rng.integers(N_KEYS))
            j = 2 * i
            tokens[b, j], tokens[b, j + 1] = k, N_KEYS + f[k]
            info["answer"][b, j] = 1
            if last_pos[k] >= 0:
                info["gap"][b, j] = j - last_pos[k]
                if last_val[k] == f[k]:
                    info["known"][b, j] = 1
                    info["updated"][b, j] = int(restated[k])
                else:
                    info["stale"][b, j] = N_KEYS + last_val[k]
                    restated[k] = True
            last_pos[k], last_val[k] = j, f[k]
    return tokens, info


def build(name: str, smoke: bool):
    """``(LanguageModel, parameter count)``, ``d_ff`` matched to the reference's count."""
    from nested_jax.models import LanguageModel, count_params, get_config, matched_d_ff

    shape = {**SHAPE, **({"d_model": 16, "n_layers": 1} if smoke else {})}
    config = lambda m: get_config(MODELS[m][0], **{**shape, **MODELS[m][1]})
    cfg = config(name)
    if name != REFERENCE:
        cfg = cfg.replace(d_ff=matched_d_ff(cfg, count_params(config(REFERENCE)), multiple=8))
    return LanguageModel(cfg), count_params(cfg)


def _value_nll(model, params, tokens, answer):
    from nested_jax.models import token_nll

    logits, _ = model.apply(params, tokens)
    m = answer.astype(jnp.float32)
    return jnp.sum(token_nll(logits, tokens) * m) / jnp.sum(m), jnp.argmax(logits[:, :-1], -1)


def score(pred: np.ndarray, tokens: np.ndarray, info: dict) -> dict:
    """Counts ``{category: [hits, total]}`` of the argmax predictions ``pred [B, L - 1]``."""
    hit = pred == tokens[:, 1:]
    known = info["known"] == 1
    out = {}
    for name, (lo, hi) in GAPS.items():
        sel = known & (info["updated"] == 0) & (info["gap"] >= lo) & (info["gap"] <= hi)
        out[f"retention {name}"] = [int(hit[sel].sum()), int(sel.sum())]
    sel = known & (info["updated"] == 1)
    out["adaptation"] = [int(hit[sel].sum()), int(sel.sum())]
    changed = info["stale"] >= 0
    out["stale answer"] = [int((pred == info["stale"])[changed].sum()), int(changed.sum())]
    return out


def train_and_test(name: str, seed: int, setup: dict, smoke: bool) -> dict:
    model, n_params = build(name, smoke)
    params = model.init(jax.random.key(seed))
    opt_state, step = adamw_step(
        lambda p, tokens, answer: _value_nll(model, p, tokens, answer)[0],
        params,
        setup["steps"],
        setup["lr"],
    )
    drift = (setup["drift_every"], setup["n_drift"])
    rng = np.random.default_rng(1000 + seed)
    batches = Batches(
        lambda: (lambda t, i: (t, i["answer"]))(
            *make_batch(rng, setup["batch"], setup["train_len"], *drift)
        ),
        setup["steps"],
    )
    params, losses, compile_s, train_s = train_loop(step, params, opt_state, batches)
    evaluate = jax.jit(lambda p, t, a: _value_nll(model, p, t, a)[1])
    test_rng = np.random.default_rng(9999)  # the same test sequences for every model and seed
    accuracy = {}
    for length in setup["test_lens"]:
        counts = {}
        for _ in range(setup["test_batches"]):
            tokens, info = make_batch(test_rng, setup["batch"], length, *drift)
            pred = np.asarray(evaluate(params, tokens, info["answer"]))
            for k, (h, n) in score(pred, tokens, info).items():
                counts.setdefault(k, [0, 0])
                counts[k] = [counts[k][0] + h, counts[k][1] + n]
        accuracy[str(length)] = {k: (h / n if n else None) for k, (h, n) in counts.items()}
    n_tokens = (setup["steps"] - 1) * setup["batch"] * setup["train_len"]
    return {
        "model": name,
        "seed": seed,
        "params": n_params,
        # cms.norm and all (D86 changed its default); as JSON reads it back (tuples as lists)
        "config": json.loads(json.dumps(model.config.to_json())),
        "train_loss": [[i, v] for i, v in enumerate(losses) if v is not None],
        "final_train_loss": losses[-1],
        "accuracy": accuracy,
        "compile_s": compile_s,
        "train_s": train_s,
        "tokens_per_s": n_tokens / train_s if train_s > 0 else None,
    }


def summarize(runs: list[dict]) -> dict:
    out = {}
    for name in MODELS:
        rs = [r for r in runs if r["model"] == name]
        if not rs:
            continue
        acc = {
            length: {k: mean_std([r["accuracy"][length][k] for r in rs]) for k in cats}
            for length, cats in rs[0]["accuracy"].items()
        }
        out[name] = {
            "params": rs[0]["params"],
            "seeds": [r["seed"] for r in rs],
            "accuracy": acc,
            "final_train_loss": mean_std([r["final_train_loss"] for r in rs]),
            "tokens_per_s": mean_std([r["tokens_per_s"] for r in rs]),
            "compile_s": mean_std([r["compile_s"] for r in rs]),
        }
    return out


def plot(path: Path, summary: dict, setup: dict) -> None:
    plt = pyplot()
    lens = [str(n) for n in setup["test_lens"]]
    fig, axes = plt.subplots(1, len(lens), figsize=(6 * len(lens), 4), sharey=True)
    axes = np.atleast_1d(axes)
    cats = [f"retention {g}" for g in GAPS] + ["adaptation", "stale answer"]
    width = 0.8 / max(1, len(summary))
    for ax, length in zip(axes, lens, strict=True):
        for i, (name, row) in enumerate(summary.items()):
            acc = [row["accuracy"].get(length, {}).get(c) for c in cats]
            ax.bar(
                np.arange(len(cats)) + i * width,
                [a["mean"] if a else 0.0 for a in acc],
                width,
                yerr=[a["std"] if a else 0.0 for a in acc],
                color=f"C{i}",
                label=LABELS[name],
            )
        ax.set_xticks(np.arange(len(cats)) + 0.4 - width / 2)
        ax.set_xticklabels([c.replace("retention ", "gap ") for c in cats], fontsize=7)
        ax.set_title(f"sequence length {length} (chance {1 / N_VALUES:.3f})")
    axes[0].set_ylabel("fraction of answers (mean ± std over seeds)")
    axes[0].legend(fontsize=6)
    save_figure(fig, path)


def main(argv=None) -> dict:
    def more(p):
        p.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS))
        p.add_argument("--seeds", nargs="*", type=int, default=None)
        p.add_argument(
            "--report", action="store_true", help="only aggregate the finished runs (no training)"
        )

    args = parse_args(__doc__, OUT, argv, more)
    setup = SMOKE if args.smoke else FULL
    seeds = setup["seeds"] if args.seeds is None else tuple(args.seeds)
    if args.smoke:
        seeds = seeds[:1]
    out = Path(args.out)

    def show(r):
        acc = r["accuracy"][str(setup["test_lens"][0])]
        shown = " ".join(f"{k}:{v:.2f}" for k, v in acc.items() if v is not None)
        return (
            f"{r['model']:>10} seed {r['seed']}: loss {r['final_train_loss']:.3f}, {shown}, "
            f"{r['tokens_per_s']:.0f} tok/s, compile {r['compile_s']:.1f} s"
        )

    def train(stem):
        name, seed = stem.rsplit("-seed", 1)
        return train_and_test(name, int(seed), setup, args.smoke)

    stems = [f"{name}-seed{seed}" for seed in seeds for name in args.models]
    # one file per (model, seed): a stopped grid resumes where it was
    runs = run_grid(out / "runs", stems, train, report=args.report, show=show)
    return write_grid(
        out,
        "cms levels and frequencies (issue 16 item 4)",
        setup,
        SHAPE,
        runs,
        summarize,
        lambda summary: plot(out / "cms_levels.png", summary, setup),
    )


if __name__ == "__main__":
    main()
