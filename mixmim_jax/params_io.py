"""One-file Flax params: msgpack holding the arch config, the model kind and the
parameter tree, so a file always says which model it fits."""
from __future__ import annotations

import os
from typing import Any, Mapping, NamedTuple

import numpy as np
from flax import serialization

from mixmim_jax.arch import ModelConfig

FORMAT_VERSION = 1
KINDS = ("pretrain", "classifier", "encoder")


class ParamsFile(NamedTuple):
  config: ModelConfig
  kind: str            # "pretrain" (encoder + decoder), "classifier" or "encoder"
  params: dict


def save_params(path: str, config: ModelConfig, kind: str, params: Mapping[str, Any]) -> None:
  """Writes atomically (temp file + rename) so an interrupted save never leaves a
  truncated file where a good one was."""
  if kind not in KINDS:
    raise ValueError(f"kind {kind!r} is not one of {KINDS}.")
  host = _to_numpy(params)
  blob = serialization.msgpack_serialize({
      "format_version": FORMAT_VERSION, "config": config.to_json(), "kind": kind,
      "params": host})
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(blob)
  os.replace(tmp, path)


def load_params(path: str) -> ParamsFile:
  if not os.path.exists(path):
    raise FileNotFoundError(f"params file {path!r} does not exist.")
  with open(path, "rb") as f:
    try:
      blob = serialization.msgpack_restore(f.read())
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{path!r} is not a mixmim_jax params file (msgpack): {e}") from e
  if not isinstance(blob, dict) or "config" not in blob or "params" not in blob:
    raise ValueError(f"{path!r} is msgpack but not a mixmim_jax params file "
                     "(no 'config'/'params' entries).")
  return ParamsFile(ModelConfig.from_json(blob["config"]), blob["kind"], blob["params"])


def _to_numpy(tree):
  if isinstance(tree, Mapping):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)
