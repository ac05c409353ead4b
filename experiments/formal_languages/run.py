"""Formal language recognition: which models learn the rule and keep it at longer lengths? (issue 16
item 1; paper Table 5, the construction of Bhattamishra et al. 2020 used by Irie et al. 2023)

Six languages: the non-star-free regular ones **parity** (bit strings with an even number of 1s),
**(aa)\\*** and **(abab)\\***, and the counter languages **a^n b^n**, **a^n b^n c^n** and
**Shuffle-2** (two kinds of brackets, each balanced on its own, freely interleaved).

The task at every position (character prediction): after reading ``BOS x_1 .. x_t``, say which
symbols may come next (``c`` is allowed when ``x_1 .. x_t c`` starts some string of the language)
and whether the string may end here (``EOS``: ``x_1 .. x_t`` is in the language). A multi-label
output (one sigmoid per symbol and one for ``EOS``); a string is recognised when every label at
every one of its positions is right (threshold 0.5). Only strings of the language are shown, so
parity and (aa)\\* are all in the ``EOS`` label: the model must track the count of 1s (or of
``a``s) mod 2 along the whole string, and (abab)\\* its position mod 4; the counter languages need
counting to ``n``.

Training strings have lengths 1-40; the test bins are 1-40 (bin 0, fresh strings), 41-80 (bin 1)
and 81-160 (bin 2), 512 strings each (the same ones for every model and seed). Models, two layers
of width 32 (two heads), parameters matched to Hope's within 5% by the MLP width: Transformer++,
linear attention, DeltaNet, DeltaNet with negative eigenvalues (``eta_max = 2``: the control
for state tracking), self-modifying Titans and Hope, both of those two at chunk 1 (every
inner memory updates after every token: a non-linear recurrence, what the paper's claim rests on)
and at chunk 4/2 (the chunked, parallel form). Same data, steps and AdamW rate for every model;
3 seeds.

Run: ``python -m experiments.formal_languages.run [--smoke] [--languages ...] [--models ...]
[--report]``; one file per (language, model, seed) in ``results/runs/``, so a stopped run resumes.
"""

from __future__ import annotations

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
    selected_models,
    train_loop,
    write_grid,
)

