"""Our one-file params format: msgpack holding the arch config, the model kind,
the parameter tree and, when known, the head's class names. Every path goes
through etils.epath, so gs:// works wherever a local path does."""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import numpy as np
from etils import epath
from flax import serialization

from mixmim_jax import files
from mixmim_jax.model.arch import ModelConfig
from mixmim_jax.weights import torch_io

FORMAT_VERSION = 1
KINDS = ("pretrain", "classifier", "encoder")


class ParamsFile(NamedTuple):
  config: ModelConfig
  kind: str            # "pretrain" (encoder + decoder), "classifier" or "encoder"
  params: dict
  classes: tuple[str, ...] | None = None   # the head's class names, when recorded


def save_params(path: str, config: ModelConfig, kind: str, params: Mapping[str, Any],
                classes=None) -> None:
  """Writes atomically (temp file + rename) so an interrupted save never leaves a
  truncated file where a good one was. `classes` (names of the head's classes)
  is an optional entry: files without it read as before, and older readers
  ignore it, so the format version stays 1."""
  if kind not in KINDS:
    raise ValueError(f"kind {kind!r} is not one of {KINDS}.")
  if str(path).endswith(torch_io.TORCH_SUFFIXES):
    raise ValueError(f"{path!r} names a PyTorch checkpoint, but a params file is msgpack; "
                     "name it .msgpack, or write PyTorch with weights.outputs.write.")
  host = jax.tree.map(np.asarray, dict(params))
  entries = {"format_version": FORMAT_VERSION, "config": config.to_json(), "kind": kind,
             "params": host}
  if classes is not None:
    if len(classes) != config.num_classes:
      raise ValueError(f"{len(classes)} class names for a {config.num_classes}-class head.")
    entries["classes"] = [str(c) for c in classes]
  blob = serialization.msgpack_serialize(entries)
  parent = epath.Path(path).parent
  if not files.is_remote(path) and not parent.exists():
    raise FileNotFoundError(f"cannot write {path!r}: its directory {str(parent)!r} "
                            "does not exist.")
  files.write_atomically(path, blob)


def load_params(path: str) -> ParamsFile:
  source = epath.Path(path)
  if not source.exists():
    raise FileNotFoundError(f"params file {path!r} does not exist.")
  if source.is_dir():
    raise IsADirectoryError(f"{path!r} is a directory, not a params file (.msgpack).")
  try:
    blob = serialization.msgpack_restore(source.read_bytes())
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path!r} is not a mixmim_jax params file (msgpack): {e}") from e
  if not isinstance(blob, dict) or "config" not in blob or "params" not in blob:
    raise ValueError(f"{path!r} is msgpack but not a mixmim_jax params file "
                     "(no 'config'/'params' entries).")
  classes = blob.get("classes")      # absent in files without names (and older files)
  return ParamsFile(ModelConfig.from_json(blob["config"]), blob["kind"], blob["params"],
                    tuple(classes) if classes else None)


def read_file(path: str) -> tuple[ParamsFile, str]:
  """(ParamsFile, description) of a params file, or of a PyTorch checkpoint
  (.pth / .pt) converted on the fly."""
  if str(path).endswith(torch_io.TORCH_SUFFIXES):
    cfg, kind, params, classes, fmt = torch_io.read(path)
    return ParamsFile(cfg, kind, params, classes), f"{fmt} PyTorch checkpoint {path}"
  return load_params(path), f"params file {path}"
