"""The notebooks run top to bottom (at smoke size, in a fresh kernel) and are kept executed."""

import json
import os
import pathlib

import jax
import pytest

from notebooks.run import execute, notebooks

NOTEBOOKS = notebooks()


def test_the_five_notebooks_are_there_and_kept_executed():
    """Outputs are kept so that the notebooks read on the web: every code cell ran (at default
    size), none failed, and the figures are in."""
    names = [p.name for p in NOTEBOOKS]
    assert [n.split("_")[0] for n in names] == ["1", "2", "3", "4", "5"], names
    for p in NOTEBOOKS:
        nb = json.loads(p.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        tags = [c.get("metadata", {}).get("tags", []) for c in code]
        assert sum("parameters" in t for t in tags) == 1, p.name
        assert not any("injected-parameters" in t for t in tags), f"{p.name}: saved at smoke size"
        assert all(c["execution_count"] for c in code), f"{p.name}: not executed top to bottom"
        outputs = [o for c in code for o in c["outputs"]]
        assert not [o for o in outputs if o["output_type"] == "error"], p.name
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{p.name}: no figure"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_smoke_size(path, tmp_path, monkeypatch):
    # the kernel inherits the suite's settings: its compile cache (shared by notebooks 4 and 5,
    # which train the same smoke model) and its optimisation level (compile time dominates here)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    params = {}
    if "RUN_DIR" in path.read_text():
        params["RUN_DIR"] = os.fspath(tmp_path / "run")
    nb = execute(path, "smoke", timeout=500, **params)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "SIZE = 'smoke'" in injected[0].source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)


def test_runner_rejects_an_unknown_size():
    with pytest.raises(ValueError, match="size must be one of"):
        execute(pathlib.Path(NOTEBOOKS[0]), "huge")
