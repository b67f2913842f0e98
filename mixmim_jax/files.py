"""Paths that may be local or remote (gs://): what differs between the two,
atomic writes, and the one error for storage that fails (StorageError).

Everything else about files goes through etils.epath, which works the same for
both (and through TensorFlow's gfile on gs:// in production)."""
from __future__ import annotations

import os
import re
import time

from etils import epath


HOME_ENV = "MIXMIM_JAX_HOME"


class StorageError(OSError):
  """A path that cannot be read or written (read-only, full, a file where a
  directory should be, no credentials or network for gs://), said in one
  sentence that names the path and what to do."""


def reason(error: BaseException) -> str:
  """The gist of a storage layer's error, short enough for one sentence: the
  OS's words where it gives an errno (also inside tensorstore's messages),
  else the error's first line."""
  errno = getattr(error, "errno", None)
  if isinstance(errno, int) and getattr(error, "strerror", None):
    return error.strerror
  found = re.search(r"\[os_error_code='(\d+)'\]", str(error))
  if found:
    return os.strerror(int(found.group(1)))
  first = (str(error).strip().splitlines() or [""])[0]
  return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__


def user_cache() -> epath.Path:
  """This user's cache of downloads and compiled programs: $MIXMIM_JAX_HOME,
  default ~/.cache/mixmim_jax."""
  return epath.Path(os.environ.get(HOME_ENV) or "~/.cache/mixmim_jax").expanduser()


def is_remote(path) -> bool:
  return "://" in str(path)


def absolute(path: str) -> str:
  """Local paths made absolute (orbax refuses relative ones); URIs as they are."""
  return str(path) if is_remote(path) else str(epath.Path(path).absolute())


def write_atomically(path, data: bytes | str) -> None:
  """Writes `path` so that a reader never sees it half written: locally through
  a temporary file renamed over it; an object store publishes an object only
  once its upload completes, so there it is written directly."""
  target = epath.Path(path)
  write = target.write_text if isinstance(data, str) else target.write_bytes
  if is_remote(path):
    write(data)
    return
  if target.is_dir():
    raise IsADirectoryError(f"cannot write {str(target)!r}: it is a directory; name a file.")
  tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
  try:
    (tmp.write_text if isinstance(data, str) else tmp.write_bytes)(data)
    tmp.replace(target)
  except BaseException as e:
    # A full disk, a signal, a rename refused: the half-written temporary file
    # must not stay behind (on a full disk it would keep the disk full).
    try:
      tmp.unlink(missing_ok=True)
    except OSError:
      pass                       # the write's own error is the one to report
    if isinstance(e, OSError) and not isinstance(e, (StorageError, FileNotFoundError)):
      raise StorageError(f"cannot write {str(target)!r}: {reason(e)}; nothing was written "
                         "(free space, or write it elsewhere).") from e
    raise


def create_exclusively(path, text: str, settle_s: float = 2.0) -> bool:
  """Writes `text` to `path` unless it exists; True when this call created it.

  Locally this is exact: O_EXCL lets one of two racing creators win (a reader
  may briefly see the file empty). An object store offers no exclusive create
  through epath: there the object is written when absent and read back after
  `settle_s`, and the creator whose text is there wins."""
  target = epath.Path(path)
  if not is_remote(path):
    try:
      fd = os.open(str(target), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    try:
      os.write(fd, text.encode())
    finally:
      os.close(fd)
    return True
  if target.exists():
    return False
  target.write_text(text)
  time.sleep(settle_s)                 # a writer racing with this one shows by now
  try:
    return target.read_text() == text
  except FileNotFoundError:
    return False
