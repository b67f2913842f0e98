"""What every trainer's loop shares around its own step: the workdir (read and
written through etils.epath, so gs:// works like a local path), stop requests
(the signals of stopping.py, a preemption notice; one agreed step in a
multi-process run), means over each logging
interval, the finite-loss check, and when to save and stop.

A trainer reads top to bottom with it:

    run = TrainLoop(config, workdir, total_steps, start, checkpointer, writer)
    for step in range(start, total_steps):
      batch = run.next_batch(batches)
      state, metrics = step_fn(state, batch...)
      done = run.after_step(step, metrics)      # logs when due
      ... (pictures, evaluation: the trainer's own)
      if run.save_and_stop(done, state, meta):  # checkpoints when due
        break
    run.close(batches)
    return run.result(state)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time

import jax
from etils import epath

from mixmim_jax import files
from mixmim_jax.model.arch import ModelConfig
from mixmim_jax.training import metrics, progress
from mixmim_jax.training.startup import StartupClock
from mixmim_jax.training.stopping import StopSignals, StopVote, preemption_sync_point

logger = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
  """The loss or gradient norm became NaN or infinite."""


class Workdir:
  """A run's directory: checkpoints/, tensorboard/, config.json and the rest."""

  def __init__(self, path: str):
    self.path = epath.Path(path)

  def __str__(self) -> str:
    return str(self.path)

  def join(self, *parts: str) -> str:
    return str(self.path.joinpath(*parts))

  def exists(self, name: str) -> bool:
    return (self.path / name).exists()

  def read_text(self, name: str) -> str:
    return (self.path / name).read_text()

  def write_text(self, name: str, text: str) -> None:
    # The first write makes the folder (the command line's lock has made it
    # already; a trainer called from Python has not).
    self.path.mkdir(parents=True, exist_ok=True)
    files.write_atomically(self.path / name, text)

  def write_config(self, config) -> None:
    self.write_text("config.json", config.to_json_best_effort(indent=2))


def check_finite(step: int, scalars: dict[str, float], where: str) -> None:
  if not (math.isfinite(scalars["loss"]) and math.isfinite(scalars["grad_norm"])):
    raise NonFiniteLoss(
        f"non-finite loss {scalars['loss']} (grad norm {scalars['grad_norm']}) at step "
        f"{step}; stopped without saving, the last good checkpoint in {where} is kept.")


