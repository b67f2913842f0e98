"""The run's clock: the ETA follows recent step times and leaves out compile
and evaluation time; the console line shows it with elapsed time, images/s per
chip and chip-hours."""
from __future__ import annotations

import pytest

from mixmim_jax.training import metrics, progress
from mixmim_jax.training.progress import Interval, eta_seconds, seconds_per_step


def test_step_time_leaves_out_the_first_step_compiles_and_evaluations():
  intervals = [Interval(1, 45.0, excluded=41.0, first_of_job=True),  # compile + warm-up
               Interval(49, 60.0, excluded=11.0),    # a compile (pictures) and a probe round
               Interval(50, 50.0)]
  assert seconds_per_step(intervals) == pytest.approx(1.0)
  assert eta_seconds(intervals, remaining_steps=900) == pytest.approx(900.0)
  assert eta_seconds(intervals, 900, evals_left_seconds=30.0) == pytest.approx(930.0)


def test_step_time_follows_the_recent_steps():
  slow, fast = Interval(100, 300.0), Interval(100, 100.0)
  assert seconds_per_step([slow] * 5 + [fast] * 2, window=200) == pytest.approx(1.0)
  assert seconds_per_step([slow] * 5 + [fast] * 2, window=300) == pytest.approx(5 / 3)


def test_no_eta_before_a_step_is_timed():
  assert eta_seconds([], 10) is None
  assert eta_seconds([Interval(1, 40.0, first_of_job=True)], 10) is None


def test_progress_books_compile_time_reported_by_jax(monkeypatch):
  """Progress reads the clock and JAX's compile counter (startup.py): a compile
  inside an interval does not count as step time."""
  clock, compiled = [0.0], [0.0]
  monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
  monkeypatch.setattr(progress.startup, "compile_seconds", lambda: compiled[0])
  p = progress.Progress(total_steps=1000, start_step=0, num_chips=4)
  clock[0], compiled[0] = 50.0, 40.0
  p.interval(done=1, steps=1)                  # the first step: compiles
  clock[0], compiled[0] = 170.0, 60.0          # 100 steps, a 20 s compile, a 20 s probe
  p.add_outside(20.0)
  p.interval(done=101, steps=100)
  assert seconds_per_step(p.intervals) == pytest.approx(0.8)
  scalars = p.scalars(done=101)
  assert scalars["eta"] == pytest.approx(899 * 0.8)
  assert scalars["eval_seconds"] == 20.0


@pytest.mark.parametrize("seconds, text", [(None, "?"), (42.4, "42s"), (425, "7m05s"),
                                           (3 * 3600 + 12 * 60, "3h12m"),
                                           (2 * 86400 + 4 * 3600, "2d04h")])
def test_durations_read_at_a_glance(seconds, text):
  assert progress.duration(seconds) == text


def test_console_line_carries_the_clock():
  s = dict(loss=0.5, lr=1e-3, grad_norm=0.2, images_per_sec=800.0, step_time=0.16,
           data_wait=0.001, images_per_sec_per_chip=100.0, elapsed=3725.0, eta=7200.0,
           eval_seconds=65.0, chip_hours=8.3)
  line = metrics.progress_line(1000, 5000, s)
  assert "800.0 img/s (100.0/chip)" in line
  assert "1h02m elapsed, ETA 2h00m (evals so far 1m05s) | 8.3 chip-h" in line
