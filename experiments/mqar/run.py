"""Multi-query associative recall (MQAR): where does each model's recall break? (issue 16 item 2)

A sequence holds ``N`` key-value pairs, then filler, then every key again as a query followed by
its value: ``k_1 v_1 ... k_N v_N  f f ... f  k_a v_a  k_b v_b ...`` (queries in random order,
each key once). Keys are drawn without replacement from 64 key tokens, values with replacement
from 64 value tokens, filler from 64 other tokens. Every model is trained on the same sequences
(next-token loss on the answers only) with ``N`` uniform in ``[2, 8]`` at length 64, then tested
on each ``N`` in 2 / 4 / 8 / 16 (16: more pairs than ever trained on) at lengths 64, 128 and 256
(longer filler gaps between the pairs and the queries: lengths never trained on). Score: the
fraction of answers that are the argmax (recall accuracy; chance is 1/64).

Models, each 2 layers of width 64 (2 heads), parameters matched to Hope's within 5% by the MLP
width: Transformer++ (full causal attention), linear attention, DeltaNet, gated DeltaNet (the
Titans layer with a matrix memory and the per-token GD rule: ``titans.memory="linear"``), Titans
with a linear memory (momentum, chunked gradients) and Titans with its deep MLP memory (the paper's
claim: a deep memory holds more than a linear one), and Hope. Same data, steps and AdamW rate for
every model; 3 seeds (initialisation and data), mean ± std.

Diagnostic variants (named in ``--models``; not trained by default):
why Titans' linear memory loses its recall at long gaps, changing one thing at a time on the way
from ``titans_linear`` (momentum, gradients at 8-token chunk boundaries, ``eta_max`` 0.1) to
``gated_deltanet`` (no momentum, per-token, ``eta_max`` 1): per-token momentum (chunk 1), then
no momentum (per-token GD at ``eta_max`` 0.1, i.e. gated DeltaNet at that rate cap); and gated
DeltaNet at ``eta_max`` 0.3 (``--models gated_deltanet_eta03``), between the two caps.

Run: ``python -m experiments.mqar.run [--smoke] [--models ...] [--report] [--out ...]``
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

OUT = "experiments/mqar/results"
N_KEYS = N_VALUES = N_FILLER = 64  # token ranges: keys [0, 64), values [64, 128), filler [128, 192)
SHAPE = {"vocab_size": 192, "d_model": 64, "n_layers": 2, "n_heads": 2, "max_len": 512}
_HOPE = {"titans.chunk": 8, "selfmod.chunk": 4, "cms.periods": (8, 32), "d_ff": 64}
# (registry config, overrides): every model's d_ff is then matched to Hope's parameter count
MODELS = {
    "transformer": ("tiny", {}),
    "linear_attention": ("linear_attention_tiny", {"titans.chunk": 16}),
    "deltanet": ("deltanet_tiny", {"titans.chunk": 16}),
    "gated_deltanet": ("gated_deltanet_tiny", {"titans.chunk": 16}),
    "titans_linear": ("titans_tiny", {"titans.memory": "linear", "titans.chunk": 8}),
    "titans": ("titans_tiny", {"titans.chunk": 8}),
    "hope": ("hope_paper_tiny", _HOPE),
    # why does Titans' linear memory lose its recall at long gaps? One change at a time from
    # ``titans_linear`` towards ``gated_deltanet`` (run with ``--models``, not by default):
    "titans_linear_c1": ("titans_tiny", {"titans.memory": "linear", "titans.chunk": 1}),
    "titans_linear_gd": (
        "titans_tiny",
        {"titans.memory": "linear", "titans.rule": "gd", "titans.chunk": 8},
    ),
    # between the two (titans_linear_gd is gated DeltaNet at eta_max 0.1): the inner rate's cap
    "gated_deltanet_eta03": ("gated_deltanet_tiny", {"titans.chunk": 16, "titans.eta_max": 0.3}),
    # why did Hope not learn the task? One change at a time from ``hope``: the outer gradient
    # stopped at the self-generated targets (Hope before decisions D89), no CMS (self-modifying
    # Titans, its MLP width matched), plain GD inner steps, fixed k / v projections, every memory
    # writing the shared v_t, values not L2-normalised, a linear Hebbian main memory, 10x the
    # inner rates
    "hope_sg_targets": ("hope_paper_tiny", {**_HOPE, "selfmod.target_grad": False}),
    "selfmod": ("selfmod_paper_tiny", {"titans.chunk": 8, "selfmod.chunk": 4}),
    "hope_gd": ("hope_paper_tiny", {**_HOPE, "selfmod.rule": "gd"}),
    "hope_fixed_kv": ("hope_paper_tiny", {**_HOPE, "selfmod.adaptive": False}),
    "hope_shared_values": ("hope_paper_tiny", {**_HOPE, "selfmod.self_values": False}),
    "hope_free_values": ("hope_paper_tiny", {**_HOPE, "selfmod.unit_values": False}),
    "hope_linear_main": ("hope_paper_tiny", {**_HOPE, "selfmod.main": "linear"}),
    "hope_eta1": ("hope_paper_tiny", {**_HOPE, "titans.eta_max": 1.0}),
    # why does Hope (fixed) lose its recall at longer gaps? Momentum made Titans' linear memory
    # lose it (titans_linear_gd keeps it); Hope's memories all carry momentum 0.9
    "hope_no_momentum": ("hope_paper_tiny", {**_HOPE, "selfmod.momentum": None}),
}
DIAGNOSTICS = (
    "titans_linear_c1",
    "titans_linear_gd",
    "gated_deltanet_eta03",
    "hope_sg_targets",
    "selfmod",
    "hope_gd",
    "hope_fixed_kv",
    "hope_shared_values",
    "hope_free_values",
    "hope_linear_main",
    "hope_eta1",
    "hope_no_momentum",
)
LABELS = {
    "transformer": "Transformer++",
    "linear_attention": "linear attention",
    "deltanet": "DeltaNet",
    "gated_deltanet": "gated DeltaNet",
    "titans_linear": "Titans, linear memory",
    "titans": "Titans (deep memory)",
    "hope": "Hope",
    "titans_linear_c1": "Titans, linear memory, per-token momentum",
    "titans_linear_gd": "Titans, linear memory, no momentum",
    "gated_deltanet_eta03": "gated DeltaNet, eta_max 0.3",
    "hope_sg_targets": "Hope, no outer gradient through its targets (before D89)",
    "selfmod": "self-modifying Titans (Hope without CMS)",
    "hope_gd": "Hope, GD inner steps",
    "hope_fixed_kv": "Hope, fixed k / v projections",
    "hope_shared_values": "Hope, every memory writing v_t",
    "hope_free_values": "Hope, values not L2-normalised",
    "hope_linear_main": "Hope, a linear (Hebbian) main memory",
    "hope_eta1": "Hope, eta_max 1 (10x larger inner rates)",
    "hope_no_momentum": "Hope, no momentum in its inner rules",
}
FULL = {
    "steps": 1200,
    "batch": 32,
    "train_len": 64,
    "train_pairs": (2, 8),
    "lr": 3e-3,
    "test_pairs": (2, 4, 8, 16),
    "test_lens": (64, 128, 256),
    "test_batches": 4,
    "seeds": (0, 1, 2),
}
SMOKE = {
    **FULL,
    "steps": 3,
    "batch": 4,
    "train_len": 32,
    "train_pairs": (2, 4),
    "test_pairs": (4,),
    "test_lens": (32, 64),
    "test_batches": 1,
    "seeds": (0,),
}


def make_batch(rng: np.random.Generator, batch: int, n_pairs, length: int):
    """``(tokens [batch, length], answer mask [batch, length - 1])``: ``mask[b, j]`` marks the
    positions whose next token ``tokens[b, j + 1]`` is an answer. ``n_pairs``: an int, or a
    ``(low, high)`` range drawn per sequence."""
    tokens = np.empty((batch, length), np.int32)
    mask = np.zeros((batch, length - 1), bool)
    for b in range(batch):
        n = n_pairs if isinstance(n_pairs, int) else int(rng.integers(n_pairs[0], n_pairs[1] + 1))
        if 4 * n > length:
            raise ValueError(f"{n} pairs need {4 * n} tokens; the length is {length}.")
        if n > N_KEYS:
            raise ValueError(f"at most {N_KEYS} pairs (distinct keys), got {n}.")
        keys = rng.choice(N_KEYS, n, replace=False)
        values = N_KEYS + rng.integers(0, N_VALUES, n)
        order = rng.permutation(n)
        gap = length - 4 * n
        filler = N_KEYS + N_VALUES + rng.integers(0, N_FILLER, gap)
        pairs = np.stack([keys, values], 1).reshape(-1)
        queries = np.stack([keys[order], values[order]], 1).reshape(-1)
        tokens[b] = np.concatenate([pairs, filler, queries])
        mask[b, 2 * n + gap + np.arange(n) * 2] = True  # each query key predicts its value
    return tokens, mask


def build(name: str, smoke: bool):
    """``(LanguageModel, parameter count)`` of one model at the experiment's size (``d_ff``
    matched to Hope's parameter count, a multiple of 8)."""
    from nested_jax.models import LanguageModel, count_params, get_config, matched_d_ff

    shape = {**SHAPE, **({"d_model": 16, "n_layers": 1} if smoke else {})}
    config = lambda m: get_config(MODELS[m][0], **{**shape, **MODELS[m][1]})
    cfg = config(name)
    if name != "hope":
        cfg = cfg.replace(d_ff=matched_d_ff(cfg, count_params(config("hope")), multiple=8))
    return LanguageModel(cfg), count_params(cfg)


