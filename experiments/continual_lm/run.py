"""Continual language modelling across domains: does a deployed model gain from learning on? (issue 13)

Each model is trained on Shakespeare bytes (a resumable run of the training system), then
deployed as a :mod:`nested_jax.session` on a stream of documents from other domains and back:
held-out Shakespeare passages, Wikipedia paragraphs, the Python documentation (when the Debian
``python3.11-doc`` sources are installed; skipped otherwise, and said so in the results) and the
same Shakespeare passages again. Five deployment policies: the two kinds of memory (the
sequence layers' fast memories, the CMS) each reset per document or persist, and the CMS frozen:

* ``persistent``: every level keeps learning and nothing resets;
* ``consolidate``: the fast memories restart every document, the CMS keeps learning across them
  (the paper's picture of deployment; the model's ``next_sequence`` with a persistent CMS);
* ``reset``: every level learns within a document and everything resets after each;
* ``keep_fast``: the fast memories persist, the CMS resets per document (the 2x2's fourth cell);
* ``in_context``: only the in-context memories (attention, Titans / self-modifying memories)
  learn, within a document; the CMS stays at its trained weights.

Reported per model, policy and seed: bits per byte on each domain (every byte of the stream
scored once, before the model reads it; each document's first token unscored) and
*forgetting*: bits per byte on the final Shakespeare passages minus on the same passages at the
start (negative: the model gained from what it read in between). Transformer++ has no CMS: its
policies differ only in whether the attention cache is reset.

Run: ``python -m experiments.continual_lm.run [--models hope transformer] [--seeds 0 1 2]
[--policies ...] [--steps 500] [--max-minutes 60] [--out DIR]``; ``--smoke`` for the
tests (Transformer++ only unless ``--models`` is given, one small layer, three steps, tiny
documents). Each (model, seed) cell writes ``cell.json`` when done (a policy added later is
deployed from the saved run, no retraining) and a killed cell resumes from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from experiments.common import matched_d_ff, pyplot, save_figure, selected_models, write_results

MODELS = {  # name: registry config; every model's MLP width matched to Hope's parameter count
    "hope": "hope_paper_tiny",
    "hope_attention": "hope_attention_paper_tiny",
    "titans": "titans_tiny",
    "transformer": "tiny",
    # Hope as run before decisions D89 (the outer gradient stopped at every memory's
    # self-generated target): its cells are kept under this name, trained only when named
    "hope_sg_targets": "hope_paper_tiny",
}
BEFORE_D89 = ("hope_sg_targets",)
_OVERRIDES = {"hope_sg_targets": (("selfmod.target_grad", False),)}
POLICIES = {  # name: nested_jax.session.Policy fields
    "persistent": {"learn": "all", "reset": "never"},
    "consolidate": {"learn": "all", "reset": "document", "cms_reset": "never"},
    "reset": {"learn": "all", "reset": "document"},
    "keep_fast": {"learn": "all", "reset": "never", "cms_reset": "document"},
    "in_context": {"learn": "fast", "reset": "document"},
    # which CMS level carries what consolidation gains (models with a two-level CMS only)
    "consolidate_level1": {"reset": "document", "cms_reset": "never", "cms_levels": (1, 0)},
    "consolidate_level2": {"reset": "document", "cms_reset": "never", "cms_levels": (0, 1)},
}
PYDOC = Path("/usr/share/doc/python3.11/html/_sources")  # Debian python3.11-doc (optional)
FULL = {"steps": 500, "seq_len": 128, "batch": 8, "docs": 4, "doc_bytes": 2400, "doc_tokens": 2048}
SMOKE = {"steps": 3, "seq_len": 32, "batch": 2, "docs": 1, "doc_bytes": 120, "doc_tokens": 64}


def stream_documents(setup: dict, seed: int) -> list[tuple[str, str]]:
    """``[(domain, text)]``: Shakespeare (held out), Wikipedia, Python docs (if installed), and
    the same Shakespeare passages again."""
    from nested_jax.train import data as data_lib

    rng = np.random.default_rng(1000 + seed)
    n, size = setup["docs"], setup["doc_bytes"]

    def passage(text: str) -> str:
        start = int(rng.integers(0, max(1, len(text) - size)))
        return text[start : start + size]

    from nested_jax.train.config import DataConfig

    plays = data_lib.load_corpus("shakespeare").texts
    # the plays the training run held out (its split: the data config's fraction, the run's seed)
    _, val = data_lib.split_documents(len(plays), DataConfig().val_fraction, seed)
    shakespeare = [passage(plays[int(i)]) for i in rng.choice(val, n)]
    wiki = data_lib.load_corpus("wikipedia").texts
    long = [i for i, t in enumerate(wiki) if len(t) >= size]  # every document the same length
    wikipedia = [wiki[long[int(i)]][:size] for i in rng.choice(len(long), n, replace=False)]
    docs = [("shakespeare", t) for t in shakespeare] + [("wikipedia", t) for t in wikipedia]
    if PYDOC.is_dir():
        files = sorted(PYDOC.rglob("*.rst.txt"))
        docs += [
            ("python_docs", passage(files[int(i)].read_text("utf-8", "replace")))
            for i in rng.choice(len(files), n, replace=False)
        ]
    return docs + [("shakespeare_again", t) for t in shakespeare]


def cell_config(model: str, seed: int, setup: dict, smoke: bool):
    from nested_jax.train.config import DataConfig, TrainConfig

    name = MODELS[model]
    if smoke:  # one small layer, the label-free CMS signal: seconds to compile
        overrides = (("n_layers", 1), ("d_model", 16), ("d_ff", 16), ("cms.signal", "local"))
    else:  # within 2% of Hope's 66.6K parameters (tests/test_experiments.py)
        same = name == MODELS["hope"]
        overrides = _OVERRIDES.get(model, ()) if same else matched_d_ff(name, MODELS["hope"])
    every = max(1, min(50, setup["steps"]))
    return TrainConfig(
        model=name,
        model_overrides=overrides,
        data=DataConfig(seq_len=setup["seq_len"], batch_size=setup["batch"], eval_batches=2),
        steps=setup["steps"],
        seed=seed,
        log_every=every,
        eval_every=0,
        ckpt_every=every,
        keep=2,
        plot=False,
    )


def deploy(trained, docs, policy: dict, doc_tokens: int) -> dict:
    """Stream ``docs`` (each cut to ``doc_tokens`` tokens) through a session of the ``trained``
    ``(model, params, tokenizer)`` under ``policy``: bits per byte by domain."""
    from nested_jax import session as ses

    model, params, tok = trained
    s = ses.open_session(model, params, policy=ses.Policy(**policy))
    bits: dict[str, float] = {}
    nbytes: dict[str, int] = {}
    by_position = []  # bits per token along each document (where persisting memory acts)
    for domain, text in docs:
        # every document the same number of tokens: one compiled step per policy
        ids = np.asarray(tok.encode(text))[:doc_tokens]
        out = ses.absorb(s, ids[None])
        s = ses.end_document(out.session)
        # a document's first token is not scored: a reset session predicts it uniformly, a
        # persistent one from the previous document's end (neither says anything about learning)
        bits[domain] = bits.get(domain, 0.0) + float(np.sum(out.nll[:, 1:])) / math.log(2)
        nbytes[domain] = nbytes.get(domain, 0) + len(tok.decode(ids[1:]).encode("utf-8"))
        by_position.append(np.asarray(out.nll[0, 1:]) / math.log(2))
    bpb = {d: bits[d] / nbytes[d] for d in bits}
    bpb["forgetting"] = bpb["shakespeare_again"] - bpb["shakespeare"]
    curve = np.mean(by_position, axis=0)  # positions 1 .. doc_tokens - 1, over every document
    bpb["by_position"] = [float(x.mean()) for x in np.array_split(curve, 8)]
    return bpb


def run_cell(
    model: str, seed: int, out: Path, setup: dict, smoke: bool, policies, redeploy=()
) -> dict:
    """Train (or resume) the cell's model, then deploy it under every policy in ``policies``
    that its ``cell.json`` does not hold yet (so a policy added later costs no retraining) and
    again under those in ``redeploy``."""
    from nested_jax import session as ses
    from nested_jax.train import train

    cdir = out / model / f"seed{seed}"
    done = cdir / "cell.json"
    rec = json.loads(done.read_text()) if done.exists() else None
    if "transformer" in model or model == "titans":  # no CMS: per-level policies do not apply
        policies = [p for p in policies if "cms_levels" not in POLICIES[p]]
    missing = [p for p in policies if rec is None or p not in rec["policies"]]
    missing += [p for p in redeploy if p in policies and p not in missing]
    if not missing and "cms_rates" in rec:
        return rec
    t0 = time.perf_counter()
    if rec is None:
        train(cell_config(model, seed, setup, smoke), cdir / "run", progress=False)
    docs = stream_documents(setup, seed)
    trained = ses.load_trained(cdir / "run")
    if rec is None:
        rec = {"model": model, "seed": seed, "domains": sorted({d for d, _ in docs})}
        rec["policies"], rec["seconds"] = {}, 0.0
    for p in missing:
        rec["policies"][p] = deploy(trained, docs, POLICIES[p], setup["doc_tokens"])
    rec["cms_rates"] = cms_rates(*trained[:2])
    rec["seconds"] += time.perf_counter() - t0
    cdir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(rec, indent=2) + "\n")
    return rec


def cms_rates(model, params) -> list | None:
    """The trained CMS levels' inner learning rates, ``[layer][level]`` (``None``: no CMS)."""
    if not model.config.has_cms:
        return None
    from nested_jax.models.cms import ContinuumMemory

    lrs = jax.vmap(ContinuumMemory(model.config).rates)(params["layers"]["cms"])
    return np.asarray(lrs).round(5).tolist()


