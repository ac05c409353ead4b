"""The `nested-jax` command: unknown commands, help, and the module entry point."""

import subprocess
import sys

import pytest

from nested_jax import cli


def test_cli_unknown_command_and_help(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert cli.main([]) == 0


def test_module_entry_point_runs():
    r = subprocess.run(
        [sys.executable, "-m", "nested_jax", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0
    for cmd in ("quickstart", "train", "eval", "generate", "configs"):
        assert cmd in r.stdout


def test_stream_sessions_and_generate_continue_a_saved_session(tmp_path, capsys, monkeypatch):
    """``stream`` learns from a file and saves the session; ``sessions`` lists it; a second
    ``stream`` and ``generate --session`` continue it; an interrupted stream keeps what it saved."""
    from train_helpers import tiny_config, write_corpus

    from nested_jax import session as ses
    from nested_jax import train as tr

    corpus = write_corpus(tmp_path / "corpus", n_docs=4, words_per_doc=120)
    run = tmp_path / "run"
    tr.train(tiny_config(corpus, "steps=4"), run, progress=False)
    text = tmp_path / "news.txt"
    text.write_text("the fast level sees the memory " * 3)  # 93 bytes
    args = ["stream", "--run", str(run), "--session", "s1", "--file", str(text), "--no-progress"]
    assert cli.main(args + ["--piece", "32"]) == 0
    out = capsys.readouterr().out
    assert "read 93 bytes" in out and "bits/byte" in out and "position 93" in out
    assert cli.main(["sessions", "--run", str(run)]) == 0
    assert "s1" in capsys.readouterr().out
    assert cli.main(args + ["--piece", "32"]) == 0  # continues: the memory persists
    assert "position 186" in capsys.readouterr().out
    gen = ["generate", "--run", str(run), "--session", "s1", "--prompt", "the", "--length", "5"]
    assert cli.main(gen) == 0
    assert capsys.readouterr().out.startswith("the")
    assert ses.list_sessions(run)[0]["position"] == 186 + 3 + 5
    # the saved policy is the session's: another one on the same session is refused
    assert cli.main(args + ["--learn", "none"]) == 2
    assert "was saved with policy" in capsys.readouterr().err
    # killed after two pieces (save every piece): the two are saved
    real, calls = ses.absorb, []

    def absorb_then_die(s, tokens, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(s, tokens, **kw)

    monkeypatch.setattr(ses, "absorb", absorb_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        cli.main(
            [
                "stream",
                "--run",
                str(run),
                "--session",
                "s2",
                "--file",
                str(text),
                "--no-progress",
                "--piece",
                "16",
                "--save-every",
                "1",
            ]
        )
    assert [r["position"] for r in ses.list_sessions(run) if r["name"] == "s2"] == [32]


def test_ctrl_c_is_one_message_not_a_traceback(monkeypatch, capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_eval", interrupted)
    assert cli.main(["eval", "--run", "nowhere"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


def test_stream_policy_options_build_the_per_kind_policy():
    from argparse import Namespace

    from nested_jax import session as ses

    none = dict(learn=None, memories=None, cms_levels=None, reset=None, cms_reset=None)
    assert cli._policy(Namespace(**none)) is None
    got = cli._policy(Namespace(**dict(none, memories="off", reset="document", cms_reset="never")))
    assert got == ses.Policy("all", None, "document", memories=False, cms_reset="never")
    got = cli._policy(Namespace(**dict(none, learn="fast", cms_levels="0,1")))
    assert got == ses.Policy("fast", (False, True), "never")


def test_stream_and_sessions_bad_inputs_are_one_clear_line(tmp_path, capsys):
    """A binary file, an empty file and a directory that is not a run: exit 2 with one line that
    says what was wrong (before any model is loaded), no usage text."""
    binary = tmp_path / "blob"
    binary.write_bytes(bytes(range(128, 256)) * 4)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for path, says in ((binary, "is not UTF-8 text"), (empty, "no text to read")):
        args = ["stream", "--run", str(tmp_path), "--session", "s", "--file", str(path)]
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and "usage" not in err and len(err.splitlines()) == 1
    assert cli.main(["sessions", "--run", str(tmp_path / "nothing")]) == 2
    assert "is not a training run directory" in capsys.readouterr().err