def _answer_nll_and_hits(model, params, tokens, mask):
    from nested_jax.models import token_nll

    logits, _ = model.apply(params, tokens)
    nll = token_nll(logits, tokens)
    hit = jnp.argmax(logits[:, :-1], -1) == tokens[:, 1:]
    m = mask.astype(jnp.float32)
    return jnp.sum(nll * m) / jnp.sum(m), jnp.sum(hit.astype(jnp.float32) * m), jnp.sum(m)


def train_and_test(name: str, seed: int, setup: dict, smoke: bool) -> dict:
    model, n_params = build(name, smoke)
    params = model.init(jax.random.key(seed))
    opt_state, step = adamw_step(
        lambda p, tokens, mask: _answer_nll_and_hits(model, p, tokens, mask)[0],
        params,
        setup["steps"],
        setup["lr"],
    )

    rng = np.random.default_rng(1000 + seed)
    batches = Batches(
        lambda: make_batch(rng, setup["batch"], setup["train_pairs"], setup["train_len"]),
        setup["steps"],
    )
    params, losses, compile_s, train_s = train_loop(step, params, opt_state, batches)
    if not np.isfinite(losses[-1]):
        print(f"{name} seed {seed}: non-finite training loss", flush=True)
    record = {
        "model": name,
        "seed": seed,
        "params": n_params,
        "train_loss": [[i, v] for i, v in enumerate(losses) if v is not None],
        "final_train_loss": losses[-1],
        "accuracy": recall(model, params, setup),
        "compile_s": compile_s,
        "train_s": train_s,
        "tokens_per_s": (setup["steps"] - 1) * setup["batch"] * setup["train_len"] / train_s,
    }
    ablated = eval_ablations(model.config)
    if ablated:  # the same trained weights with one in-context learner stopped at evaluation
        from nested_jax.models import LanguageModel

        record["accuracy_ablated"] = {
            k: recall(LanguageModel(cfg), params, setup) for k, cfg in ablated.items()
        }
    return record


