"""The language-modelling experiments' models, sizes, corpora and budgets (issues 15 and 43).

Every model of a size has the default Hope's parameter count within 5% (its MLP width ``d_ff``
chosen by :func:`nested_jax.models.matched_d_ff`, a multiple of 8; for ``hope_paper`` its CMS
levels' width), counted with the corpus's vocabulary; :func:`model_spec` raises if a match
misses. ``hope``, ``selfmod`` and ``hope_attention`` are the registry's defaults (decisions
D95-D103) with the chunking rule of the 512-token configs applied to the grid's 256-token
sequences: memory chunks an eighth of the training length (32), CMS periods a quarter and a half
of it (64 / 128). ``hope_paper`` is Hope's first design at the registry's CPU chunking
(``hope_paper_small``: neural memory chunk 16, self-modifying memories 8, CMS periods 16 / 64).
The issue-15 cells (``small-shakespeare-5000kB``) were matched to ``hope_paper``'s count; they
are kept as they are, and the grids of issue 43 have their own budgets (:data:`BUDGETS`).
"""

from __future__ import annotations

MODELS = ("transformer", "titans", "selfmod", "hope_attention", "hope", "hope_paper")
LABELS = {
    "transformer": "Transformer++",
    "titans": "Titans",
    "selfmod": "self-modifying Titans",
    "hope_attention": "Hope-Attention",
    "hope": "Hope",
    "hope_paper": "Hope (first design, hope_paper)",
}
# the defaults' chunking at the grid's 256-token sequences (decisions D101)
_CHUNK, _PERIODS = 32, (64, 128)
_MEM = {"titans": {"chunk": _CHUNK}, "selfmod": {"chunk": _CHUNK}}
# the registry config each model starts from; every shape field is set by SIZES below
_BASE = {
    "transformer": ("tiny", {}),
    "titans": ("titans_tiny", {"titans": {"chunk": 16}}),
    "selfmod": ("selfmod_tiny", _MEM),
    "hope_attention": ("hope_attention_tiny", {"cms": {"periods": _PERIODS}}),
    "hope": ("hope_tiny", {**_MEM, "cms": {"periods": _PERIODS}}),
    "hope_paper": ("hope_paper_small", {}),
}
# the model every other one is matched to
TARGET = "hope"
# d_ff is Hope's (its CMS levels' hidden width); the others' d_ff is matched to Hope's count
SIZES = {
    # issue 43's two sizes (4.1x apart): every cell of them fits 50 minutes on one core
    "xs": {"d_model": 64, "n_layers": 4, "n_heads": 4, "d_ff": 48},  # 0.20M (bytes)
    "small": {"d_model": 128, "n_layers": 4, "n_heads": 4, "d_ff": 128},  # 0.83M (bytes)
    # 3.75M: hope_paper trains 99 tokens/s here on one core, so an equal-token budget of
    # 50 minutes is 200 kB (0.05 tokens per parameter): probed, not in the grid
    "medium": {"d_model": 256, "n_layers": 4, "n_heads": 4, "d_ff": 352},
    "smoke": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16},  # the tests' run
}
CORPORA = {
    "shakespeare": {"corpus": "shakespeare", "tokenizer": "byte"},
    # a small BPE vocabulary so that embeddings do not outweigh a ~1M-parameter model
    "wikipedia": {"corpus": "wikipedia", "tokenizer": "bpe", "bpe_vocab": 1024},
}
MATCH = 0.05  # largest relative parameter difference to Hope allowed
# Issue 43's equal-token budgets (bytes of training text per cell): the probe's largest budget
# whose slowest model (hope_paper) trains within 50 minutes on one core
# (`results/probe-<size>-<corpus>.json`: 2.6M / 1.1M / 6.4M bytes), less ~8% for what the probe
# does not see (its 15% for evaluations and checkpoints is an estimate; the first cell of each
# model checks it). Table 6's ablations run at a quarter of the xs Shakespeare budget.
BUDGETS = {
    ("xs", "shakespeare"): 2_400_000,
    ("small", "shakespeare"): 1_000_000,
    ("xs", "wikipedia"): 6_000_000,
}
# Table 6 analogue: Hope with one mechanism removed (not re-matched: each removes what it says)
ABLATIONS = {
    "no_dgd": ({"selfmod": {"rule": "gd"}}, "w/o DGD (plain GD)"),
    "no_momentum": ({"selfmod": {"momentum": None}}, "w/o momentum"),
    "no_retention": ({"selfmod": {"retention": False}}, "w/o weight decay (alpha = 1)"),
    "no_cms": ({"cms": {"periods": (0, 0)}}, "w/o CMS (frozen: two MLPs)"),
    "no_self_values": ({"selfmod": {"self_values": False}}, "w/o self-generated values"),
    "fixed_kvq": ({"selfmod": {"adaptive": False}}, "w/o adaptive k / v / q"),
    "cms_1": ({"cms": {"periods": (64,)}}, "CMS with 1 level (64)"),
    "cms_3": ({"cms": {"periods": (64, 128, 256)}}, "CMS with 3 levels (64 / 128 / 256)"),
}
VARIANTS = tuple(f"hope-{k}" for k in ABLATIONS)
ALL = MODELS + VARIANTS
LABELS.update({f"hope-{k}": f"Hope {v[1]}" for k, v in ABLATIONS.items()})


