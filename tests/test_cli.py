"""The `nested-jax` command: unknown commands, help, and the module entry point."""

import subprocess
import sys

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
