"""Suite-wide strict numerics (STYLE.md, Equinox habit) and CPU-friendly defaults."""

import glob
import os
import shutil
import tempfile
import time

# XLA's CPU fusion emitters (the default) spend about half of a Hope test program's compile time
# (measured: hope_tiny's apply 17.6 s -> 9.2 s on one core, optimisations off); the classic emitters
# compute the same values. Set before JAX starts its backend; CLI subprocesses inherit it. Users'
# programs keep XLA's defaults (at full optimisation this flag made Hope's step slower).
_flag = "--xla_cpu_use_fusion_emitters=false"
if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
# Tests check semantics on tiny shapes, where XLA's compile time dominates: compile with most
# optimisations off (measured: ~40% less compile time for the Hope tests). Speed is measured in
# benchmarks/, with full optimisation.
jax.config.update("jax_disable_most_optimizations", True)
# Many tests compile the same small programs (a registry model's apply at the default test shape,
# ...): the two xdist workers of one run share XLA's persistent compilation cache, keyed on the
# program and flags, so each is compiled once per run. Every run starts cold (a directory per
# run id), so the suite's time stays what a clean clone pays.
_run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
for _old in glob.glob(os.path.join(tempfile.gettempdir(), "nested_jax_tests_*")):
    try:  # earlier runs' caches (untouched for an hour): they are never read again
        if time.time() - os.path.getmtime(_old) > 3600:
            shutil.rmtree(_old, ignore_errors=True)
    except OSError:
        pass
_cache = os.path.join(tempfile.gettempdir(), f"nested_jax_tests_{_run}")
jax.config.update("jax_compilation_cache_dir", _cache)
os.environ["NESTED_JAX_COMPILE_CACHE"] = _cache  # CLI subprocesses: the run's cache, not ~/.cache
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def key():
    return jax.random.key(0)