def _vocab(corpus: str) -> int:
    spec = CORPORA[corpus]
    return 256 if spec["tokenizer"] == "byte" else spec["bpe_vocab"]


def model_spec(model: str, size: str, corpus: str, max_len: int, extra: dict | None = None):
    """``(registry name, overrides as a dotted-path tuple, parameter count)`` of ``model`` at
    ``size`` on ``corpus``. ``extra``: overrides applied to Hope too before the others are
    matched to it (an ablation's)."""
    from nested_jax.models import count_params, get_config, matched_d_ff

    if model in VARIANTS:  # an ablation: Hope with its overrides, not re-matched
        return model_spec("hope", size, corpus, max_len, ABLATIONS[model[5:]][0])
    if model not in _BASE:
        raise ValueError(f"model must be one of {ALL}, got {model!r}.")
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}.")
    shape = {**SIZES[size], "vocab_size": _vocab(corpus), "max_len": max_len}
    name, own = _BASE[model]
    cfg = get_config(name, **shape, **_merge(own, extra or {}))
    hope_name, hope_own = _BASE[TARGET]
    target = count_params(get_config(hope_name, **shape, **hope_own))
    if model != TARGET:
        cfg = cfg.replace(d_ff=matched_d_ff(cfg, target, multiple=8))
    n = count_params(cfg)
    if abs(n / target - 1) > MATCH and model != TARGET:
        raise ValueError(
            f"{model} at {size} has {n:,} parameters, {n / target - 1:+.1%} from Hope's {target:,} "
            f"(allowed {MATCH:.0%}): its d_ff cannot match; change SIZES."
        )
    base = get_config(name)
    overrides = tuple(_diff(base, cfg))
    return name, overrides, n


def _merge(own: dict, extra: dict) -> dict:
    """``own`` with ``extra`` on top, sub-config dicts merged field by field."""
    out = dict(own)
    for k, v in extra.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _diff(base, cfg):
    """The dotted-path overrides that turn registry config ``base`` into ``cfg``."""
    import dataclasses

    for f in dataclasses.fields(cfg):
        a, b = getattr(base, f.name), getattr(cfg, f.name)
        if a == b:
            continue
        if dataclasses.is_dataclass(b):
            for g in dataclasses.fields(b):
                if getattr(a, g.name) != getattr(b, g.name):
                    yield (f"{f.name}.{g.name}", getattr(b, g.name))
        else:
            yield (f.name, b)


def grid_key(size: str, corpus: str, nbytes: int) -> str:
    """The name of one grid (size, corpus, training budget): its folder and its results key."""
    return f"{size}-{corpus}-{nbytes // 1000}kB"


def record_key(rec: dict) -> str:
    """:func:`grid_key` of a cell's or an evaluation's record."""
    return grid_key(rec["size"], rec["corpus"], rec["budget_bytes"])


def by_grid(records: list[dict]) -> dict:
    """Records (cells or evaluations) grouped ``{grid key: {model: [records]}}``, the grids in
    sorted order and the models in :data:`ALL`'s order."""
    out = {}
    for r in records:
        out.setdefault(record_key(r), {}).setdefault(r["model"], []).append(r)
    return {
        key: dict(sorted(by_model.items(), key=lambda kv: ALL.index(kv[0])))
        for key, by_model in sorted(out.items())
    }
