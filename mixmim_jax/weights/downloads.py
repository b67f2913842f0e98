"""Fetching a published file into the local cache: atomic, checked, resumable
by simply running again.

A file is streamed into a temporary file beside its destination while its
sha256 is computed, and renamed into place only when it is complete and its
hash starts with the prefix the published name carries (`..._20221208-41ecada9.pth`:
mmpretrain names its files so, but never checks them). Whatever stops a
download on the way (a dropped connection, a full disk, a wrong hash, Ctrl-C)
removes the temporary file, so the cache holds complete, checked files or
nothing. A process killed outright (SIGKILL, os._exit) cannot clean up: its
temporary file is removed by the next download of that file (its name says
which host and process wrote it). Only the standard library is used (urllib),
so this module imports nothing heavy.

`MIXMIM_JAX_MIRROR` (a URL or a local directory) takes the place of a URL's
host and path, as mmpretrain's `url_mapping` does: `https://host/a/b/f.pth`
is read from `MIRROR/f.pth`.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import Callable

from etils import epath

MIRROR_ENV = "MIXMIM_JAX_MIRROR"
CHUNK = 1 << 20
TIMEOUT_S = 30.0      # per connection attempt and per read: a stalled server fails, not hangs
STALE_S = 3600.0      # a temporary file untouched this long belongs to no live download


class DownloadError(FileNotFoundError):
  """The file could not be fetched (no network, no such file, a dropped
  connection, a full disk): a FileNotFoundError, so every command reports it
  as one sentence."""


class ChecksumMismatch(ValueError):
  """The bytes are not the published file."""


def file_name(url: str) -> str:
  return url.rstrip("/").rsplit("/", 1)[-1]


def source_for(url: str, mirror: str | None = None) -> str:
  """Where `url` is read from: `mirror` (else $MIXMIM_JAX_MIRROR) in place of
  its host and path, as a URL or a local directory; else `url` itself."""
  mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV, "")
  if not mirror:
    return url
  if "://" in mirror:
    return f"{mirror.rstrip('/')}/{file_name(url)}"
  return (epath.Path(mirror).expanduser().absolute() / file_name(url)).as_uri()


def sha256_of(path) -> str:
  digest = hashlib.sha256()
  with epath.Path(path).open("rb") as f:
    while block := f.read(CHUNK):
      digest.update(block)
  return digest.hexdigest()


class ProgressBar:
  """`done / total` bytes on stderr: redrawn in place on a terminal (at most
  10 times a second), a start and an end line otherwise (logs stay short)."""

  def __init__(self, name: str, stream=None):
    self.name, self.stream = name, stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.last = 0.0
    self.start = time.monotonic()

  def __call__(self, done: int, total: int | None) -> None:
    now = time.monotonic()
    finished = total is not None and done >= total
    if self.tty and (finished or now - self.last >= 0.1):
      self.last = now
      pct = f"{100 * done / total:3.0f}% " if total else ""
      rate = done / max(now - self.start, 1e-6) / 2**20
      size = f"/{total / 2**20:.1f}" if total else ""
      self.stream.write(f"\r{self.name}: {pct}{done / 2**20:.1f}{size} MiB, {rate:.1f} MiB/s")
      self.stream.write("\n" if finished else "")
      self.stream.flush()
    elif not self.tty and finished:
      print(f"{self.name}: {done / 2**20:.1f} MiB in {now - self.start:.1f} s",
            file=self.stream, flush=True)


def fetch(url: str, dest, sha256_prefix: str, *, mirror: str | None = None,
          progress: bool | Callable[[int, int | None], None] = True,
          timeout: float = TIMEOUT_S) -> epath.Path:
  """Downloads `url` (or its mirror copy) to `dest` if its sha256 starts with
  `sha256_prefix`; else raises, leaving nothing behind. `progress`: True (a
  bar on stderr), False, or a callable(bytes_done, bytes_total_or_None)."""
  dest = epath.Path(dest)
  src, name = source_for(url, mirror), dest.name
  dest.parent.mkdir(parents=True, exist_ok=True)
  _remove_abandoned(dest)
  tmp = dest.parent / f".{name}.part-{socket.gethostname()}-{os.getpid()}"
  report = progress if callable(progress) else (ProgressBar(name) if progress else None)
  if progress is True:
    print(f"downloading {name} from {src} into {dest.parent}", file=sys.stderr, flush=True)
  done, total = 0, None
  try:
    try:
      with urllib.request.urlopen(src, timeout=timeout) as response, tmp.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        digest = hashlib.sha256()
        # read1: what has arrived (up to CHUNK), so the bar moves with the bytes.
        read = getattr(response, "read1", response.read)
        while block := read(CHUNK):
          out.write(block)
          digest.update(block)
          done += len(block)
          if report:
            report(done, total)
      if report and total is None:
        report(done, done)            # no Content-Length: the end is where the bytes end
      if total is not None and done != total:
        raise DownloadError(_stopped(name, src, dest, done, total, "the connection closed"))
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
      if isinstance(e, DownloadError):
        raise
      reason = getattr(e, "reason", None) or e
      if done:
        raise DownloadError(_stopped(name, src, dest, done, total, reason)) from e
      raise DownloadError(unavailable(url, src, dest, reason)) from e
    got = digest.hexdigest()
    if not got.startswith(sha256_prefix.lower()):
      raise ChecksumMismatch(
          f"{name} from {src} has sha256 {got[:16]}..., not {sha256_prefix}... as its "
          "name says, so it is not the published file: it was deleted and nothing was cached.")
    tmp.replace(dest)
  finally:
    tmp.unlink(missing_ok=True)      # after the rename there is nothing to remove
  return dest


def _remove_abandoned(dest: epath.Path) -> None:
  """Temporary files of `dest` left by killed downloads: those of a process of
  this host that is gone, and any not written for STALE_S."""
  host = socket.gethostname()
  for tmp in dest.parent.glob(f".{dest.name}.part-*"):
    writer, _, pid = tmp.name.rsplit(".part-", 1)[1].rpartition("-")
    try:
      gone = writer == host and pid.isdigit() and not _alive(int(pid))
      if gone or time.time() - tmp.stat().mtime > STALE_S:
        tmp.unlink(missing_ok=True)
    except OSError:
      pass             # removed meanwhile, or not ours to remove


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def unavailable(url: str, src: str, dest, reason) -> str:
  """The one sentence for a machine that cannot reach the file."""
  dest = epath.Path(dest)
  seen = f"{src} (published at {url})" if src != url else url
  return (f"cannot download {dest.name} from {seen}: {reason}; put that file into "
          f"{dest.parent}/ (or set {MIRROR_ENV} to a directory or URL that holds it, "
          "or pass pretrained=PATH, --checkpoint PATH on a command line, to use a copy "
          "elsewhere).")


def _stopped(name, src, dest, done, total, reason) -> str:
  size = f" of {total:,}" if total else ""
  return (f"the download of {name} from {src} stopped after {done:,}{size} bytes ({reason}); "
          f"nothing was kept: run again, or put the file into {epath.Path(dest).parent}/.")