OUT = "experiments/formal_languages/results"
N_LABELS = 5  # up to four symbols, then EOS
EOS = 4
BOS, PAD = 5, 6  # input-only tokens
SHAPE = {"vocab_size": 8, "d_model": 32, "n_layers": 2, "n_heads": 2, "max_len": 256}
# symbols of each language (label channels; EOS is channel 4 for all)
ALPHABETS = {
    "parity": "01",
    "aa": "a",
    "abab": "ab",
    "anbn": "ab",
    "anbncn": "abc",
    "shuffle2": "()[]",
}
LANG_LABELS = {
    "parity": "parity",
    "aa": "(aa)*",
    "abab": "(abab)*",
    "anbn": "a^n b^n",
    "anbncn": "a^n b^n c^n",
    "shuffle2": "Shuffle-2",
}
_RECURRENT = {"titans.chunk": 1, "selfmod.chunk": 1}
_HOPE_GD = {**_RECURRENT, "selfmod.rule": "gd", "selfmod.momentum": None, "titans.eta_max": 10.0}
MODELS = {
    "transformer": ("tiny", {}),
    "linear_attention": ("linear_attention_tiny", {}),
    "deltanet": ("deltanet_tiny", {}),
    # the delta rule's step up to 2 (Grazzi et al. 2025): the state-transition matrix
    # I - eta k k^T then has an eigenvalue in (-1, 1), so it can flip a sign per token
    "deltanet_neg": ("deltanet_tiny", {"titans.eta_max": 2.0}),
    "selfmod": ("selfmod_paper_tiny", {}),
    "selfmod_c1": ("selfmod_paper_tiny", _RECURRENT),
    "hope": ("hope_paper_tiny", {}),
    "hope_c1": ("hope_paper_tiny", _RECURRENT),
    # the test of the negative-eigenvalue reading (decisions D88): Hope at chunk 1 with plain GD
    # inner steps (no DGD: its decay keeps a write short of the target at any rate; no momentum:
    # one token's step is all of it) and large rates, its steps bounded by one error's worth
    # (``_gd``, the control) or allowed up to two (``_neg``: a step may overshoot the target and
    # flip the sign of what the memory holds)
    "hope_c1_gd": ("hope_paper_tiny", _HOPE_GD),
    "hope_c1_neg": ("hope_paper_tiny", {**_HOPE_GD, "titans.step_bound": 2.0}),
}
LABELS = {
    "transformer": "Transformer++",
    "linear_attention": "linear attention",
    "deltanet": "DeltaNet",
    "deltanet_neg": "DeltaNet, eigenvalues in (-1, 1)",
    "selfmod": "self-mod Titans (chunks 4/2)",
    "selfmod_c1": "self-mod Titans (chunk 1)",
    "hope": "Hope (chunks 4/2)",
    "hope_c1": "Hope (chunk 1)",
    "hope_c1_gd": "Hope (chunk 1, GD, steps <= 1 error)",
    "hope_c1_neg": "Hope (chunk 1, GD, steps <= 2 errors)",
}
# Hope and self-modifying Titans as every run of them made before decisions D89 (2026-12-06): the
# outer gradient stopped at each memory's self-generated target, so the value memory was never
# meta-learned. Kept to read the old runs back and to compare (``--models``, not by default).
BEFORE_D89 = tuple(f"{m}_sg_targets" for m in MODELS if m.startswith(("selfmod", "hope")))
for _name in BEFORE_D89:
    _base = _name.removesuffix("_sg_targets")
    MODELS[_name] = (MODELS[_base][0], {**MODELS[_base][1], "selfmod.target_grad": False})
    LABELS[_name] = f"{LABELS[_base]}, before D89"
BINS = {"bin0": (1, 40), "bin1": (41, 80), "bin2": (81, 160)}
FULL = {
    "steps": 800,
    "batch": 32,
    "train_lens": (1, 40),
    "lr": 3e-3,
    "bins": BINS,
    "test_strings": 512,
    "seeds": (0, 1, 2),
}
SMOKE = {
    **FULL,
    "steps": 3,
    "batch": 4,
    "train_lens": (1, 12),
    "bins": {"bin0": (1, 12), "bin1": (13, 24)},
    "test_strings": 8,
    "seeds": (0,),
}


# --- the languages -------------------------------------------------------------------------------
def string_lengths(lang: str, low: int, high: int) -> np.ndarray:
    """Every length in ``[low, high]`` that the language has strings of (at least one)."""
    step = {"aa": 2, "abab": 4, "anbn": 2, "anbncn": 3, "shuffle2": 2}.get(lang, 1)
    ls = np.arange(max(low, 1), high + 1)
    ls = ls[ls % step == 0]
    if ls.size == 0:
        raise ValueError(f"{lang} has no strings with length in [{low}, {high}].")
    return ls


