"""A restart loads its compiled programs from the persistent cache instead of
compiling them again, and a changed config or mesh compiles anew; the log
splits the time to the first step by phase."""
from __future__ import annotations

import re
import time

import pytest

from mixmim_jax.training import startup
import train_fixtures
from cli_runs import ENV, run_cli, tiny_args

LINE = re.compile(r"time to the first step ([\d.]+) s: (.*)")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return train_fixtures.write_idx_images(str(tmp_path_factory.mktemp("fmnist")), count=64)


def _first_step(data_dir, cache, work, *extra):
  """(phases, programs loaded, programs compiled) of one fresh process."""
  env = dict(ENV, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  result = run_cli(tiny_args(data_dir, steps=1, batch_size=4) + [
      f"--workdir={work}", f"--config.compile_cache={cache}", *extra], env=env)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  [(total, parts)] = LINE.findall(result.stdout + result.stderr)
  phases = {name: float(s) for name, s in re.findall(r"(\w[\w ]*?) ([\d.]+) s", parts)}
  loaded, written = map(int, re.search(r"cache: (\d+) programs loaded, (\d+) compiled",
                                       parts).groups())
  assert abs(sum(phases.values()) - float(total)) < 0.3, (total, phases)
  return phases, loaded, written


def test_a_second_run_loads_and_a_changed_one_compiles(tmp_path, data_dir):
  cache = str(tmp_path / "cache")
  cold, loaded, written = _first_step(data_dir, cache, tmp_path / "a")
  assert loaded == 0 and written >= 2           # init and the step, at least
  for phase in ("imports", "setup", "init", "data pipeline", "first step", "trace", "compile"):
    assert phase in cold, cold
  warm, loaded, written = _first_step(data_dir, cache, tmp_path / "b")
  assert written == 0 and loaded >= 2
  assert warm["compile"] < 0.5 * cold["compile"], (cold, warm)
  # Another mesh (FSDP over the 2 devices) and mask ratio: other programs.
  _, loaded, written = _first_step(data_dir, cache, tmp_path / "c", "--config.mesh.data=1",
                                   "--config.mesh.fsdp=2", "--config.mask_ratio=0.75")
  assert written >= 2, "a changed config reused compiled programs"


def test_the_cache_lives_where_it_is_told(tmp_path, monkeypatch):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("MIXMIM_JAX_HOME", str(tmp_path / "home"))
  assert startup.cache_dir("auto", "gs://b/run") == "gs://b/run/compile_cache"
  assert startup.cache_dir("auto") == str(tmp_path / "home" / "compile_cache")
  assert startup.cache_dir("off", "gs://b/run") is None
  assert startup.cache_dir("/elsewhere", "gs://b/run") == "/elsewhere"
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/set/by/user")
  assert startup.cache_dir("auto", "gs://b/run") == "/set/by/user"


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