DOMAINS = ("shakespeare", "wikipedia", "python_docs", "shakespeare_again", "forgetting")


def _stats(xs) -> dict:
    return {"mean": float(np.mean(xs)), "std": float(np.std(xs)), "seeds": len(xs)}


def report(out: Path, cells: list[dict], setup: dict, policies) -> dict:
    """Mean +- std over seeds of every (model, policy, domain) in ``results.json`` (``table``),
    the same as paired differences from the ``reset`` policy of the same seed (``vs_reset``:
    negative = better than starting every document afresh), and a plot of the differences."""
    table, vs_reset = {}, {}
    for model in sorted({c["model"] for c in cells}):
        mine = [c for c in cells if c["model"] == model]
        for policy in policies:
            if any(policy not in c["policies"] for c in mine):
                continue  # not deployed for this model (no CMS) or not yet for every seed
            keys = [k for k in DOMAINS if k in mine[0]["policies"][policy]]
            row = {k: _stats([c["policies"][policy][k] for c in mine]) for k in keys}
            table[f"{model}/{policy}"] = row
            if all("reset" in c["policies"] for c in mine):
                vs_reset[f"{model}/{policy}"] = {
                    k: _stats([c["policies"][policy][k] - c["policies"]["reset"][k] for c in mine])
                    for k in keys
                }
    profiles = {  # bits per token along a document, mean over seeds (where recorded)
        f"{c['model']}/{p}": None for c in cells for p in policies if p in c["policies"]
    }
    for name in list(profiles):
        model, policy = name.split("/")
        rows = [c["policies"][policy].get("by_position") for c in cells if c["model"] == model]
        if rows and all(r is not None for r in rows):
            profiles[name] = np.mean(rows, axis=0).round(4).tolist()
    payload = {
        "setup": setup,
        "machine": f"{platform.machine()}, {platform.system()}, {os.cpu_count()} CPU cores",
        "python_docs": PYDOC.is_dir(),
        "table": table,
        "vs_reset": vs_reset,
        "by_position": {k: v for k, v in profiles.items() if v is not None},
        "cells": cells,
    }
    write_results(out, payload)
    plot(payload, out / "continual_lm.png")
    return payload


