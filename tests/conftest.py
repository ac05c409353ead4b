"""Suite-wide strict numerics (STYLE.md, Equinox habit) and CPU-friendly defaults."""

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)
