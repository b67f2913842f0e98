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


def _name_the_signal_that_ends_pytest() -> None:
  """A handler for each default-action stop signal that names the signal, then
  takes the default action. Two reasons:
  - an xdist worker ended by a signal shows only as 'node down: Not properly
    terminated';
  - libtpu (loaded by the TPU compile tests, and by any JAX backend start without
    JAX_PLATFORMS=cpu) sets SIGHUP to ignored when its action is the default,
    and every program a later test starts would inherit that: a trainer leaves
    an ignored signal alone, so a test that sends it SIGHUP failed, depending
    on which tests ran before in the same process. A handler set here is kept
    by libtpu, and is not inherited: a started program gets the default."""
  import signal  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from mixmim_jax.training import stopping  # pylint: disable=import-outside-toplevel
  who = f"pytest worker {os.environ.get('PYTEST_XDIST_WORKER', '')}".rstrip()

  def say_and_end(signum, _frame):
    sys.stderr.write(f"\n{who} (pid {os.getpid()}) ended by {signal.Signals(signum).name}\n")
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)

  for sig in stopping.SIGNALS:          # SIGINT keeps Python's KeyboardInterrupt
    if signal.getsignal(sig) is signal.SIG_DFL:
      signal.signal(sig, say_and_end)


def _let_children_take_the_stop_signals() -> None:
  """A suite started in the background of a script (`make test &`: SIGINT
  ignored) or under nohup (SIGHUP ignored) passes the ignoring on to every
  process it starts, and a trainer leaves an ignored signal alone
  (training/stopping.py), so the tests that signal one would fail. A handler
  that does nothing keeps ignoring it here, and is not inherited: a started
  program gets the default."""
  import signal  # pylint: disable=import-outside-toplevel
  from mixmim_jax.training import stopping  # pylint: disable=import-outside-toplevel
  for sig in stopping.SIGNALS:
    if signal.getsignal(sig) is signal.SIG_IGN:
      signal.signal(sig, lambda *_: None)


_let_children_take_the_stop_signals()
_name_the_signal_that_ends_pytest()
