"""Orbax checkpoints of the train state, with the data position and run info.

The data pipeline is a pure function of (seed, step), so the step *is* the data
position and the per-step RNG is fold_in(seed key, step): restoring the step,
params and optimizer state reproduces an uninterrupted run exactly.

A save is reported when it is committed (`Checkpointer.committed`), not when
it starts. A checkpoint
that cannot be read (a crash in the middle of a save on a file system without
atomic renames, a truncated file) is moved aside to `STEP.damaged` and the run
resumes from the newest one that reads; no checkpoint is ever deleted here. A
save that fails (a full disk) is one files.StorageError naming the checkpoint
that is kept; only that save's partial files are removed, and the errors
orbax's threads and asyncio would print beside it are not printed.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mixmim_jax import files

logger = logging.getLogger(__name__)


class _OrbaxBackgroundFailures(logging.Filter):
  """Drops what a failed background save prints beside the one sentence the
  Checkpointer reports for it (files.StorageError, from the main thread): each
  of orbax's save threads logs the error with its traceback, and asyncio logs
  every write task and future that failed with it, when it is collected
  ("Task exception was never retrieved"), possibly during a later command."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    message = record.getMessage()
    if record.name == "asyncio":
      # "Task exception was never retrieved", "Future exception ...": each failed write.
      return not ("exception was never retrieved" in message and _from_orbax(record))
    # orbax's save threads: "...run() raised an exception", "Failed to run ... Commit
    # operations", "Save Finalize thread (save_finalize) failed".
    return not ("orbax" in record.pathname
                and ("raised an exception" in message or "failed" in message.lower()))


def _from_orbax(record: logging.LogRecord) -> bool:
  tb = record.exc_info[2] if record.exc_info else None
  return "orbax" in record.getMessage() or any(
      "orbax" in frame.filename for frame in traceback.extract_tb(tb))


def _event_loop_closed(error) -> bool:
  return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _quiet_hooks() -> None:
  """tensorstore reports (as an unraisable error, through sys.unraisablehook,
  sometimes sys.excepthook) the "Event loop is closed" of each write that
  finishes after its failed save's event loop was closed: up to a few hundred
  tracebacks that say nothing the reported failure does not."""
  unraisable, excepthook = sys.unraisablehook, sys.excepthook
  if getattr(unraisable, "quiet", False):
    return

  def quiet_unraisable(info):
    if not _event_loop_closed(info.exc_value):
      unraisable(info)

  def quiet_excepthook(kind, value, tb):
    if not _event_loop_closed(value):
      excepthook(kind, value, tb)

  quiet_unraisable.quiet = quiet_excepthook.quiet = True
  sys.unraisablehook, sys.excepthook = quiet_unraisable, quiet_excepthook


def _quiet_background_failures() -> None:
  for name in ("absl", "asyncio"):
    target = logging.getLogger(name)
    if not any(isinstance(f, _OrbaxBackgroundFailures) for f in target.filters):
      target.addFilter(_OrbaxBackgroundFailures())
  _quiet_hooks()


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
    self._manager = None

  def _ready(self, create: bool) -> bool:
    """Opens orbax's manager on first use. The folder is made by the first
    save, never by looking: a run refused before it saves leaves no empty
    WORKDIR/checkpoints/ behind."""
    if self._manager is None and (create or epath.Path(self.directory).is_dir()):
      self._open()
    return self._manager is not None

  def _open(self) -> None:
    _quiet_background_failures()
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
    return self._manager.latest_step() if self._ready(create=False) else None

  def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
    """Starts saving `step` (async unless configured otherwise). A save that
    fails, now or in the background, is a files.StorageError naming the step
    and the checkpoint that is kept; its partial files are removed."""
    self._ready(create=True)
    try:
      saved = self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave(meta)), force=force)
    except Exception as e:  # pylint: disable=broad-except  (any storage layer's error)
      raise self._failed(step, e) from e
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
    self._ready(create=False)
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
    """Returns once every started save is committed (and logged as written)."""
    if self._manager is None:
      return
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed(None, e) from e
    for step in list(self._pending):
      self._report(step)

  def close(self) -> None:
    if self._manager is None:
      return
    self.wait()
    self._manager.close()

  def committed_steps(self) -> list[int]:
    folder = epath.Path(self.directory)
    if not folder.is_dir():
      return []
    return sorted(int(p.name) for p in folder.iterdir()
                  if p.name.isdigit() and self.committed(int(p.name)))

  def _failed(self, step: int | None, error: Exception) -> files.StorageError:
    """The one sentence for a save that failed; removes what it left half written."""
    with self._lock:
      failed = self._pending[0] if self._pending else step
      self._pending.clear()
    if jax.process_index() == 0:
      for path in epath.Path(self.directory).glob(f"{failed}.orbax-checkpoint-tmp*"):
        try:
          path.rmtree()
        except OSError:
          pass
    kept = [s for s in self.committed_steps() if s != failed]
    keep = (f"the checkpoint for step {kept[-1]} is kept" if kept
            else "there is no earlier checkpoint")
    return files.StorageError(
        f"saving the checkpoint for step {failed} to {self.directory} failed "
        f"({files.reason(error)}); {keep}: free space or fix the storage, then rerun the same "
        "command to resume.")


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
