"""Orbax checkpoints of the train state, with the data position and run info.

The data pipeline is a pure function of (seed, step), so the step *is* the data
position and the per-step RNG is fold_in(seed key, step): restoring the step,
params and optimizer state reproduces an uninterrupted run exactly.
"""
from __future__ import annotations

import logging

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
    directory = files.absolute(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(directory, options=options)
    self.directory = directory

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def reached_preemption(self, step: int) -> bool:
    """True when the platform (e.g. a Cloud TPU maintenance event) asked to stop."""
    return self._manager.reached_preemption(step)

  def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
    saved = self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)), force=force)
    if saved:
      logger.info("checkpoint for step %d written to %s", step, self.directory)
    return saved

  def restore(self, step: int, abstract_state):
    """Restores into the shardings of `abstract_state` (ShapeDtypeStructs)."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                      meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
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
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  finally:
    manager.close()
  state = jax.tree.map(np.asarray, restored["state"])
  return state, restored["meta"], f"step {step} in {directory}"
