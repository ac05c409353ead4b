"""Needle-in-a-haystack examples, generated here (the shapes of the paper's Table 1 / RULER).

A needle is a sentence ``The secret number of <key> is <value>.`` planted in a haystack; at the
end of the context a query ``The secret number of <key> is `` asks for it, and the value follows
(teacher-forced: a model is scored on the value's tokens, so no generation loop is needed;
greedy decoding would produce the value exactly when every value token is the argmax). Tasks:

* ``s_niah_1``: one needle, a 7-digit value, in a synthetic haystack (one repeated sentence);
* ``s_niah_2``: one needle, a 7-digit value, in real held-out text;
* ``s_niah_3``: one needle, a 12-character hexadecimal code, in real text;
* ``mk_niah``: four needles with different keys (three distractors), one queried;
* ``mq_niah``: four needles with different keys, all four queried one after another;
* ``mv_niah``: four values planted for one key, queried together (in planting order).

Every example of one (task, length) has exactly ``length`` tokens (the haystack is trimmed to
fit), so a batch of them streams through a model at once. Each comes with its *control*: the
same haystack and query without the needles (trimmed to the same length), so that what a model
knows about values without reading the needle can be subtracted.
"""

from __future__ import annotations

import dataclasses

import numpy as np

TASKS = ("s_niah_1", "s_niah_2", "s_niah_3", "mk_niah", "mq_niah", "mv_niah")
KEYS = (
    "the orchard", "the lighthouse", "the granary", "the ferry", "the abbey", "the quarry",
    "the tannery", "the windmill", "the harbour", "the chapel", "the foundry", "the vineyard",
)  # fmt: skip
FILLER = "The hills are green and the river runs slowly to the sea. "


@dataclasses.dataclass(frozen=True)
class Example:
    """``tokens [length]`` (haystack with needles, queries and teacher-forced answers),
    ``control`` (the same without needles), ``spans``: ``(start, end)`` token index ranges of
    the answers (``tokens[start:end]``, predicted from positions ``start - 1 .. end - 2``),
    ``depth`` of the queried needle (its start, as a fraction of the haystack)."""

    task: str
    length: int
    depth: float
    tokens: np.ndarray
    control: np.ndarray
    spans: tuple


def _value(rng, task: str) -> str:
    if task == "s_niah_3":
        return "".join(rng.choice(list("0123456789abcdef"), 12))
    return str(rng.integers(1_000_000, 10_000_000))


def _needles(rng, task: str):
    """``(needle sentences, [(query, answer)], index of the queried needle)``."""
    keys = [str(k) for k in rng.choice(KEYS, 4, replace=False)]
    if task in ("s_niah_1", "s_niah_2", "s_niah_3"):
        v = _value(rng, task)
        return [f"The secret number of {keys[0]} is {v}. "], [(keys[0], v)], 0
    values = [_value(rng, task) for _ in range(4)]
    if task == "mv_niah":
        needles = [f"The secret number of {keys[0]} is {v}. " for v in values]
        return needles, [(keys[0], ", ".join(values))], 0
    needles = [f"The secret number of {k} is {v}. " for k, v in zip(keys, values, strict=True)]
    if task == "mk_niah":
        return needles, [(keys[0], values[0])], 0
    return needles, list(zip(keys, values, strict=True)), 0  # mq_niah


def _query(key: str, task: str) -> str:
    if task == "mv_niah":
        return f"\nThe secret numbers of {key} are "
    return f"\nThe secret number of {key} is "


def make_example(task: str, length: int, depth: float, haystack: str, encode, seed: int):
    """One example of ``length`` tokens; ``haystack``: text long enough to fill it (for the
    synthetic task it is ignored); ``encode``: text -> int tokens."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}.")
    rng = np.random.default_rng(seed)
    needles, qa, target = _needles(rng, task)
    tail, spans_rel = [], []
    for key, answer in qa:
        q = encode(_query(key, task))
        a = encode(answer + ".")
        at = sum(len(t) for t in tail) + len(q)
        tail += [q, a]
        spans_rel.append((at, at + len(a)))
    tail = np.concatenate(tail)
    needle_toks = [encode(n) for n in needles]
    hay_len = length - len(tail) - sum(len(n) for n in needle_toks)
    text = FILLER * (length // len(FILLER) + 2) if task == "s_niah_1" else haystack
    hay = encode(text)
    if hay_len < 16 or len(hay) < hay_len + 64:
        raise ValueError(
            f"a {length}-token {task} example needs a haystack of more than {hay_len + 64} "
            f"tokens; got {len(hay)}."
        )
    hay = hay[:hay_len]
    ctl_hay = encode(text)[: hay_len + sum(len(n) for n in needle_toks)]
    # the queried needle at ``depth``, the others at random depths; each at a token boundary
    where = [depth if i == target else float(rng.uniform(0.05, 0.95)) for i in range(len(needles))]
    order = sorted(range(len(needles)), key=lambda i: where[i])
    pieces, last = [], 0
    for i in order:
        cut = int(round(where[i] * hay_len))
        pieces += [hay[last:cut], needle_toks[i]]
        last = cut
    pieces.append(hay[last:])
    tokens = np.concatenate(pieces + [tail]).astype(np.int32)
    control = np.concatenate([ctl_hay, tail]).astype(np.int32)
    assert len(tokens) == len(control) == length, (len(tokens), len(control), length)
    base = length - len(tail)
    spans = tuple((base + s, base + e) for s, e in spans_rel)
    return Example(task, length, depth, tokens, control, spans)


def make_batch(task, length, depths, texts, encode, seed: int) -> list[Example]:
    """One example per depth, each in its own haystack (``texts``: documents to cut from)."""
    out = []
    for i, depth in enumerate(depths):
        rng = np.random.default_rng((seed, i))
        doc = texts[int(rng.integers(len(texts)))]
        start = int(rng.integers(max(1, len(doc) - 16 * length)))
        out.append(make_example(task, length, depth, doc[start:], encode, seed * 1000 + i))
    return out
