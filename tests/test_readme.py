"""The README's three examples and the getting-started page's two run, each alone, and say what
they claim (fast form == slow twin); the README stays short."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GETTING_STARTED = ROOT / "docs" / "getting_started.md"


def _blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_readme_is_short_and_has_the_two_setup_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 220
    bash = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert bash[0].strip().endswith(".venv/bin/nested-jax quickstart")
    assert bash[1].strip() == ".venv/bin/python -m pytest -q"
    assert "QUICKSTART_OUTPUT" not in text


def paste_problems(code: str) -> list[str]:
    """What stops ``code`` from being pasted at Python's interactive prompt: a blank line inside
    a compound statement's block (it ends the block there), or a statement at the margin right
    after such a block (the prompt needs a blank line first)."""
    problems, lines, opener = [], code.splitlines(), ""
    for i, line in enumerate(lines):
        if line.lstrip().startswith("#"):
            continue
        compound = opener.split("#")[0].rstrip().endswith(":")
        if not line.strip():
            nxt = next((x for x in lines[i + 1 :] if x.strip()), "")
            if compound and nxt.startswith(" "):
                problems.append(f"a blank line inside the block of {opener!r}")
            continue
        if not line.startswith(" "):
            after_block = i and lines[i - 1].startswith(" ") and compound
            if after_block and not line.startswith(("else", "elif", "except", "finally")):
                problems.append(f"no blank line before {line!r}")
            opener = line
    return problems


def test_examples_paste_at_the_python_prompt():
    assert paste_problems("for i in range(2):\n    x = i\ny = 1\n")  # the checker finds both
    assert paste_problems("class A:\n    a = 1\n\n    b = 2\n")
    assert not paste_problems("for i in range(2):\n    x = i\n\ny = f(\n    1\n)\n")
    for path in (README, GETTING_STARTED):
        for code in _blocks(path):
            assert not paste_problems(code), (path.name, paste_problems(code))


def test_readme_example_runs():
    code = _blocks(README)[0]
    ns: dict = {}
    with jax.numpy_rank_promotion("allow"):
        exec(compile(code, "README.md", "exec"), ns)
    y, y_ref = ns["y"], ns["y_ref"]
    assert y.shape == (8, 1000, 4, 32)
    assert np.all(np.isfinite(np.asarray(y)))
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), atol=1e-4, rtol=1e-3)
    assert ns["res"].fired.shape == (20, 2)
    assert int(jnp.sum(ns["res"].fired[:, 1])) == 2


def test_readme_model_example_runs():
    """The model example as written, with hope_tiny at one layer (its compile is most of the
    example's cost, ~2 minutes at two layers; the benchmarks measure compile times)."""
    code = _blocks(README)[1]
    full = 'get_config("hope_tiny")'
    assert full in code
    code = code.replace(full, 'get_config("hope_tiny", n_layers=1)')
    ns: dict = {}  # runs alone: the block imports what it uses
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["logits"].shape == (2, 16, 256) and ns["more"].shape == (2, 3, 256)
    assert np.isfinite(float(ns["loss"]))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(ns["grads"]))


def test_readme_session_example_runs(tmp_path, monkeypatch):
    """The session example alone, with a one-layer Hope with the label-free CMS signal (to keep
    the test's compile short), in a scratch directory."""
    code = _blocks(README)[2]
    full = 'get_config("hope_tiny")'
    assert full in code
    small = 'get_config("hope_tiny", n_layers=1, d_model=16, d_ff=16, max_len=32, cms={"signal": "local"})'
    code = code.replace(full, small)
    ns: dict = {}
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["text"].shape == (2, 8) and int(ns["s"].position) == 16 + 4 + 8
    assert (tmp_path / "runs" / "demo" / "sessions" / "notes").is_dir()
    assert ns["out"].nll.shape == (2, 16) and np.all(np.isfinite(np.asarray(ns["out"].nll)))


def test_readme_nnx_example_runs():
    """The Flax NNX example: the Hope block sits in a user's nnx.Module and keeps learning."""
    from flax import nnx

    code = _blocks(GETTING_STARTED)[1]
    ns: dict = {}  # runs alone
    exec(compile(code, "getting_started.md", "exec"), ns)
    model = ns["MyModel"](nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8))
    y = model(x)
    assert y.shape == (2, 8, 32) and np.all(np.isfinite(np.asarray(y)))
    before = jax.tree.leaves(model.hope.memory_state.get_value())
    model.hope(model.embed(x), carry=True)
    after = jax.tree.leaves(model.hope.memory_state.get_value())
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_readme_training_example_runs():
    """The Hope + nested_jax optimizer loop, with the model shrunk and 3 steps instead of 100
    (the README's own sizes take ~1.5 minutes, most of it compiling)."""
    code = _blocks(GETTING_STARTED)[0]
    full = 'get_config("hope_tiny")'
    assert full in code and "range(100)" in code
    small = 'get_config("hope_tiny", n_layers=1, d_model=16, d_ff=16, cms={"signal": "local"})'
    code = code.replace(full, small).replace("range(100)", "range(3)")
    ns: dict = {}
    with jax.numpy_dtype_promotion("standard"):
        exec(compile(code, "README.md", "exec"), ns)
    assert np.isfinite(float(ns["loss"])) and ns["step"] == 2
    assert ns["memory"].momentum["head"].shape == ns["params"]["head"].shape
    assert float(jnp.abs(ns["memory"].momentum["head"]).sum()) > 0
