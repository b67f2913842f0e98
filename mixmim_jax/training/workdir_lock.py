"""One run per workdir: the lock file WORKDIR/run.lock.

A trainer takes the lock before it reads or writes anything else in its
workdir, and removes it when it ends, also on an error or a stop signal. A
second run on a busy workdir is refused at start, in one sentence naming the
first run's host and pid. The lock is a small JSON record: host, pid, the
machine's boot id and the process's start time, when the run started, a
heartbeat, a random token and the command line.

A run killed outright (SIGKILL, a lost VM) leaves its lock behind; the next
run tells it from a live run's and takes it over, saying so:
- on the machine that wrote it (same host name and boot id): the pid no
  longer runs, or now belongs to a process that started at another time;
- anywhere else (another host, a gs:// workdir, this host after a reboot):
  the heartbeat, which a thread of the running trainer rewrites every
  HEARTBEAT_S seconds (through compiles and evaluations, when the loop does
  not run), is older than STALE_AFTER_S. A lock from before this machine
  last booted is dead at once.

Creating the lock is exclusive where the storage can do it (a local file
opened with O_EXCL: of two runs starting together, one wins). An object store
offers no exclusive create through epath, so there the lock is written, read
back after a pause, and the run whose token it holds goes on.

Multi-process runs: process 0 takes the lock and keeps its heartbeat; every
process learns the outcome, so all start or all refuse.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid

from etils import epath

from mixmim_jax import files

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0     # ten missed heartbeats: a stalled file system, not a live run
_SETTLE_S = 2.0           # object stores: how long a new lock stands before it is read back


class WorkdirBusy(Exception):
  """Another live run holds the workdir."""


# ------------------------------------------------------------------ this machine

def _read_local(path: str) -> str | None:
  try:
    return epath.Path(path).read_text().strip()
  except OSError:
    return None


def _boot_id() -> str | None:
  return _read_local("/proc/sys/kernel/random/boot_id")


def _boot_time(now: float) -> float | None:
  uptime = _read_local("/proc/uptime")
  return now - float(uptime.split()[0]) if uptime else None


def _process_start(pid: int) -> str | None:
  """The start time of process `pid` (clock ticks since boot, /proc/PID/stat's
  22nd field); None when no such process runs, or it is a zombie."""
  stat = _read_local(f"/proc/{pid}/stat")
  if stat is None:
    return None
  fields = stat.rsplit(")", 1)[1].split()     # fields 3.. (the name may hold spaces)
  return None if fields[0] in ("Z", "X") else fields[19]


def _local_process_runs(pid: int, recorded_start: str | None) -> tuple[bool, str]:
  """Whether the pid of a lock written on this machine still runs that run."""
  if pid <= 0:
    return False, "it names no process"
  if _read_local("/proc/self/stat") is None:        # no /proc (macOS): ask the kernel
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False, f"no process {pid} runs there"
    except PermissionError:
      pass                                          # another user's live process
    return True, ""
  start = _process_start(pid)
  if start is None:
    return False, f"no process {pid} runs there"
  if recorded_start and start != recorded_start:
    return False, f"pid {pid} now belongs to another process"
  return True, ""


def is_live(record: dict, now: float) -> tuple[bool, str]:
  """(whether the run that wrote `record` still runs, and if not, how that is
  known). See the module docstring for the rules."""
  heartbeat = float(record.get("heartbeat") or 0.0)
  if record.get("host") == socket.gethostname():
    if record.get("boot_id") == _boot_id():
      return _local_process_runs(int(record.get("pid", -1)), record.get("process_start"))
    boot = _boot_time(now)
    if boot is not None and heartbeat < boot:
      return False, "it was written before this machine last started"
  age = now - heartbeat
  if age > STALE_AFTER_S:
    return False, (f"its heartbeat stopped {age / 60:.0f} min ago (a live run refreshes it "
                   f"every {HEARTBEAT_S:.0f} s)")
  return True, ""


# ------------------------------------------------------------------ the lock

class WorkdirLock:
  """WORKDIR/run.lock while this run holds it. `acquire()` takes it or raises
  WorkdirBusy / files.StorageError (then nothing of the workdir is left
  changed); `release()` removes it, and the workdir folders this run created
  if they are still empty."""

  def __init__(self, workdir: str):
    self.workdir = epath.Path(workdir)
    self.path = self.workdir / LOCK_NAME
    self._remote = files.is_remote(workdir)
    pid = os.getpid()
    self._record = dict(host=socket.gethostname(), pid=pid, boot_id=_boot_id(),
                        process_start=_process_start(pid), started=time.time(),
                        heartbeat=time.time(), token=uuid.uuid4().hex,
                        command=" ".join(sys.argv)[:1000])
    self._created: list[epath.Path] = []       # deepest first
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self.held = False

  def acquire(self) -> "WorkdirLock":
    try:
      self._make_workdir()
      for _ in range(5):
        if self._create():
          self.held = True
          break
        record = self._read()
        if record is None:
          continue                           # removed meanwhile: try again
        live, why = is_live(record, time.time())
        if live:
          raise WorkdirBusy(_busy_sentence(self.workdir, record))
        logger.warning("taking over %s: the run that left it (host %s, pid %s) has ended "
                       "(%s).", self.path, record.get("host"), record.get("pid"), why)
        self._remove_if_still(record.get("token"))
      else:
        raise WorkdirBusy(f"{self.path} keeps changing hands: other runs are starting on "
                          "this workdir; start one run per --workdir.")
    except BaseException:
      self._remove_created_folders()
      raise
    self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
    self._thread.start()
    return self

  def release(self) -> None:
    """Idempotent; safe from any thread (the stop-signal watcher calls it
    before ending the process at once)."""
    self._stop.set()
    if self._thread is not None and self._thread is not threading.current_thread():
      self._thread.join(timeout=10)           # a beat in flight must not rewrite the lock
    if self.held:
      self.held = False
      try:
        record = self._read()
        if record is not None and record.get("token") == self._record["token"]:
          self.path.unlink(missing_ok=True)
      except Exception as e:  # pylint: disable=broad-except  (the next run tells it is dead)
        logger.warning("could not remove %s (%s); the next run will see that this run has "
                       "ended.", self.path, files.reason(e))
    self._remove_created_folders()

  # -- creating and reading

  def _make_workdir(self) -> None:
    try:
      if self.workdir.exists() and not self.workdir.is_dir():
        raise files.StorageError(f"--workdir={self.workdir} is a file, not a directory; give "
                                 "a directory (it is created when missing).")
      if self._remote:
        return                                 # an object store has no folders to make
      missing, folder = [], self.workdir.absolute()
      while not folder.exists():
        missing.append(folder)
        folder = folder.parent
      self.workdir.mkdir(parents=True, exist_ok=True)
      self._created = missing
    except files.StorageError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (any storage layer's error)
      raise self._unusable(e) from e

  def _create(self) -> bool:
    """Writes this run's record unless a lock exists; True when it is ours."""
    try:
      return files.create_exclusively(self.path, json.dumps(self._record), _SETTLE_S)
    except Exception as e:  # pylint: disable=broad-except  (any storage layer's error)
      raise self._unusable(e) from e

  def _read(self) -> dict | None:
    """The lock's record; None when there is none. A record being written is
    waited for briefly; one that stays unreadable reads as a dead run's."""
    for _ in range(10):
      try:
        return json.loads(self.path.read_text())
      except FileNotFoundError:
        return None
      except ValueError:
        time.sleep(0.1)
    return dict(host="?", pid="?", heartbeat=0.0, token=None)

  def _remove_if_still(self, token) -> None:
    record = self._read()
    if record is not None and record.get("token") == token:
      self.path.unlink(missing_ok=True)

  def _unusable(self, error: BaseException) -> files.StorageError:
    hint = (" (gs://: check the network and the credentials, e.g. `gcloud auth "
            "application-default login`)" if self._remote else "")
    return files.StorageError(f"cannot use the workdir {self.workdir}: {files.reason(error)}; "
                              f"give a --workdir this run can create and write{hint}.")

  def _remove_created_folders(self) -> None:
    for folder in self._created:
      try:
        if any(folder.iterdir()):
          break                              # the run wrote into it: it stays
        folder.rmdir()
      except Exception:  # pylint: disable=broad-except  (tidying never fails a run)
        break
    self._created = []

  # -- the heartbeat

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        record = self._read()
        if record is None or record.get("token") != self._record["token"]:
          logger.error("%s no longer belongs to this run (%s); another run may be writing "
                       "to this workdir.", self.path,
                       "removed" if record is None else
                       f"host {record.get('host')}, pid {record.get('pid')} holds it")
          return
        self._record["heartbeat"] = time.time()
        files.write_atomically(self.path, json.dumps(self._record))
      except Exception as e:  # pylint: disable=broad-except  (try again next time)
        logger.warning("could not refresh %s (%s); trying again in %.0f s.", self.path,
                       files.reason(e), HEARTBEAT_S)


