"""The README's Python example runs and says what it claims (fast form == slow twin)."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
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
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[1]
    full = 'get_config("hope_tiny")'
    assert full in code
    code = code.replace(full, 'get_config("hope_tiny", n_layers=1)')
    ns: dict = {}  # runs alone: the block imports what it uses
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["logits"].shape == (2, 16, 256) and ns["more"].shape == (2, 3, 256)
    assert np.isfinite(float(ns["loss"]))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(ns["grads"]))


def test_readme_session_example_runs(tmp_path, monkeypatch):
    """The session example, given the names it takes from the model example (a one-layer Hope
    with the label-free CMS signal here, to keep the test's compile short), in a scratch
    directory."""
    from nested_jax.models import LanguageModel, get_config

    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[3]
    small = dict(n_layers=1, d_model=16, d_ff=16, max_len=32, cms={"signal": "local"})
    model = LanguageModel(get_config("hope_tiny", **small))
    params = model.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
    ns: dict = {"jax": jax, "model": model, "params": params, "tokens": tokens}
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["text"].shape == (2, 8) and int(ns["s"].position) == 16 + 4 + 8
    assert (tmp_path / "runs" / "demo" / "sessions" / "notes").is_dir()
    assert ns["out"].nll.shape == (2, 16) and np.all(np.isfinite(np.asarray(ns["out"].nll)))


def test_readme_nnx_example_runs():
    """The Flax NNX example: the Hope block sits in a user's nnx.Module and keeps learning."""
    from flax import nnx

    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[2]
    ns: dict = {}  # runs alone
    exec(compile(code, "README.md", "exec"), ns)
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
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[4]
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
