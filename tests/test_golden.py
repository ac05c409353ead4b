"""Every model family gives the outputs and gradients it gave before the Hope path was rebuilt
(issue 40): logits to 1e-5, each gradient leaf's norm and random projections to 1e-4 of its norm.
The saved values and how they were made: ``golden_models.py``."""

import numpy as np
import pytest
from golden_models import GOLDEN, compute, load


@pytest.fixture(scope="module")
def saved():
    return load()


@pytest.mark.parametrize("name", list(GOLDEN))
def test_outputs_and_gradients_equal_the_saved_ones(name, saved):
    got = compute(name)
    np.testing.assert_allclose(got["logits"], saved[f"{name}/logits"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got["loss"], saved[f"{name}/loss"], atol=1e-6, rtol=1e-6)
    norms = saved[f"{name}/grad_norms"]
    np.testing.assert_allclose(got["grad_norms"], norms, atol=1e-7, rtol=1e-4)
    scale = norms[:, None] + 1e-6  # a leaf's projections move by about its gradient's change
    np.testing.assert_array_less(
        np.abs(got["grad_proj"] - saved[f"{name}/grad_proj"]) / scale, 1e-4
    )
