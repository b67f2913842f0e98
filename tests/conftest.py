"""Test setup: 8 fake CPU devices so sharding is exercised on every run.

Must run before JAX initialises its backends, hence module-level and first."""
import os

# XLA:CPU's backend (LLVM) at -O0: the HLO, its fusions and every number stay
# the same, and compiling, which is most of the suite's time, is about a third
# faster (parity and loop-parity files: 142 -> 116 s, same results).
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8 " + FAST_COMPILE).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  pylint: disable=wrong-import-position

jax.config.update("jax_default_matmul_precision", "highest")
# Identical programs compiled again in one run (the resume test trains three times)
# come from the persistent cache instead of recompiling.
CACHE_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), "mixmim_jax_test_xla_cache")
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
# For the tests that run programs as subprocesses: the same cache.
SUBPROCESS_CACHE_ENV = dict(JAX_COMPILATION_CACHE_DIR=CACHE_DIR,
                            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

# Scheduling only: the files whose tests take longest run first, so that at the
# end of `make test` (two xdist workers that steal each other's queued tests)
# only short tests are left, and neither worker waits alone for a long one
# (cold, 2 cores: the last 3 % of the run took 3 of its 15.7 minutes). The
# order within a file is kept; files not named follow in pytest's order.
RUN_FIRST = ("test_train.py", "test_robustness.py", "test_workdir.py", "test_multihost_stop.py",
             "test_precision.py", "test_block_stack.py", "test_gcs_chain.py", "test_startup.py",
             "test_parity.py", "test_finetune.py", "test_probes.py", "test_benchmark.py",
             "test_aot.py", "test_loop_parity.py")


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  rank = {name: i for i, name in enumerate(RUN_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(RUN_FIRST)))