def _busy_sentence(workdir, record: dict) -> str:
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("started") or 0)))
  beat = max(0.0, time.time() - float(record.get("heartbeat") or 0))
  host, pid = record.get("host"), record.get("pid")
  # Only the heartbeat tells a run on another machine from a lost one.
  lost = ("" if host == socket.gethostname() else
          f"; if that machine is lost, the lock is taken over once its heartbeat is "
          f"{STALE_AFTER_S / 60:.0f} min old, or delete {workdir / LOCK_NAME} now")
  return (f"the workdir {workdir} is in use by another run (host {host}, pid {pid}, started "
          f"{started}, last heartbeat {beat:.0f} s ago); wait for it to end, stop it (kill "
          f"{pid} on {host}), or give another --workdir{lost}.")


def take(workdir: str, process_index: int, process_count: int) -> WorkdirLock:
  """The workdir's lock for this run: process 0 takes it; in a multi-process
  run every process learns whether it did, so all start or all refuse."""
  lock = WorkdirLock(workdir)
  error: BaseException | None = None
  if process_index == 0:
    try:
      lock.acquire()
    except (WorkdirBusy, files.StorageError) as e:
      error = e
  if process_count > 1:
    import numpy as np  # pylint: disable=import-outside-toplevel
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    taken = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not taken and error is None:
      error = WorkdirBusy(f"process 0 could not take the lock of {workdir}; its log says why.")
  if error is not None:
    raise error
  return lock