class TrainLoop:
  """Bookkeeping of one trainer's loop from step `start` to `total_steps`."""

  def __init__(self, config, workdir: Workdir, total_steps: int, start: int, checkpointer,
               writer: metrics.MetricWriter, stop_after: int | None = None,
               signals: StopSignals | None = None, clock: StartupClock | None = None):
    """`signals`: the program's (cli.py installs them for the whole run);
    without, the loop installs its own for its lifetime. `clock`: the
    trainer's start-up so far; the loop books the first batch and the first
    step to it and logs the time to the first step."""
    self._config, self._workdir = config, workdir
    self.total_steps, self.start = total_steps, start
    self._ckpt, self._writer = checkpointer, writer
    self._stop_after = stop_after
    self._own_signals = signals is None
    self._signals = StopSignals().__enter__() if signals is None else signals
    self._vote = StopVote() if jax.process_count() > 1 else None
    self._clock = clock
    self.history: dict[int, float] = {}
    self.last: dict[str, float] = {}
    self.progress = progress.Progress(total_steps, start, jax.device_count(),
                                      _chip_seconds_so_far(checkpointer, start))
    self.evals_left_seconds = 0.0        # the trainer's estimate, for the ETA
    self.save_due = self.stop_due = self.is_last = False
    self.stopped_early = False
    self._reset(start)

  def _reset(self, step: int) -> None:
    self._since_time, self._since_step = time.perf_counter(), step
    self._loss_sum, self._data_wait = 0.0, 0.0   # the loss is summed on device

  def next_batch(self, batches):
    t0 = time.perf_counter()
    batch = next(batches)
    self._data_wait += time.perf_counter() - t0
    if self._clock is not None and "data pipeline" not in self._clock.phases:
      self._clock.mark("data pipeline")    # up to the first batch
    return batch

  def after_step(self, step: int, step_metrics: dict, **extra_scalars) -> int:
    """Accounts for step `step` (0-based); logs when due. Returns the number of
    steps done, and sets save_due / stop_due / is_last for this step."""
    done = step + 1
    self._signals.progress()
    self._loss_sum = self._loss_sum + step_metrics["loss"]
    self.is_last = done == self.total_steps
    # Each of these is the same on every process after the same step; every
    # process must ask the vote and the preemption sync point at every step.
    asked = self._signals.requested
    if self._vote is not None:
      asked = self._vote(asked)
    preempted = preemption_sync_point(done - self.start)
    self.stop_due = (asked or preempted
                     or (self._stop_after is not None and done - self.start >= self._stop_after))
    self.stopped_early = self.stop_due and not self.is_last
    self.save_due = (self.stop_due or self.is_last
                     or done % self._config.checkpoint_every_steps == 0)
    # Also log the first step of a job: it shows the starting loss and compile time.
    if (self.save_due or done == self.start + 1
        or done % self._config.log_every_steps == 0):
      self._log(done, step_metrics, extra_scalars)
    if self._clock is not None and done == self.start + 1:
      self._clock.mark("first step")       # the log above waited for it
      logger.info("%s", self._clock.report())
    return done

  def _log(self, done: int, step_metrics: dict, extra: dict) -> None:
    scalars = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    n = done - self._since_step
    # The logged loss is the mean since the last log; a NaN anywhere shows in it.
    scalars["loss"] = float(self._loss_sum) / n
    check_finite(done, scalars, str(self._workdir))
    now = time.perf_counter()
    # Evaluations between steps are not step time (progress.py).
    stepping = max(1e-9, now - self._since_time - self.progress.outside_since_last())
    self.progress.interval(done, n)
    scalars.update(step_time=stepping / n, data_wait=self._data_wait / n,
                   images_per_sec=n * self._config.batch_size / stepping, **extra)
    scalars["images_per_sec_per_chip"] = scalars["images_per_sec"] / jax.device_count()
    scalars.update(self.progress.scalars(done, self.evals_left_seconds))
    self.history[done] = scalars["loss"]
    self.last = scalars
    self._writer.write(done, scalars)
    if jax.process_index() == 0:
      print(metrics.progress_line(done, self.total_steps, scalars), flush=True)
    self._reset(done)

  def outside_steps(self, seconds: float) -> None:
    """Books time the trainer spent between steps on something else (the
    representation probes): left out of the step time, images/s and the ETA."""
    self.progress.add_outside(seconds)

  def save_and_stop(self, done: int, state, meta: dict) -> bool:
    """Checkpoints when due; True when the loop must stop after this step."""
    if self.save_due:
      self._ckpt.save(done, state, dict(meta, step=done,
                                        chip_seconds=self.progress.chip_seconds()),
                      force=self.stop_due or self.is_last)
    if self.stop_due:
      logger.warning("stopped at step %d (a stop was asked for); rerun the same command to "
                     "resume.", done)
    return self.stop_due

  def release_signals(self) -> None:
    """Restores the signal handlers this loop installed (when the caller gave
    none); idempotent. Left installed after an error, their watcher would end
    the caller's process at its next signals."""
    if self._own_signals:
      self._signals.__exit__()
      self._own_signals = False

  def close(self, batches) -> None:
    """Waits for the last checkpoint, closes the event files, and says how many
    unreadable images the run met."""
    self.release_signals()
    self._ckpt.close()
    self._writer.close()
    if batches.skipped:
      logger.warning("%d unreadable files were skipped (%d times in all).",
                     batches.skipped_files, batches.skipped)

  def result(self, state, **extra) -> dict:
    """What a trainer returns: the last logged scalars, the loss history ({step:
    mean loss} at every log step), the final step and state."""
    return dict(last=self.last, history=self.history, final_step=int(jax.device_get(state.step)),
                state=state, stopped_early=self.stopped_early, **extra)


def _chip_seconds_so_far(checkpointer, start: int) -> float:
  """The chip time of the run's earlier jobs, as saved with the checkpoint
  this job starts from (0 for a new run or an older checkpoint)."""
  if not start:
    return 0.0
  try:
    return float(checkpointer.meta(start).get("chip_seconds", 0.0))
  except Exception:  # pylint: disable=broad-except
    return 0.0        # only a figure on the console; never stop a run over it


def resume(checkpointer, fns, model: ModelConfig):
  """The state of the newest readable checkpoint, in the step's shardings, once
  its metadata shows it is of `model`; None when there is none."""
  found = checkpointer.restore_newest(
      fns.abstract_state_sharded(),
      lambda meta: check_same_model(meta.get("model_config", {}), model, checkpointer.directory))
  if found is None:
    return None
  step, state, _ = found
  logger.info("resumed from step %d in %s", step, checkpointer.directory)
  return state


def model_config_json(model: ModelConfig) -> dict:
  """A ModelConfig as the plain dict stored beside checkpoints."""
  return json.loads(model.to_json())


# How a model is computed or was first drawn, not what its parameters are: a
# run may resume with these changed.
_MAY_CHANGE_ON_RESUME = ("dtype", "remat", "scan_blocks", "init")


def check_same_model(saved: dict, model: ModelConfig, where: str) -> None:
  """A workdir's checkpoints must be of the model the config builds; the error
  names every field that differs."""
  try:
    theirs = ModelConfig.from_dict(saved)
  except (TypeError, ValueError) as e:
    raise ValueError(f"the checkpoints in {where} are not of a model this version can "
                     f"build ({e}); use another --workdir.") from e
  differ = [f"{f.name}={getattr(theirs, f.name)!r} there, {getattr(model, f.name)!r} in "
            "the config" for f in dataclasses.fields(ModelConfig)
            if f.name not in _MAY_CHANGE_ON_RESUME
            and getattr(theirs, f.name) != getattr(model, f.name)]
  if differ:
    raise ValueError(f"the checkpoints in {where} are of another model ({'; '.join(differ)}); "
                     "resume with the config they were written with, or use another "
                     "--workdir.")
