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
