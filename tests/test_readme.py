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
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[1]
    ns: dict = {"jax": jax}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["logits"].shape == (2, 16, 256) and ns["more"].shape == (2, 3, 256)
    assert np.isfinite(float(ns["loss"]))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(ns["grads"]))