def recall(model, params, setup: dict) -> dict:
    """Recall accuracy per ``"<length>/<pairs>"`` on the test sequences (the same ones for every
    model, seed and ablation)."""
    evaluate = jax.jit(lambda p, t, m: _answer_nll_and_hits(model, p, t, m)[1:])
    test_rng = np.random.default_rng(9999)
    accuracy = {}
    for length in setup["test_lens"]:
        for n in setup["test_pairs"]:
            if 4 * n > length:
                continue
            hits = total = 0.0
            for _ in range(setup["test_batches"]):
                tokens, mask = make_batch(test_rng, setup["batch"], n, length)
                h, c = evaluate(params, tokens, mask)
                hits, total = hits + float(h), total + float(c)
            accuracy[f"{length}/{n}"] = hits / total
    return accuracy


def eval_ablations(config) -> dict:
    """Hope's in-context learners, each stopped at evaluation in a copy of its config (the trained
    weights unchanged): ``cms_frozen``, every CMS level kept at its learned initial weights
    (``cms.lr = 0``); ``generators_frozen``, the k / v / eta / alpha memories kept at theirs
    (``selfmod.adaptive = False``), so only the main memory learns in context. Which of them
    makes the recall fall at longer gaps? Empty for the other models."""
    out = {}
    if config.kind == "hope":
        out["cms_frozen"] = config.replace(cms={"lr": 0.0})
    if config.kind in ("hope", "selfmod") and config.selfmod.adaptive:
        out["generators_frozen"] = config.replace(**{"selfmod.adaptive": False})
    return out


