"""A restart loads its compiled programs from the persistent cache instead of
compiling them again, and a changed config or mesh compiles anew; the log
splits the time to the first step by phase."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest

from mixmim_jax.trainers import pretrain
from mixmim_jax.training import startup
import train_fixtures

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return train_fixtures.write_idx_images(str(tmp_path_factory.mktemp("fmnist")), count=64)


def _first_step(data_dir, work, caplog, **changes):
  """(phases, programs loaded, programs compiled and written) of one trainer
  start in this process, whose compiled programs are gone with the run: a new
  start is a restart, and only the persistent cache (tests/conftest.py's, as a
  run's WORKDIR/compile_cache) can spare it a compile."""
  config = train_fixtures.tiny_config(data_dir, num_train_steps=1, batch_size=16, **changes)
  caplog.clear()
  with caplog.at_level("INFO"):
    pretrain.train(config, str(work))
  [line] = [r.getMessage() for r in caplog.records if "time to the first step" in r.getMessage()]
  total, parts = LINE.search(line).groups()
  phases = {name: float(s) for name, s in re.findall(r"(\w[\w ]*?) ([\d.]+) s", parts)}
  loaded, written = map(int, re.search(r"cache: (\d+) programs loaded, (\d+) compiled",
                                       parts).groups())
  assert abs(sum(phases.values()) - float(total)) < 0.3, (total, phases)
  return phases, loaded, written


LINE = re.compile(r"time to the first step ([\d.]+) s: (.*)")


def test_a_restart_loads_and_a_changed_config_compiles(tmp_path, data_dir, caplog):
  # A learning rate no earlier run used: its step is a program not yet cached.
  lr = float(np.random.default_rng().uniform(1e-4, 2e-4))
  cold, loaded, written = _first_step(data_dir, tmp_path / "a", caplog,
                                      **{"optim.base_lr": lr})
  assert written >= 1                           # the step, at least
  for phase in ("imports", "setup", "init", "data pipeline", "first step", "trace", "compile"):
    assert phase in cold, cold
  warm, loaded, written = _first_step(data_dir, tmp_path / "b", caplog,
                                      **{"optim.base_lr": lr})
  assert written == 0 and loaded >= 2, (loaded, written)   # init and step, loaded
  assert warm["compile"] < 0.5 * cold["compile"], (cold, warm)
  # Another mesh (FSDP over the devices), same learning rate: the step is
  # another program, which no run before had (its lr is this test's). The init
  # program may be cached already: other tests of this worker build the same
  # model on the same mesh, so only the step is counted.
  _, loaded, written = _first_step(data_dir, tmp_path / "c", caplog,
                                   **{"optim.base_lr": lr, "mesh.fsdp": 2})
  assert written >= 1, "a changed mesh reused the compiled step"


def test_the_cache_lives_where_it_is_told(tmp_path, monkeypatch):
  import jax  # pylint: disable=import-outside-toplevel
  given = jax.config.jax_compilation_cache_dir     # this suite's (tests/conftest.py)
  assert startup.cache_dir("auto", "gs://b/run") == given
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("MIXMIM_JAX_HOME", str(tmp_path / "home"))
  jax.config.update("jax_compilation_cache_dir", None)
  try:
    assert startup.cache_dir("auto", "gs://b/run") == "gs://b/run/compile_cache"
    assert startup.cache_dir("auto") == str(tmp_path / "home" / "compile_cache")
    assert startup.cache_dir("off", "gs://b/run") is None
    assert startup.cache_dir("/elsewhere", "gs://b/run") == "/elsewhere"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/set/by/user")
    assert startup.cache_dir("auto", "gs://b/run") == "/set/by/user"
  finally:
    jax.config.update("jax_compilation_cache_dir", given)


def test_phases_leave_compile_time_out():
  """Wall time between marks goes to the phase, less what JAX reported as
  tracing and compiling meanwhile."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  clock = startup.StartupClock()
  clock.mark("imports")
  time.sleep(0.2)
  jax.jit(lambda x: jnp.sin(x) * 3 + x.sum())(jnp.ones((7, 13))).block_until_ready()
  clock.mark("work")
  assert clock.phases["trace"] + clock.phases["compile"] > 0
  assert 0.19 < clock.phases["work"] < 0.19 + 0.5, clock.phases
  assert "time to the first step" in clock.report() and "programs loaded" in clock.report()


def test_the_restart_benchmark_reads_the_clocks_line():
  """tools/restart_bench.py parses the line StartupClock.report writes."""
  from mixmim_jax.tools import restart_bench  # pylint: disable=import-outside-toplevel
  clock = startup.StartupClock()
  clock.mark("imports")
  clock.mark("restore")
  out = (f"x INFO loop: {clock.report()}\nstep       2/4 | loss 1.0 | step 700 ms (data 1 ms)\n"
         "step       3/4 | loss 1.0 | step 800 ms (data 1 ms)\nWALL 12.5\n")
  got = restart_bench.phases(out)
  assert set(got) >= {"imports", "restore", "trace", "compile", "total", "wall", "loaded"}
  assert got["wall"] == 12.5 and got["later step"] == 0.8 and got["compiled"] == 0
