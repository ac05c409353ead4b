"""Training throughput of the models at several sequence lengths (issue 4).

One training step = forward + backward + an AdamW step (``optax.adamw``), jitted, batch 1,
tokens/s = sequence length / median step time; compile seconds and XLA's compiled memory figures
(peak, temporaries) beside each. Models at (nearly) equal parameter counts, same width, depth and
heads: Transformer++ (SwiGLU width ``d_ff``), Titans (LMM, chunk 16), Hope-Attention and Hope (CMS
of two levels, each of width ``d_ff / 2``). ``hope`` / ``selfmod`` are the registry's defaults
(decisions D95: one chunk of 64 tokens for the main and generator memories, linear eta / alpha
maps, the teach signal's residual first pass; Hope's CMS periods 64 / 256); ``hope_paper`` /
``selfmod_paper`` / ``hope_attention_paper`` the faithful reference (main memory chunk 16, the
generators 8, CMS 16 / 64, errors through the whole network). Parameter counts are reported.

Reported per length: each model's speed relative to Transformer++, and each model's cost per token
relative to its own at the shortest length (the "flat cost" check). ``hope_paper_local`` /
``hope_paper_ntp`` (and the Hope-Attention ones): the reference with the CMS's label-free
``"local"`` signal or the exact next-token ``"ntp"`` one (second order). ``*_paper_c64``: the
reference with larger chunks (main memory 64, the others 16; Hope's CMS periods 64 and 256).
``transformer_pm``: Transformer++ with its MLP width chosen so that its parameter count matches
the default Hope's. ``--seqs`` restricts the lengths, ``--batch`` sets the batch size (the
amortisation check).

Each row also reports the step's matmul FLOPs counted on its jaxpr with every loop body times its
trip count (:mod:`benchmarks.flops`; XLA's ``cost_analysis`` counts a loop body once) and the
achieved matmul GFLOP/s (those FLOPs / the median step time), so a model's slowness splits into
"more work" and "work done less efficiently".

Run: ``python -m benchmarks.run model_throughput`` (``--quick``: tiny models, short sequences).
"""

from __future__ import annotations

import math

import jax
import optax

from benchmarks.flops import matmul_flops
from benchmarks.harness import time_interleaved
from nested_jax.models import LanguageModel, count_params, get_config, matched_d_ff

FULL = {
    "seqs": (512, 2048, 8192),
    "d_model": 256,
    "n_layers": 4,
    "n_heads": 4,
    "d_ff": 683,
    "models": ("transformer_pm", "titans", "hope_attention", "hope", "hope_paper"),
    # the exact next-token CMS at 8192 tokens: ~15 min per model on 2 cores; the reference Hope
    # at 8192 tokens does not fit this 24 GiB machine
    "skip": (
        ("hope_attention_paper_ntp", 8192),
        ("hope_paper_ntp", 8192),
        ("hope_paper", 8192),
    ),
}
QUICK = {
    "seqs": (32, 64),
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 2,
    "d_ff": 64,
    "models": ("transformer", "titans", "hope_attention", "hope"),
}