def summarize(runs: list[dict]) -> dict:
    out = {}
    for name in MODELS:
        rs = [r for r in runs if r["model"] == name]
        if not rs:
            continue
        keys = rs[0]["accuracy"]
        out[name] = {
            "params": rs[0]["params"],
            "seeds": [r["seed"] for r in rs],
            "accuracy": {k: mean_std([r["accuracy"][k] for r in rs]) for k in keys},
            "final_train_loss": mean_std([r["final_train_loss"] for r in rs]),
            "tokens_per_s": mean_std([r["tokens_per_s"] for r in rs]),
            "compile_s": mean_std([r["compile_s"] for r in rs]),
        }
        if all("accuracy_ablated" in r for r in rs):  # runs made before it was recorded lack it
            out[name]["accuracy_ablated"] = {
                a: {k: mean_std([r["accuracy_ablated"][a][k] for r in rs]) for k in keys}
                for a in rs[0]["accuracy_ablated"]
            }
    return out


def plot(path: Path, summary: dict, setup: dict) -> None:
    plt = pyplot()
    lens = setup["test_lens"]
    fig, axes = plt.subplots(1, len(lens), figsize=(5 * len(lens), 4), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, length in zip(axes, lens, strict=True):
        for i, (name, row) in enumerate(summary.items()):
            ns = [n for n in setup["test_pairs"] if f"{length}/{n}" in row["accuracy"]]
            acc = [row["accuracy"][f"{length}/{n}"] for n in ns]
            ax.errorbar(
                ns,
                [a["mean"] for a in acc],
                yerr=[a["std"] for a in acc],
                fmt="-o",
                ms=3,
                capsize=2,
                color=f"C{i}",
                label=LABELS[name],
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("key-value pairs N")
        trained = " (training length)" if length == setup["train_len"] else " (longer gap)"
        ax.set_title(f"sequence length {length}{trained}")
    axes[0].set_ylabel("recall accuracy (mean ± std over seeds)")
    axes[0].legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> dict:
    def more(p):
        p.add_argument(
            "--models",
            nargs="*",
            choices=list(MODELS),
            help=f"default: every model but the diagnostic variants ({', '.join(DIAGNOSTICS)}) "
            "when training, every model with --report",
        )
        p.add_argument(
            "--report", action="store_true", help="only aggregate the finished runs (no training)"
        )
        p.add_argument("--seeds", type=int, nargs="*", help="default: 0 1 2")
        p.add_argument(
            "--steps",
            type=int,
            help="a shorter (or longer) training run, for probes; its runs go to "
            f"{OUT}/steps<N> unless --out is given",
        )

    args = parse_args(__doc__, OUT, argv, more)
    setup = SMOKE if args.smoke else FULL
    out = Path(args.out)
    if args.seeds:
        setup = {**setup, "seeds": tuple(args.seeds)}
    if args.steps is not None:
        if args.steps < 2:
            raise ValueError(
                f"--steps must be at least 2 (one compiles, one is timed), got {args.steps}."
            )
        setup = {**setup, "steps": args.steps}
        if args.out == OUT:
            out = out / f"steps{args.steps}"
    out.mkdir(parents=True, exist_ok=True)

    def show(r):
        acc = " ".join(f"{k}:{v:.2f}" for k, v in r["accuracy"].items())
        return (
            f"{r['model']:>16} seed {r['seed']}: loss {r['final_train_loss']:.3f}, acc {acc}, "
            f"{r['tokens_per_s']:.0f} tok/s, compile {r['compile_s']:.1f} s"
        )

    def train(stem):
        name, seed = stem.rsplit("-seed", 1)
        return train_and_test(name, int(seed), setup, args.smoke)

    models = selected_models(args.models, MODELS, DIAGNOSTICS, args.report)
    stems = [f"{name}-seed{seed}" for seed in setup["seeds"] for name in models]
    # one file per (model, seed): a stopped grid resumes where it was
    runs = run_grid(out / "runs", stems, train, report=args.report, show=show)
    return write_grid(
        out,
        "mqar (issue 16 item 2)",
        setup,
        SHAPE,
        runs,
        summarize,
        lambda summary: plot(out / "mqar.png", summary, setup),
    )


if __name__ == "__main__":
    main()
