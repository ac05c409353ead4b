"""Suite-wide strict numerics (STYLE.md, Equinox habit) and CPU-friendly defaults."""

import gc
import glob
import os
import shutil
import tempfile
import time

# XLA's CPU fusion emitters (the default) spend about half of a Hope test program's compile time
# (measured: hope_tiny's apply 17.6 s -> 9.2 s on one core, optimisations off); the classic emitters
# compute the same values. Set before JAX starts its backend; CLI subprocesses inherit it. Users'
# programs keep XLA's defaults (at full optimisation this flag made Hope's step slower).
# (`--xla_cpu_parallel_codegen_split_count=1` was tried on 2026-12-08: faster on one busy core,
# test_hope.py 120 -> 79 s, but with it the whole suite took 17:58 on two idle cores, where the
# previous session's suite without it took 13:31; not understood yet, so it is not set.)
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


# Every program XLA compiles for the CPU lives in memory maps of its own, and JAX keeps its
# compiled programs for as long as the process runs. A worker that runs half the suite gathers
# tens of thousands of them; at the kernel's limit (`vm.max_map_count`, 65,530 by default) the
# next compile's mmap fails and XLA segfaults (seen: a worker crashing late in the CI run, in
# whichever test compiled then; reproduced with the limit lowered to 15,000). When a worker
# holds more than half the limit, drop JAX's in-memory caches: later tests recompile (from the
# run's persistent cache where the program took long to compile) instead of crashing.
def _map_limit() -> int | None:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):  # not Linux: no such limit to keep under
        return None


_MAP_LIMIT = _map_limit()


def _maps_in_use() -> int:
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def pytest_runtest_teardown(item, nextitem):
    if _MAP_LIMIT is not None and _maps_in_use() > _MAP_LIMIT // 2:
        jax.clear_caches()
        gc.collect()
