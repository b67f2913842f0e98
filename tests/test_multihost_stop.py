"""One stop step for every process of a run, through the real command line.

Two processes (2 fake CPU devices each, gloo collectives) join with an explicit
coordinator. A stop signal sent to ONE of them, at a random moment, stops both
after the same step: SIGTERM through JAX's preemption sync point (JAX's
notifier takes SIGTERM in a distributed run), the other signals through our
own vote (stopping.StopVote). Each stop leaves one complete checkpoint of that
step and exit code 75 on both, and the run resumed after every stop ends bit
for bit where an uninterrupted one does.
"""
from __future__ import annotations

import os
import random
import re
import signal
import socket
import time

import jax
import numpy as np
import pytest

from mixmim_jax import exit_codes
from mixmim_jax.training import checkpointing
import train_fixtures
from cli_runs import ENV, Trainer, tiny_args

# Each stop comes at most ~12 steps into its job (a signal 6 steps in, then
# JAX's notifier, which looks once a second, and the vote's one step).
STEPS_PER_STOP = 12
PAIR_ENV = dict(ENV, XLA_FLAGS=ENV["XLA_FLAGS"] + " --xla_force_host_platform_device_count=2")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return train_fixtures.write_idx_images(str(tmp_path_factory.mktemp("fmnist")), count=64)


def _args(data_dir, work, steps):
  return tiny_args(data_dir, steps=steps, batch_size=8, checkpoint_every_steps=1000,
                   checkpoint_keep=50) + [f"--workdir={work}"]


def _pair(data_dir, work, steps) -> list[Trainer]:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return [Trainer(_args(data_dir, work, steps) + [f"--coordinator_address=127.0.0.1:{port}",
                                           "--num_processes=2", f"--process_id={i}"],
                  env=PAIR_ENV) for i in range(2)]


def _steps_saved(work) -> list[int]:
  ckpts = os.path.join(work, "checkpoints")
  names = os.listdir(ckpts) if os.path.isdir(ckpts) else []
  assert not [n for n in names if "tmp" in n], names          # no save left half done
  return sorted(int(n) for n in names if n.isdigit())


def _finish(pair) -> list[tuple[int, str]]:
  return [t.finish(timeout=600) for t in pair]


def _stop_one(data_dir, work, steps, sig, rng) -> int:
  """Starts (or resumes) the pair, signals one process at a random moment
  after both joined (while compiling, or 1-6 steps into the job) and returns
  the step both stopped at."""
  before = _steps_saved(work)
  pair = _pair(data_dir, work, steps)
  for t in pair:
    t.wait_for("2 processes, 4 devices")             # both joined the run
  target, into = rng.randrange(2), rng.randrange(7)
  if into:                                           # only process 0 prints steps
    pair[0].wait_for(f"step {before[-1] + into if before else into:7d}/{steps}")
  delay = rng.uniform(0.0, 3.0 if into == 0 else 0.5)
  what = f"{sig.name} to process {target}, {into} steps into the job + {delay:.2f} s"
  time.sleep(delay)
  pair[target].proc.send_signal(sig)
  (code0, out0), (code1, out1) = _finish(pair)
  stopped = [re.findall(r"stopped at step (\d+)", out) for out in (out0, out1)]
  assert code0 == code1 == exit_codes.STOPPED, (what, out0[-2000:], out1[-2000:])
  assert len(stopped[0]) == len(stopped[1]) == 1 and stopped[0] == stopped[1], (what, stopped)
  step = int(stopped[0][0])
  assert "Traceback" not in out0 + out1, what
  assert _steps_saved(work) == before + [step], what       # one new, complete checkpoint
  state, meta, _ = checkpointing.read(os.path.join(work, "checkpoints"), step)
  assert meta["step"] == step and state["params"], what
  return step


def _params(work, steps):
  state, _, _ = checkpointing.read(os.path.join(work, "checkpoints"), steps)
  return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def _stops(tmp_path, data_dir, signals, seed, resume_to_the_end):
  rng = random.Random(seed)
  steps = STEPS_PER_STOP * len(signals) + 6
  work = str(tmp_path / "stopped")
  stops = [_stop_one(data_dir, work, steps, sig, rng) for sig in signals]
  assert stops == sorted(stops) and stops[-1] < steps, stops
  if not resume_to_the_end:
    return
  for work_dir in (work, str(tmp_path / "uninterrupted")):
    results = _finish(_pair(data_dir, work_dir, steps))
    assert all(code == exit_codes.FINISHED for code, _ in results), results[0][1][-2000:]
  for a, b in zip(_params(str(tmp_path / "uninterrupted"), steps), _params(work, steps)):
    np.testing.assert_array_equal(a, b)


def test_a_signal_to_one_process_stops_both_at_one_step(tmp_path, data_dir):
  """A preemption's SIGTERM through JAX's sync point, then (resumed) a
  Slurm-style SIGUSR1 through our vote."""
  _stops(tmp_path, data_dir, [signal.SIGTERM, signal.SIGUSR1], seed=0,
         resume_to_the_end=False)


@pytest.mark.slow
def test_many_signals_at_random_moments_then_resume_equals_uninterrupted(tmp_path, data_dir):
  """Five SIGTERMs and three other signals, each to a random process at a
  random moment, then the resumed run against an uninterrupted one. The default
  run covers each stop path above; that a resumed run equals an uninterrupted
  one bit for bit, with one process, in test_robustness.py (SIGKILL at any
  moment) and that two processes equal one in test_train.py."""
  signals = [signal.SIGTERM] * 5 + [signal.SIGINT, signal.SIGHUP, signal.SIGUSR2]
  random.Random(1).shuffle(signals)
  _stops(tmp_path, data_dir, signals, seed=1, resume_to_the_end=True)
