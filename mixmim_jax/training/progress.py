"""How far a run is and when it will end: elapsed time, an ETA from recent step
times, images/s per chip and the chip-hours spent (big_vision's `chrono`,
clu's ReportProgress).

The ETA must not be thrown off by time that is not stepping: the first step of
a job (it traces and compiles), any later compile (JAX reports each one, see
startup.py), and the representation probes the trainer runs between steps.
Each logging interval is recorded with that time set apart, and the step time
is the mean over the most recent intervals with it left out:

  seconds_per_step(intervals)     # pure: the tested rule
  eta_seconds(intervals, remaining_steps, evals_left_seconds)
"""
from __future__ import annotations

import dataclasses
import time

from mixmim_jax.training import startup

# The ETA follows the step times of roughly this many recent steps: long enough
# to average out the input pipeline's jitter, short enough to follow a change
# of speed (a shared machine, a resumed job on other chips).
WINDOW_STEPS = 200


@dataclasses.dataclass(frozen=True)
class Interval:
  """The steps between two log lines: their wall time, and the part of it
  spent compiling or evaluating (not stepping)."""
  steps: int
  seconds: float
  excluded: float = 0.0
  first_of_job: bool = False     # holds the job's first step: its compile and warm-up


def seconds_per_step(intervals: list[Interval], window: int = WINDOW_STEPS) -> float | None:
  """Mean seconds per step over the latest intervals covering at least
  `window` steps, compile and evaluation time left out, a job's first interval
  left out whole (its first step also warms caches and allocators, which no
  event reports). None until a step has been timed."""
  steps, seconds = 0, 0.0
  for interval in reversed(intervals):
    if interval.first_of_job or interval.steps <= 0:
      continue
    steps += interval.steps
    seconds += max(0.0, interval.seconds - interval.excluded)
    if steps >= window:
      break
  return seconds / steps if steps else None


def eta_seconds(intervals: list[Interval], remaining_steps: int,
                evals_left_seconds: float = 0.0, window: int = WINDOW_STEPS) -> float | None:
  """Seconds to the end: the remaining steps at the recent step time, plus the
  evaluations still to run (their last measured cost)."""
  per_step = seconds_per_step(intervals, window)
  if per_step is None:
    return None
  return remaining_steps * per_step + evals_left_seconds


def duration(seconds: float | None) -> str:
  """'42s', '7m05s', '3h12m', '2d04h'; '?' for None."""
  if seconds is None:
    return "?"
  s = int(round(max(0.0, seconds)))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  if s < 86400:
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
  return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class Progress:
  """One job's clock. `chip_seconds` carries over from earlier jobs of the
  run (the checkpoint's meta), so chip-hours count the whole run up to its
  last checkpoint plus this job."""

  def __init__(self, total_steps: int, start_step: int, num_chips: int,
               chip_seconds_before: float = 0.0):
    self.total_steps, self.num_chips = total_steps, num_chips
    self._chip_seconds_before = chip_seconds_before
    self._job_start = startup.PROCESS_START      # the job's cost starts with the process
    self._last_time = time.monotonic()
    self._last_compile = startup.compile_seconds()
    self._outside = 0.0                            # evaluation time since the last interval
    self._first = start_step
    self.intervals: list[Interval] = []
    self.eval_seconds = 0.0

  def add_outside(self, seconds: float) -> None:
    """Time spent between steps on something else (the probes)."""
    self._outside += seconds
    self.eval_seconds += seconds

  def outside_since_last(self) -> float:
    return self._outside

  def interval(self, done: int, steps: int) -> Interval:
    """Closes the interval ending at step `done` and records it."""
    now, compiled = time.monotonic(), startup.compile_seconds()
    interval = Interval(steps, now - self._last_time,
                        self._outside + (compiled - self._last_compile),
                        first_of_job=done - steps == self._first)
    self.intervals.append(interval)
    del self.intervals[:-64]                       # far more than the window needs
    self._last_time, self._last_compile, self._outside = now, compiled, 0.0
    return interval

  def elapsed(self) -> float:
    return time.monotonic() - self._job_start

  def chip_seconds(self) -> float:
    return self._chip_seconds_before + self.elapsed() * self.num_chips

  def scalars(self, done: int, evals_left_seconds: float = 0.0) -> dict[str, float]:
    """What the console line and TensorBoard show besides the step's metrics."""
    eta = eta_seconds(self.intervals, self.total_steps - done, evals_left_seconds)
    out = dict(elapsed=self.elapsed(), chip_hours=self.chip_seconds() / 3600,
               eval_seconds=self.eval_seconds)
    if eta is not None:
      out["eta"] = eta
    return out
