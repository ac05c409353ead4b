"""Shared helpers for the training-system tests: a small local corpus and a tiny run config."""

from __future__ import annotations

import numpy as np

from nested_jax.train import get_train_config

WORDS = (
    "the memory learns in context and the slow level consolidates what the fast level sees "
    "while every level updates at its own frequency and writes its own surprise"
).split()


def write_corpus(folder, n_docs: int = 6, words_per_doc: int = 400, seed: int = 0):
    """``n_docs`` text files of pseudo-English under ``folder``; returns the folder."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        text = " ".join(rng.choice(WORDS, size=words_per_doc)) + ".\n"
        (folder / f"doc{i:02d}.txt").write_text(text)
    return folder


def tiny_config(corpus, *overrides, model: str = "tiny"):
    """A transformer run small enough for a unit test (seconds)."""
    base = [
        f"model={model!r}",
        f"data.corpus={str(corpus)!r}",
        "data.seq_len=32",
        "data.batch_size=4",
        "data.val_fraction=0.3",
        "data.eval_batches=2",
        "steps=12",
        "log_every=2",
        "eval_every=6",
        "ckpt_every=4",
        "keep=3",
        "plot=False",
        "optim.warmup_steps=0",
        "optim.schedule='constant'",  # the schedule does not depend on `steps`: runs cut short
        # and resumed with more steps follow the same trajectory
    ]
    return get_train_config("shakespeare_transformer", base + list(overrides))
