"""The levels demo (`nested-jax levels-demo`): both levels act, and the nest beats each level."""

import subprocess
import sys

import pytest

from nested_jax import cli, levels_demo


def test_levels_demo_levels_do_their_jobs():
    s = levels_demo.run(length=4096)
    assert s["fired"] == {"slow": 4096 // 16, "fast": 4096}
    mse = s["mse"]
    assert mse["slow + fast"] < mse["slow alone"] < mse["predict zero"]
    assert s["slow_vs_persistent_map"] < 0.5


def test_levels_demo_cli_prints_levels(capsys):
    assert cli.main(["levels-demo", "--length", "512"]) == 0
    out = capsys.readouterr().out
    assert "level 'slow'" in out and "level 'fast'" in out and "fired 32 times" in out


def test_levels_demo_rejects_bad_args():
    with pytest.raises(SystemExit):
        levels_demo.main(["--length", "8", "--slow-period", "16"])


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
    for cmd in ("quickstart", "train", "eval", "generate", "configs", "levels-demo"):
        assert cmd in r.stdout
