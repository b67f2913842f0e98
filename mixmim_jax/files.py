"""Paths that may be local or remote (gs://): the two things that differ.

Everything else about files goes through etils.epath, which works the same for
both (and through TensorFlow's gfile on gs:// in production)."""
from __future__ import annotations

import os

from etils import epath


HOME_ENV = "MIXMIM_JAX_HOME"


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
  tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
  (tmp.write_text if isinstance(data, str) else tmp.write_bytes)(data)
  tmp.replace(target)
