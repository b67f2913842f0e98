"""Stop requests, and one stop step for every process of a run.

Signals: SIGTERM (Spot / preemptible VMs, `kill`, Kubernetes, PBS), SIGINT
(Ctrl-C), SIGHUP (the terminal closed), SIGUSR1 / SIGUSR2 (Slurm's --signal,
SGE's and LSF's warnings before a kill) and SIGXCPU (a CPU-time limit) all ask
the run to save and stop. A signal the process was started ignoring (SIGHUP
under nohup) stays ignored.

Agreement: in a multi-process run every process must save the same step
(orbax's save is collective) and then stop; a signal reaches one host, or each
host at its own moment. Two mechanisms, both giving every process the same
answer after the same step:
- JAX's preemption sync point (`preemption_sync_point`): JAX's distributed
  runtime takes SIGTERM itself (its notifier replaces our handler) and agrees
  on a step through its coordination service: the largest step count any
  process reported, plus one. It must be asked at every step with a count
  that starts from 0 in every process of a job: a job resumed at step 4000
  whose notice came before its first step would otherwise wait for step 1
  forever. So it is asked with the number of steps this job has done.
- `StopVote` for the signals that reach us: each step, every process adds its
  own request to a max-reduction on the devices; the result is read one step
  later (long done by then, so the loop never waits for it).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np

from mixmim_jax import exit_codes

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGXCPU)


class StopSignals:
  """The stop signals (SIGNALS) ask the run to stop.

  Until this process has finished a step there is nothing new to save, so in a
  one-process run the first signal ends it at once, even inside a long compile,
  where Python runs no handler: a watcher thread learns of the signal through
  the wakeup file descriptor, which the interpreter writes the moment it
  arrives. Afterwards (and always in a multi-process run, where the other
  processes would wait for this one in a collective) the first signal asks the
  loop to save a checkpoint and stop after an agreed step; a second one ends
  the process at once.

  Use as a context manager around the loop (it restores the previous handlers);
  off the main thread (some tests) it does nothing.
  """

  def __init__(self):
    self.requested = False
    self.shared = False       # set once this process is one of several
    # Run before a stop at once ends the process (os._exit skips `finally` and
    # atexit): e.g. removing the workdir's lock (workdir_lock.py).
    self.before_exit: list = []
    self._progress = False
    self._installed = False

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    self._read, self._write = os.pipe()
    os.set_blocking(self._write, False)
    self._old_handlers = {s: signal.signal(s, lambda *_: None) for s in SIGNALS
                          if signal.getsignal(s) is not signal.SIG_IGN}
    self._old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
    self._watcher = threading.Thread(target=self._watch, name="stop-signals", daemon=True)
    self._watcher.start()
    self._installed = True
    return self

  def __exit__(self, *exc):
    if not self._installed:
      return
    signal.set_wakeup_fd(self._old_fd)
    for s, handler in self._old_handlers.items():
      signal.signal(s, handler)
    os.close(self._write)            # the watcher's read returns b"": it ends
    self._watcher.join(timeout=5)
    os.close(self._read)
    self._installed = False

  def progress(self) -> None:
    """A step of this process is done: from now on a stop saves first."""
    self._progress = True

  def _watch(self) -> None:
    while True:
      try:
        data = os.read(self._read, 16)
      except OSError:
        return
      if not data:
        return
      for signum in data:
        name = signal.Signals(signum).name
        if self.requested or not (self._progress or self.shared):
          why = "again" if self.requested else "before the first step ended"
          logger.warning("%s received %s: stopping at once; rerun the same command to "
                         "resume from the last checkpoint.", name, why)
          for callback in self.before_exit:
            try:
              callback()
            except Exception:  # pylint: disable=broad-except  (stopping comes first)
              pass
          logging.shutdown()
          sys.stdout.flush()
          os._exit(exit_codes.STOPPED)   # pylint: disable=protected-access
        self.requested = True
        logger.warning("%s received: saving a checkpoint after %s, then stopping "
                       "(send it again to stop at once).", name,
                       "a step all processes agree on" if self.shared else "this step")


def preemption_sync_point(steps_this_job: int) -> bool:
  """Whether JAX's preemption sync point is this step (always False without
  JAX's distributed runtime)."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  try:
    return multihost_utils.reached_preemption_sync_point(steps_this_job)
  except RuntimeError:        # no distributed runtime, or its preemption service is off
    return False


class StopVote:
  """Whether any process asked to stop, the same answer on every process.

  Each call adds this process's request to a max over all devices and returns
  the result of the previous call's reduction: a request made before step s's
  vote stops every process after step s + 1. Every process must call it once
  per step, as the loop does."""

  def __init__(self):
    devices = np.asarray(jax.devices())
    mesh = jax.sharding.Mesh(devices, ("all",))
    self._sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("all"))
    self._shape = (len(devices),)
    self._local = jax.local_devices()
    self._any = jax.jit(jnp.max, out_shardings=jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
    self._pending = None

  def __call__(self, requested: bool) -> bool:
    flag = np.asarray([int(requested)], np.int32)
    votes = jax.make_array_from_single_device_arrays(
        self._shape, self._sharding, [jax.device_put(flag, d) for d in self._local])
    earlier, self._pending = self._pending, self._any(votes)
    return earlier is not None and bool(earlier.addressable_data(0))