_NAMES = {
    "transformer": "tiny",
    "transformer_pm": "tiny",  # MLP width matched to Hope's parameter count
    "titans": "titans_tiny",
    "hope_attention": "hope_attention_tiny",  # the default (D99): CMS 64 / 256, online signal
    "hope": "hope_tiny",  # the default Hope (decisions D95), chunks of 64
    "hope_paper": "hope_paper_tiny",  # the faithful reference: chunks 16 / 8, CMS 16 / 64
    "hope_paper_local": "hope_paper_tiny",  # the reference with the label-free local CMS signal
    "hope_paper_ntp": "hope_paper_tiny",  # the exact next-token CMS signal (second order)
    "hope_attention_paper": "hope_attention_paper_tiny",  # the first design: CMS 16 / 64, teach
    "hope_attention_paper_local": "hope_attention_paper_tiny",
    "hope_attention_paper_ntp": "hope_attention_paper_tiny",
    "hope_cms_frozen": "hope_tiny",  # the default with its CMS frozen: what the CMS's learning costs
    # the default with the CMS of D99-D100 (periods 64 / 256, an eighth of 512 tokens)
    "hope_cms64": "hope_tiny",
    "hope_attention_cms64": "hope_attention_tiny",
    "hope_attention_cms_frozen": "hope_attention_tiny",  # the same for Hope-Attention
    # Hope-Attention with CMS chunks a quarter of 512 tokens (periods 128 / 256): half as many
    # chunks run one after the other (decisions D100)
    "hope_attention_c128": "hope_attention_tiny",
    "hope_teach": "hope_tiny",  # the default of D95-D98: the two-pass teach signal, learned rates
    "hope_online_lr": "hope_tiny",  # the default with the CMS levels' rates learned (D99)
    "hope_c32": "hope_tiny",  # the default with memory chunks of 32 (a sixteenth of 512)
    "hope_c128": "hope_tiny",  # the default with memory chunks of 128 (a quarter of 512)
    # the first design with the teach signal's residual path (D98)
    "hope_attention_residual": "hope_attention_paper_tiny",
    "selfmod": "selfmod_tiny",  # self-modifying Titans with a SwiGLU MLP (Hope without CMS)
    "selfmod_paper": "selfmod_paper_tiny",
    # the default with its generators fixed (no in-context learning of k / v / eta / alpha; not a
    # valid design: it removes self-modification): the floor under every generator-cost lever
    "selfmod_fixed_gen": "selfmod_tiny",
    "selfmod_paper_c64": "selfmod_paper_tiny",  # the reference with chunks 64 / 16
    "hope_paper_c64": "hope_paper_tiny",  # the same, CMS periods 64 / 256
}
# the default Hope's and self-modifying Titans' chunks at this shape: an eighth of 512 tokens;
# its CMS periods a quarter and a half of them (decisions D101)
DEFAULT_CHUNK = 64
DEFAULT_PERIODS = (2 * DEFAULT_CHUNK, 4 * DEFAULT_CHUNK)


def model_config(kind: str, seq: int, cfg: dict):
    sizes = {k: cfg[k] for k in ("d_model", "n_layers", "n_heads", "d_ff")}
    extra = {"titans.chunk": 16}
    if kind.startswith("hope"):
        sizes["d_ff"] = cfg["d_ff"] // 2  # two CMS levels: the same MLP parameters in total
        extra["cms.periods"] = (16, 64)
    if kind.startswith(("hope_paper", "selfmod_paper")):
        extra["selfmod.chunk"] = 8
    elif kind in (
        "hope",
        "hope_cms_frozen",
        "hope_cms64",
        "selfmod",
        "selfmod_fixed_gen",
        "hope_teach",
        "hope_online_lr",
        "hope_c32",
        "hope_c128",
    ):
        extra.update({"titans.chunk": DEFAULT_CHUNK, "selfmod.chunk": DEFAULT_CHUNK})
        if kind in ("hope", "hope_teach", "hope_online_lr", "hope_c32", "hope_c128"):
            extra["cms.periods"] = DEFAULT_PERIODS
        if kind == "hope_teach":
            extra.update({"cms.signal": "teach", "cms.learn_lr": True})
        if kind == "hope_online_lr":
            extra["cms.learn_lr"] = True
        if kind == "hope_cms_frozen":
            extra["cms.periods"] = (0, 0)
    if kind == "selfmod_fixed_gen":
        extra["selfmod.adaptive"] = False
    if kind == "hope_attention_residual":
        extra["cms.teach_path"] = "residual"
    if kind == "hope_attention":  # the default (D101): Hope's CMS
        extra["cms.periods"] = DEFAULT_PERIODS
    if kind in ("hope_cms64", "hope_attention_cms64"):  # the CMS of D99-D100: an eighth of 512
        extra["cms.periods"] = (DEFAULT_CHUNK, 4 * DEFAULT_CHUNK)
    if kind == "hope_attention_cms_frozen":
        extra["cms.periods"] = (0, 0)
    if kind == "hope_attention_c128":
        extra["cms.periods"] = (2 * DEFAULT_CHUNK, 4 * DEFAULT_CHUNK)
    if kind in ("hope_c32", "hope_c128"):
        extra.update({"titans.chunk": int(kind[6:]), "selfmod.chunk": int(kind[6:])})
    if kind.endswith("_c64"):
        extra.update({"titans.chunk": 64, "selfmod.chunk": 16})
        if kind.startswith("hope"):
            extra["cms.periods"] = (64, 256)
    for signal in ("local", "ntp"):
        if kind.endswith("_" + signal):
            extra["cms.signal"] = signal
    config = get_config(_NAMES[kind], max_len=seq, **sizes, **extra)
    if kind == "transformer_pm":
        target = count_params(model_config("hope", seq, cfg))
        config = get_config(
            _NAMES[kind], max_len=seq, **{**sizes, "d_ff": matched_d_ff(config, target)}
        )
    return config.replace(compute_dtype=cfg.get("compute_dtype", "float32"))


