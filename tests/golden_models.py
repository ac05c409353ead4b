"""Saved outputs and gradients of every model family, to hold refactors to the same numbers.

``GOLDEN`` names a set of model configs (the registry's tiny models, and the faithful
``*_paper`` designs of self-modifying Titans, Hope and Hope-Attention with Hope's CMS signals and
variants). For each, :func:`compute` gives the logits of ``apply`` on fixed tokens, the loss, and
each gradient leaf's norm and its projections on fixed random directions (a change in any gradient
entry beyond float rounding moves them). ``tests/data/golden_models.npz`` holds these values as
computed before the Hope path was rebuilt (issue 40); ``test_golden.py`` checks that the models
still give them. Write the file anew only for a change that is meant to change the numbers:

    python tests/golden_models.py --write
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from nested_jax.models import LanguageModel, get_config, token_nll

PATH = os.path.join(os.path.dirname(__file__), "data", "golden_models.npz")
BATCH, LENGTH, PROJECTIONS = 2, 16, 4

GOLDEN = {
    "tiny": ("tiny", {}),
    "titans": ("titans_tiny", {}),
    "deltanet": ("deltanet_tiny", {}),
    "linear_attention": ("linear_attention_tiny", {}),
    "selfmod": ("selfmod_paper_tiny", {}),
    "hope_teach": ("hope_paper_tiny", {}),
    "hope_teach_token_norm": ("hope_paper_tiny", {"cms.norm": "token"}),
    "hope_teach_nested": ("hope_paper_tiny", {"cms.variant": "nested"}),
    "hope_ntp": ("hope_paper_tiny", {"cms.signal": "ntp"}),
    "hope_local": ("hope_paper_tiny", {"cms.signal": "local"}),
    "hope_first_order": ("hope_paper_tiny", {"first_order": True}),
    "hope_attention_teach": ("hope_attention_paper_tiny", {"cms.periods": (4, 0, 8)}),
    "hope_attention_ntp": ("hope_attention_paper_tiny", {"cms.signal": "ntp"}),
    "hope_attention_local_independent": (
        "hope_attention_paper_tiny",
        {"cms.signal": "local", "cms.variant": "independent"},
    ),
}


def _directions(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((PROJECTIONS, *shape)).astype(np.float32)


def compute(name: str) -> dict:
    """``{"logits", "loss", "grad_norms", "grad_proj"}`` of the config ``GOLDEN[name]``."""
    registry, overrides = GOLDEN[name]
    model = LanguageModel(get_config(registry, **overrides))
    params = model.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (BATCH, LENGTH), 0, 256)

    def loss(params):
        logits, _ = model.apply(params, tokens)
        nll = token_nll(logits, tokens)
        return jnp.mean(nll), logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    leaves = [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]
    proj = [np.tensordot(_directions(g.shape, i), g, axes=g.ndim) for i, g in enumerate(leaves)]
    return {
        "logits": np.asarray(logits),
        "loss": np.asarray(loss),
        "grad_norms": np.array([np.linalg.norm(g) for g in leaves]),
        "grad_proj": np.stack(proj),
    }


def load() -> dict:
    with np.load(PATH) as f:
        return {k: f[k] for k in f.files}


def write() -> None:
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    out = {}
    for name in GOLDEN:
        for key, value in compute(name).items():
            out[f"{name}/{key}"] = value
        print(name, float(out[f"{name}/loss"]), flush=True)
    np.savez_compressed(PATH, **out)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/golden_models.py --write")
    write()
