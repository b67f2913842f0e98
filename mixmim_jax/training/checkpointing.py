"""Orbax checkpoints of the train state, with the data position and run info.

The data pipeline is a pure function of (seed, step), so the step *is* the data
position and the per-step RNG is fold_in(seed key, step): restoring the step,
params and optimizer state reproduces an uninterrupted run exactly.

A save is reported when it is committed (`Checkpointer.committed`), not when
it starts. A checkpoint
that cannot be read (a crash in the middle of a save on a file system without
atomic renames, a truncated file) is moved aside to `STEP.damaged` and the run
resumes from the newest one that reads; nothing is ever deleted here.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mixmim_jax import files

logger = logging.getLogger(__name__)


def directory_of(workdir: str) -> str:
  """Where a trainer's workdir keeps its checkpoints."""
  return files.absolute(str(epath.Path(workdir) / "checkpoints"))


class Checkpointer:
  """Keeps the last `keep` checkpoints under `directory`; saves are async."""

  def __init__(self, directory: str, keep: int, async_save: bool = True):
    self.directory = files.absolute(directory)
    self._keep, self._async = keep, async_save
    self._pending: list[int] = []
    self._lock = threading.Lock()
    self._open()

  def _open(self) -> None:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=self._keep, create=True, enable_async_checkpointing=self._async)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    # orbax asks JAX's preemption sync point with the global step inside save();
    # that point must see only the loop's count of this job's steps (stopping.py).
    self._manager.reached_preemption = lambda step: False

  def committed(self, step: int) -> bool:
    """Whether the checkpoint of `step` is complete: locally orbax renames it
    into place when done; on object stores it writes commit_success.txt last."""
    path = epath.Path(self.directory) / str(step)
    return path.is_dir() and (not files.is_remote(self.directory)
                              or (path / "commit_success.txt").exists())

  def _report_when_committed(self, step: int) -> None:
    """Logs a save once it is committed: a log line never announces a
    checkpoint that a crash could still take away."""
    while step in self._pending and not self.committed(step):
      time.sleep(0.05)
    self._report(step)

  def _report(self, step: int) -> None:
    with self._lock:
      if step not in self._pending:
        return
      self._pending.remove(step)
    logger.info("checkpoint for step %d written to %s", step, self.directory)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()


  def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
    saved = self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)), force=force)
    if saved:
      self._pending.append(step)
      if self._async:
        threading.Thread(target=self._report_when_committed, args=(step,), daemon=True,
                         name=f"checkpoint-{step}").start()
      else:
        self._report(step)
    return saved

  def meta(self, step: int) -> dict:
    """The run info saved with the checkpoint at `step` (no arrays are read)."""
    return self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state):
    """Restores into the shardings of `abstract_state` (ShapeDtypeStructs)."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                      meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def restore_newest(self, abstract_state, check_meta: Callable[[dict], None]):
    """(step, state, meta) of the newest checkpoint that reads, or None when
    there is none. `check_meta` may refuse a checkpoint (raising): that is not
    damage and stops the search. Damaged checkpoints are moved aside."""
    while (step := self.latest_step()) is not None:
      try:
        meta = self.meta(step)
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e)
        continue
      check_meta(meta)
      try:
        state, meta = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e)
        continue
      return step, state, meta
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    path = epath.Path(self.directory) / str(step)
    aside = epath.Path(self.directory) / f"{step}.damaged-{int(time.time())}"
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    if jax.process_index() == 0:
      path.rename(aside)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices(f"mixmim_jax set aside {step}")
    logger.warning("the checkpoint for step %d in %s cannot be read (%s); it is moved to "
                   "%s, and the run resumes from the newest checkpoint before it.", step,
                   self.directory, first_line, aside.name)
    self._manager.close()
    self._open()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    for step in list(self._pending):
      self._report(step)
    self._manager.close()


def read(directory: str, step: int = -1):
  """(state as NumPy trees, meta, description) of the checkpoint at `step` (-1:
  the latest) in `directory`, without knowing the model beforehand."""
  if not epath.Path(directory).is_dir():
    raise FileNotFoundError(f"no checkpoints directory {directory!r} (expected the "
                            "--workdir of a pretraining or fine-tuning run).")
  manager = ocp.CheckpointManager(directory)
  try:
    step = manager.latest_step() if step < 0 else step
    if step is None:
      raise FileNotFoundError(f"no checkpoints in {directory!r}.")
    if step not in manager.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {directory!r}; it has "
                              f"steps {sorted(manager.all_steps())}.")
    # Saved on any topology (a pod's 256 chips) and read here on one device of
    # this host: orbax keeps a saved sharding only where this machine has it.
    host = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(fallback_sharding=host), meta=ocp.args.JsonRestore()))
  finally:
    manager.close()
  state = jax.tree.map(np.asarray, restored["state"])
  return state, restored["meta"], f"step {step} in {directory}"