def plot(payload: dict, path: Path) -> None:
    """Per model: each policy's bits per byte minus the ``reset`` policy's, per domain."""
    plt = pyplot()
    diffs = payload["vs_reset"]
    models = sorted({k.split("/")[0] for k in diffs})
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rows = {k.split("/")[1]: v for k, v in diffs.items() if k.startswith(model + "/")}
        rows.pop("reset", None)
        domains = [d for d in DOMAINS if d != "forgetting" and any(d in v for v in rows.values())]
        width = 0.8 / max(1, len(domains))
        for i, d in enumerate(domains):
            xs = np.arange(len(rows)) + i * width
            means = [v[d]["mean"] for v in rows.values()]
            ax.bar(xs, means, width, label=d, yerr=[v[d]["std"] for v in rows.values()])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, list(rows), rotation=35, ha="right")
        ax.set_title(model)
    axes[0][0].set_ylabel("bits/byte minus reset (lower: better)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("deployed on Shakespeare -> Wikipedia -> Shakespeare, vs. resetting per document")
    save_figure(fig, path)
    curves = payload["by_position"]
    models = sorted({k.split("/")[0] for k in curves})
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.5), squeeze=False)
    n = payload["setup"]["doc_tokens"]
    for ax, model in zip(axes[0], models, strict=True):
        for name, ys in curves.items():
            if name.startswith(model + "/"):
                xs = (np.arange(len(ys)) + 0.5) * n / len(ys)
                ax.plot(xs, ys, marker="o", ms=3, label=name.split("/")[1])
        ax.set_title(model)
        ax.set_xlabel("position in the document (tokens)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("bits per token (all documents)")
    save_figure(fig, path.with_name("by_position.png"))


def markdown(payload: dict) -> str:
    """The results as a Markdown table: bits per byte (mean +- std over seeds) and, in brackets,
    the paired difference from ``reset``."""
    keys = [d for d in DOMAINS if any(d in v for v in payload["table"].values())]
    lines = ["| model / policy | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in payload["table"].items():
        diff = payload["vs_reset"].get(name, {})
        cells = []
        for k in keys:
            v = row[k]
            text = f"{v['mean']:.3f} ± {v['std']:.3f}"
            if k in diff and not name.endswith("/reset") and k != "forgetting":
                text += f" ({diff[k]['mean']:+.3f} ± {diff[k]['std']:.3f})"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="seconds-long run (the tests use it)")
    p.add_argument("--out", default="experiments/continual_lm/results")
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=list(MODELS),
        help=f"default: every model but the cells kept from before decisions D89 "
        f"({', '.join(BEFORE_D89)}: reported when their cell.json exists, trained only when named)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    p.add_argument("--steps", type=int, default=None, help="training steps (default 500)")
    p.add_argument("--max-minutes", type=float, default=None, help="start no cell after this")
    p.add_argument("--table", action="store_true", help="print results.json as Markdown")
    p.add_argument("--redeploy", nargs="+", default=[], choices=list(POLICIES), help="again")
    a = p.parse_args(argv)
    if a.table:
        print(markdown(json.loads((Path(a.out) / "results.json").read_text())))
        return {}
    setup = dict(SMOKE if a.smoke else FULL)
    if a.steps is not None:
        setup["steps"] = a.steps
    # the smoke run checks the plumbing with the fastest-compiling model; the policies' effect
    # on a CMS is tested in tests/test_session.py
    models = ["transformer"] if a.smoke and a.models is None else a.models
    models = selected_models(models, MODELS, BEFORE_D89, report=False)
    seeds = [0] if a.smoke else a.seeds
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, cells = time.perf_counter(), []
    for model in models:
        for seed in seeds:
            if a.max_minutes is not None and time.perf_counter() - t0 > 60 * a.max_minutes:
                break
            cells.append(run_cell(model, seed, out, setup, a.smoke, a.policies, a.redeploy))
    kept = [m for m in BEFORE_D89 if m not in models]
    cells += [
        json.loads(f.read_text()) for m in kept for f in sorted(out.glob(f"{m}/seed*/cell.json"))
    ]
    return report(out, cells, setup, a.policies)


if __name__ == "__main__":
    main()