def run(
    quick: bool = False,
    repeats: int = 5,
    models=None,
    seqs=None,
    batch: int = 1,
    rounds: int = 1,
    compute_dtype: str = "float32",
) -> dict:
    cfg = dict(QUICK if quick else FULL)
    cfg["batch"] = batch
    cfg["compute_dtype"] = compute_dtype
    cfg["rounds"] = rounds
    if seqs:
        cfg["seqs"] = tuple(seqs)
    models = tuple(models or cfg["models"])
    rows = []
    first = {}
    for seq in cfg["seqs"]:
        cases, built = {}, {}
        for kind in models:
            if (kind, seq) in {tuple(x) for x in cfg.get("skip", ())}:
                print(f"{kind:>15} seq={seq:<5} skipped (config 'skip')", flush=True)
                continue
            model = LanguageModel(model_config(kind, seq, cfg))
            params = model.init(jax.random.key(0))
            tx = optax.adamw(1e-3, weight_decay=0.1)
            opt_state = tx.init(params)
            tokens = jax.random.randint(jax.random.key(1), (batch, seq), 0, model.config.vocab_size)

            def train_step(params, opt_state, tokens, model=model, tx=tx):
                loss, g = jax.value_and_grad(model.loss)(params, tokens)
                with jax.numpy_dtype_promotion("standard"):
                    u, opt_state = tx.update(g, opt_state, params)
                return optax.apply_updates(params, u), opt_state, loss

            cases[kind] = (train_step, (params, opt_state, tokens))
            built[kind] = model
        # every model compiled, then timed in turn (rounds interleaved): ratios from one run
        timed = time_interleaved(cases, repeats=repeats, rounds=rounds)
        per_model = {}
        for kind, (train_step, args) in cases.items():
            model, params, tokens = built[kind], args[0], args[2]
            t = timed[kind]
            flops = matmul_flops(train_step, *args)
            loss = float(jax.jit(model.loss)(params, tokens))
            if not math.isfinite(loss):
                raise FloatingPointError(f"{kind} at seq {seq}: the loss at init is {loss}.")
            per_model[kind] = t
            per_token = t["median_s"] / seq
            first.setdefault(kind, per_token)
            rows.append(
                {
                    "model": kind,
                    "seq": seq,
                    "params": model.num_params(params),
                    "batch": batch,
                    "tokens_per_s": batch * seq / t["median_s"],
                    "loss_at_init": loss,
                    "cost_per_token_vs_shortest": per_token / first[kind],
                    "matmul_gflop_per_step": flops / 1e9,
                    "matmul_gflop_per_s": flops / 1e9 / t["median_s"],
                    **t,
                }
            )
            print(
                f"{kind:>15} seq={seq:<5} {t['median_s'] * 1e3:9.1f} ms/step "
                f"{batch * seq / t['median_s']:9.0f} tok/s  compile {t['compile_s']:.1f}s  "
                f"{flops / 1e9:7.1f} GFLOP ({flops / 1e9 / t['median_s']:5.1f} GFLOP/s)  "
                f"cost/token x{per_token / first[kind]:.2f} vs shortest",
                flush=True,
            )
        for base in ("transformer", "transformer_pm"):
            if base not in per_model:
                continue
            for kind in models:
                if kind.startswith("transformer") or kind not in per_model:
                    continue
                ratio = per_model[base]["median_s"] / per_model[kind]["median_s"]
                rows.append({"model": f"{kind}/{base} speed", "seq": seq, "ratio": ratio})
                print(f"{'':>15} seq={seq:<5} {kind} speed / {base} = {ratio:.2f}")
    return {
        "benchmark": "model_throughput",
        "config": {**cfg, "models": list(models), "quick": quick},
        "results": rows,
    }
