"""What a (re)start costs: JAX's persistent compilation cache, and the time to
the first finished step split by phase.

A preemptible run restarts often (launch/tpu_watch.py), and each restart used
to compile the sharded step again. The cache keeps compiled programs across
processes: a run's in WORKDIR/compile_cache (on gs:// for a pod, so a recreated
VM finds it), a one-shot command's (evaluate, predict) in the user cache.
JAX keys each entry by the program's HLO, the compile options, the devices,
the XLA flags and the jaxlib and backend versions, so a changed config, mesh
or JAX version compiles anew instead of reusing a stale program.
"""
from __future__ import annotations

import logging
import os
import time

import jax
from etils import epath

from mixmim_jax import files

logger = logging.getLogger(__name__)


def _process_start() -> float:
  """When this process started, on the time.monotonic() clock (Linux: from
  /proc; elsewhere: now, i.e. when this module is first imported)."""
  try:
    stat = epath.Path("/proc/self/stat").read_text()
    started_ticks = int(stat.rsplit(")", 1)[1].split()[19])
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")
    return time.monotonic() - max(0.0, age)
  except (OSError, ValueError, IndexError, AttributeError):
    return time.monotonic()


PROCESS_START = _process_start()
OFF = ("off", "none", "false", "0")
# JAX reports the duration of each of these. Tracing and lowering run on every
# start (the cache's key is a hash of the lowered program); XLA's compile is
# what a cache hit replaces by a load.
_TRACE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                 "/jax/core/compile/jaxpr_to_mlir_module_duration")
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

def cache_dir(setting: str, workdir: str | None = None) -> str | None:
  """Where compiled programs are kept: `setting` is a path, "off", or "auto":
  the cache this process was given (JAX_COMPILATION_CACHE_DIR, or JAX's config
  set by a program that embeds us), else WORKDIR/compile_cache for a run and
  the user cache for a one-shot command."""
  setting = (setting or "auto").strip()
  if setting.lower() in OFF:
    return None
  if setting != "auto":
    return setting
  given = os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir
  if given:
    return given
  if workdir:
    return str(epath.Path(workdir) / "compile_cache")
  return str(files.user_cache() / "compile_cache")


def enable_cache(setting: str, workdir: str | None = None) -> str | None:
  """Turns JAX's persistent compilation cache on (before anything compiles)."""
  path = cache_dir(setting, workdir)
  if path is None:
    jax.config.update("jax_enable_compilation_cache", False)
    logger.info("compilation cache: off")
    return None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  # Every program, not only those over JAX's default second of compiling: a
  # restart's small programs (normalising, the stop vote, softmax) add up.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  logger.info("compilation cache: %s", path)
  return path


class _Compiles:
  """Seconds spent tracing and compiling, and cache hits / writes, summed over
  the process."""
  seconds = {"trace": 0.0, "compile": 0.0}
  hits = 0
  writes = 0
  _registered = False

  @classmethod
  def register(cls) -> None:
    if cls._registered:
      return
    cls._registered = True

    def on_duration(event: str, seconds: float, **_):
      if event in _TRACE_EVENTS:
        cls.seconds["trace"] += seconds
      elif event == _COMPILE_EVENT:
        cls.seconds["compile"] += seconds

    def on_event(event: str, **_):
      if event == "/jax/compilation_cache/cache_hits":
        cls.hits += 1
      elif event == "/jax/compilation_cache/cache_misses":   # compiled, then written
        cls.writes += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)


def compile_seconds() -> float:
  """Seconds this process has spent tracing and compiling so far (counted from
  the first call of this or of StartupClock)."""
  _Compiles.register()
  return sum(_Compiles.seconds.values())


class StartupClock:
  """Time to the first finished step, by phase.

  `mark(phase)` books the wall time since the previous mark to `phase`, except
  the time spent tracing and compiling meanwhile, which goes to "trace" and
  "compile" (so a warm cache shows in "compile", and nowhere else). The first
  mark also books the time from the start of the process to it."""

  def __init__(self):
    _Compiles.register()
    self._last = PROCESS_START
    self._spent = dict(_Compiles.seconds)
    self._hits, self._writes = _Compiles.hits, _Compiles.writes
    self.phases: dict[str, float] = {}

  def mark(self, phase: str) -> None:
    now = time.monotonic()
    wall = now - self._last
    for name, total in _Compiles.seconds.items():
      spent = total - self._spent[name]
      self.phases[name] = self.phases.get(name, 0.0) + spent
      wall -= spent
    self.phases[phase] = self.phases.get(phase, 0.0) + wall
    self._last, self._spent = now, dict(_Compiles.seconds)

  @property
  def cache_hits(self) -> int:
    return _Compiles.hits - self._hits

  @property
  def cache_writes(self) -> int:
    return _Compiles.writes - self._writes

  def total(self) -> float:
    return sum(self.phases.values())

  def report(self, what: str = "the first step") -> str:
    parts = [f"{name} {seconds:.1f} s" for name, seconds in self.phases.items()
             if name not in ("trace", "compile")]
    parts.append(f"trace {self.phases.get('trace', 0.0):.1f} s")
    parts.append(f"compile {self.phases.get('compile', 0.0):.1f} s (cache: "
                 f"{self.cache_hits} programs loaded, {self.cache_writes} compiled and "
                 "written)")
    return f"time to {what} {self.total():.1f} s: " + ", ".join(parts)