def sample_string(lang: str, n: int, rng: np.random.Generator) -> str:
    """A uniformly drawn string of length ``n`` of the language (``n`` from :func:`string_lengths`)."""
    if lang == "parity":
        bits = rng.integers(0, 2, n)
        bits[-1] = bits[:-1].sum() % 2  # an even count of 1s
        return "".join("01"[b] for b in bits)
    if lang == "aa":
        return "a" * n
    if lang == "abab":
        return "ab" * (n // 2)
    if lang == "anbn":
        return "a" * (n // 2) + "b" * (n // 2)
    if lang == "anbncn":
        return "a" * (n // 3) + "b" * (n // 3) + "c" * (n // 3)
    if lang == "shuffle2":  # a random walk that can always close in the length left
        out, depth = [], [0, 0]
        for i in range(n):
            left = n - i - 1  # symbols after this one
            moves = [j for j in (0, 1) if depth[0] + depth[1] + 1 <= left]  # opens
            moves += [2 + j for j in (0, 1) if depth[j] > 0]  # closes
            m = moves[rng.integers(len(moves))]
            depth[m % 2] += 1 if m < 2 else -1
            out.append("([)]"[m] if m < 2 else ")]"[m - 2])
        return "".join(out)
    raise ValueError(f"unknown language {lang!r}; choose from {sorted(ALPHABETS)}.")


def targets(lang: str, s: str) -> np.ndarray:
    """``[len(s) + 1, N_LABELS]`` 0/1: row ``t`` says which symbols may follow ``s[:t]`` (channels
    in the language's alphabet order) and whether ``s[:t]`` is in the language (``EOS``)."""
    alpha = ALPHABETS[lang]
    y = np.zeros((len(s) + 1, N_LABELS), np.float32)
    for t in range(len(s) + 1):
        p = s[:t]
        if lang == "parity":
            nxt, end = "01", p.count("1") % 2 == 0
        elif lang == "aa":
            nxt, end = "a", t % 2 == 0
        elif lang == "abab":
            nxt, end = "ab"[t % 2], t % 4 == 0
        elif lang in ("anbn", "anbncn"):
            na, nb, nc = p.count("a"), p.count("b"), p.count("c")
            if nb == 0:  # still reading a's (or nothing yet)
                nxt, end = ("ab" if na else "a"), t == 0
            elif nb < na:
                nxt, end = "b", False
            elif lang == "anbn":
                nxt, end = "", True
            elif nc < na:
                nxt, end = "c", False
            else:
                nxt, end = "", True
        elif lang == "shuffle2":
            dp, ds = p.count("(") - p.count(")"), p.count("[") - p.count("]")
            nxt = "([" + (")" if dp else "") + ("]" if ds else "")
            end = dp == 0 and ds == 0
        else:
            raise ValueError(f"unknown language {lang!r}")
        for c in nxt:
            y[t, alpha.index(c)] = 1.0
        y[t, EOS] = float(end)
    return y


def channel_mask(lang: str) -> np.ndarray:
    """``[N_LABELS]``: the label channels that the language uses (its symbols and ``EOS``)."""
    m = np.zeros(N_LABELS, np.float32)
    m[: len(ALPHABETS[lang])] = 1.0
    m[EOS] = 1.0
    return m


def make_batch(lang: str, rng: np.random.Generator, batch: int, lens: tuple[int, int], pad_to=None):
    """``(tokens [B, T + 1], labels [B, T + 1, N_LABELS], mask [B, T + 1])``: tokens are ``BOS``
    then the string, padded with ``PAD`` to the longest (or ``pad_to``); ``mask`` marks each
    string's ``len + 1`` positions. Lengths uniform over those the language has in ``lens``."""
    ls = string_lengths(lang, *lens)
    strings = [sample_string(lang, int(rng.choice(ls)), rng) for _ in range(batch)]
    t = max(pad_to or 0, max(len(s) for s in strings))
    tokens = np.full((batch, t + 1), PAD, np.int32)
    labels = np.zeros((batch, t + 1, N_LABELS), np.float32)
    mask = np.zeros((batch, t + 1), np.float32)
    alpha = ALPHABETS[lang]
    for b, s in enumerate(strings):
        tokens[b, 0] = BOS
        tokens[b, 1 : len(s) + 1] = [alpha.index(c) for c in s]
        labels[b, : len(s) + 1] = targets(lang, s)
        mask[b, : len(s) + 1] = 1.0
    return tokens, labels, mask


# --- models, training and testing ----------------------------------------------------------------
def build(name: str, smoke: bool):
    """``(LanguageModel, parameter count)``; every model's ``d_ff`` matched to Hope's count."""
    from nested_jax.models import LanguageModel, count_params, get_config, matched_d_ff

    shape = {**SHAPE, **({"d_model": 16, "n_layers": 1} if smoke else {})}
    config = lambda m: get_config(MODELS[m][0], **{**shape, **MODELS[m][1]})
    cfg = config(name)
    if not name.startswith("hope"):
        cfg = cfg.replace(d_ff=matched_d_ff(cfg, count_params(config("hope")), multiple=8))
    return LanguageModel(cfg), count_params(cfg)


def _loss_and_hits(model, params, tokens, labels, mask, channels):
    """Masked binary cross-entropy per label, and the number of strings with every label right."""
    logits, _ = model.apply(params, tokens)
    z = logits[..., :N_LABELS]
    bce = jnp.logaddexp(0.0, z) - labels * z  # -log sigmoid(z) if 1, -log(1 - sigmoid(z)) if 0
    w = mask[..., None] * channels[None, None]
    loss = jnp.sum(bce * w) / jnp.sum(w)
    wrong = ((z > 0).astype(jnp.float32) != labels).astype(jnp.float32) * w
    ok = jnp.sum(wrong, axis=(1, 2)) == 0
    return loss, jnp.sum(ok.astype(jnp.float32))


def train_and_test(lang: str, name: str, seed: int, setup: dict, smoke: bool) -> dict:
    model, n_params = build(name, smoke)
    params = model.init(jax.random.key(seed))
    steps = setup["steps"]
    channels = jnp.asarray(channel_mask(lang))
    opt_state, step = adamw_step(
        lambda p, *batch: _loss_and_hits(model, p, *batch, channels)[0], params, steps, setup["lr"]
    )

    rng = np.random.default_rng(1000 + seed)
    train_len = setup["train_lens"][1]  # padded to the longest: one compiled shape
    batches = Batches(
        lambda: make_batch(lang, rng, setup["batch"], setup["train_lens"], pad_to=train_len), steps
    )
    params, losses, compile_s, train_s = train_loop(step, params, opt_state, batches)
    evaluate = jax.jit(lambda p, t, y, m: _loss_and_hits(model, p, t, y, m, channels))
    test_rng = np.random.default_rng(9999)  # the same test strings for every model and seed
    accuracy, test_loss = {}, {}
    for bin_name, lens in setup["bins"].items():
        hits = loss_sum = 0.0
        n, per = setup["test_strings"], min(setup["test_strings"], 128)
        for _ in range(n // per):
            batch = make_batch(lang, test_rng, per, lens, pad_to=lens[1])
            loss_b, h = evaluate(params, *batch)
            hits, loss_sum = hits + float(h), loss_sum + float(loss_b)
        accuracy[bin_name] = hits / (n // per * per)
        test_loss[bin_name] = loss_sum / (n // per)
    return {
        "language": lang,
        "model": name,
        "seed": seed,
        "params": n_params,
        "train_loss": [[i, v] for i, v in enumerate(losses) if v is not None],
        "final_train_loss": losses[-1],
        "accuracy": accuracy,
        "test_loss": test_loss,
        "compile_s": compile_s,
        "train_s": train_s,
        "steps_per_s": (steps - 1) / train_s if steps > 1 else None,
    }


def summarize(runs: list[dict]) -> dict:
    out = {}
    for lang in ALPHABETS:
        for name in MODELS:
            rs = [r for r in runs if r["language"] == lang and r["model"] == name]
            if not rs:
                continue
            out.setdefault(lang, {})[name] = {
                "params": rs[0]["params"],
                "seeds": [r["seed"] for r in rs],
                "accuracy": {
                    k: mean_std([r["accuracy"][k] for r in rs]) for k in rs[0]["accuracy"]
                },
                "final_train_loss": mean_std([r["final_train_loss"] for r in rs]),
                "steps_per_s": mean_std([r["steps_per_s"] for r in rs]),
                "compile_s": mean_std([r["compile_s"] for r in rs]),
            }
    return out


def table(summary: dict, bins=("bin0", "bin1", "bin2")) -> str:
    """The READMEs' table: one row per model, ``bin0 / bin1 / bin2`` per language (fraction of
    strings recognised, mean over seeds; ``(n)`` when fewer than 3 seeds; ``-`` not run)."""
    names = [m for m in MODELS if any(m in rows for rows in summary.values())]
    langs = [lang for lang in ALPHABETS if lang in summary]
    head = "| model | " + " | ".join(LANG_LABELS[lang] for lang in langs) + " |"
    lines = [head, "|---" * (len(langs) + 1) + "|"]
    for name in names:
        cells = []
        for lang in langs:
            row = summary[lang].get(name)
            if row is None:
                cells.append("-")
                continue
            acc = " / ".join(
                f"{row['accuracy'][b]['mean']:.2f}" for b in bins if b in row["accuracy"]
            )
            n = len(row["seeds"])
            cells.append(acc + (f" ({n})" if n < 3 else ""))
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(path: Path, summary: dict, setup: dict) -> None:
    plt = pyplot()
    langs = list(summary)
    if not langs:
        return
    bins = list(setup["bins"])
    fig, axes = plt.subplots(1, len(langs), figsize=(3.2 * len(langs), 3.6), sharey=True)
    axes = np.atleast_1d(axes)
    names = [m for m in MODELS if any(m in summary[lang] for lang in langs)]
    width = 0.8 / max(1, len(names))
    for ax, lang in zip(axes, langs, strict=True):
        for i, name in enumerate(names):
            row = summary[lang].get(name)
            if row is None:
                continue
            acc = [row["accuracy"][b] for b in bins]
            ax.bar(
                np.arange(len(bins)) + i * width,
                [a["mean"] for a in acc],
                width,
                yerr=[a["std"] for a in acc],
                color=f"C{i}",
                label=LABELS[name],
            )
        ax.set_xticks(np.arange(len(bins)) + 0.4 - width / 2)
        ax.set_xticklabels([f"{b}\n{setup['bins'][b][0]}-{setup['bins'][b][1]}" for b in bins])
        ax.set_title(LANG_LABELS[lang])
    axes[0].set_ylabel("strings recognised (mean ± std)")
    axes[-1].legend(fontsize=6)
    save_figure(fig, path)


def main(argv=None) -> dict:
    def more(p):
        p.add_argument("--languages", nargs="*", choices=list(ALPHABETS), default=list(ALPHABETS))
        p.add_argument(
            "--models",
            nargs="*",
            choices=list(MODELS),
            default=None,
            help=f"default: every model but the runs from before decisions D89 "
            f"({', '.join(BEFORE_D89)}) when training, every model with --report",
        )
        p.add_argument("--seeds", nargs="*", type=int, default=None)
        p.add_argument(
            "--report", action="store_true", help="only aggregate the finished runs (no training)"
        )

    args = parse_args(__doc__, OUT, argv, more)
    setup = SMOKE if args.smoke else FULL
    seeds = setup["seeds"] if args.seeds is None else tuple(args.seeds)
    models = selected_models(args.models, MODELS, BEFORE_D89, args.report)
    out = Path(args.out)

    def show(r):
        acc = " ".join(f"{k}:{v:.2f}" for k, v in r["accuracy"].items())
        return (
            f"{r['language']:>9} {r['model']:>16} seed {r['seed']}: loss "
            f"{r['final_train_loss']:.4f}, {acc}, {r['steps_per_s']:.1f} steps/s, "
            f"compile {r['compile_s']:.1f} s"
        )

    def train(stem):
        lang, rest = stem.split("-", 1)
        name, seed = rest.rsplit("-seed", 1)
        return train_and_test(lang, name, int(seed), setup, args.smoke)

    stems = [
        f"{lang}-{name}-seed{seed}" for seed in seeds for lang in args.languages for name in models
    ]
    # one file per (language, model, seed): a stopped grid resumes where it was
    runs = run_grid(out / "runs", stems, train, report=args.report, show=show)
    bins = {k: list(v) for k, v in setup["bins"].items()}

    def plot_and_print(summary):
        plot(out / "formal_languages.png", summary, setup)
        if args.report:
            print(table(summary, tuple(setup["bins"])))

    return write_grid(
        out,
        "formal languages (issue 16 item 1)",
        {**setup, "bins": bins},
        SHAPE,
        runs,
        summarize,
        plot_and_print,
    )


if __name__ == "__main__":
    main()
