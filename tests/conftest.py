"""Suite-wide strict numerics (STYLE.md, Equinox habit) and CPU-friendly defaults."""

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
# Tests check semantics on tiny shapes, where XLA's compile time dominates: compile with most
# optimisations off (measured: ~40% less compile time for the Hope tests). Speed is measured in
# benchmarks/, with full optimisation.
jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def key():
    return jax.random.key(0)
