"""PyTorch MixMIM checkpoints: reading them (mmpretrain's and the authors'
layouts, with the arch read off the tensors) and writing them.

torch is imported only here, and only when a .pth is read or written: the
model code and the params files never need it.
"""
from __future__ import annotations

import argparse
import io
import logging
from typing import Mapping

import numpy as np
from etils import epath

from mixmim_jax import files
from mixmim_jax.model.arch import ModelConfig
from mixmim_jax.weights import torch_format

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pth", ".pt")


def _torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise SystemExit("converting PyTorch checkpoints needs torch: "
                     "pip install torch==2.13.0 (see requirements-test.txt).") from e
  return torch


def param_shapes(cfg: ModelConfig, kind: str):
  """The params tree (of ShapeDtypeStructs) our model of `kind` expects."""
  from mixmim_jax.model import api  # pylint: disable=import-outside-toplevel
  return api.param_shapes(cfg, kind)


def decoder_heads(checkpoint, given: int | None = None) -> tuple[int, str]:
  """(decoder heads, how they were chosen): `given`, else what the checkpoint
  records (torch_format.recorded_decoder_heads), else the references' 16."""
  if given is not None:
    return given, "given with --decoder-heads"
  heads, where = torch_format.recorded_decoder_heads(checkpoint)
  if heads is not None:
    return heads, f"read from {where}"
  return (torch_format.DEFAULT_DECODER_HEADS,
          f"{torch_format.DEFAULT_DECODER_HEADS} assumed ({where}; the tensors do not show "
          "it): pass --decoder-heads=N if the model had N")


def import_state_dict(checkpoint, **overrides):
  """(config, kind, params, format) from a loaded torch checkpoint object (dict).
  Decoder heads come from `overrides`, else from what the checkpoint records."""
  fmt, sd = torch_format.unwrap(checkpoint)
  overrides.setdefault("decoder_heads", decoder_heads(checkpoint)[0])
  cfg, kind = torch_format.infer_config(sd, fmt, **overrides)
  model_kind = "classifier" if kind == torch_format.ENCODER else kind
  shapes = param_shapes(cfg, model_kind)
  params = torch_format.state_dict_to_flax(sd, fmt, cfg, kind, expected_shapes=shapes)
  return cfg, kind, params, fmt


def load_torch_checkpoint(path: str, trust: bool = False):
  """The checkpoint object with tensors as NumPy arrays.

  Read with torch's weights_only unpickler, which runs no code from the file.
  Checkpoints also carry other objects: the authors' training `args`
  (argparse.Namespace, read as is), mmengine's message hub and the like (read
  as inert stand-ins, since only the tensors and the config text are used).
  `trust` unpickles everything instead (only for files you trust)."""
  torch = _torch()
  source = epath.Path(path)
  if not source.is_file():
    raise SystemExit(f"checkpoint {path!r} does not exist.")
  data = io.BytesIO(source.read_bytes())
  if trust:
    return _tensors_to_numpy(torch.load(data, map_location="cpu", weights_only=False))
  try:
    extra = _stand_ins(torch.serialization.get_unsafe_globals_in_checkpoint(data))
  except Exception:  # pylint: disable=broad-except
    extra = []     # not a zip checkpoint: torch.load below says what it is
  try:
    data.seek(0)
    with torch.serialization.safe_globals(extra):
      obj = torch.load(data, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise SystemExit(f"{path!r} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else 'no detail'}).") from e
  return _tensors_to_numpy(obj)


class _StandIn:
  """Takes the place of a pickled object of a class we do not need: built from
  any arguments, keeps nothing."""

  def __new__(cls, *args, **kwargs):  # pylint: disable=unused-argument
    return object.__new__(cls)

  def __init__(self, *args, **kwargs):  # pylint: disable=unused-argument
    pass

  def __setstate__(self, state):  # pylint: disable=unused-argument
    pass


def _stand_ins(names: list[str]) -> list:
  """Safe globals for weights_only loading: argparse.Namespace itself (the
  authors' args, read for the decoder heads), an inert _StandIn for the rest."""
  out = []
  for name in names:
    if name == "argparse.Namespace":
      out.append(argparse.Namespace)
    else:
      out.append((type(name.rsplit(".", 1)[-1], (_StandIn,), {}), name))
  return out


def _tensors_to_numpy(obj):
  if hasattr(obj, "detach"):
    return obj.detach().cpu().float().numpy() if obj.is_floating_point() else obj.cpu().numpy()
  if isinstance(obj, dict):
    return {k: _tensors_to_numpy(v) for k, v in obj.items()}
  return obj


def export_state_dict(cfg: ModelConfig, kind: str, params, fmt: str, classes=None):
  """The checkpoint object of `fmt`'s layout; class names go where mmpretrain
  reads them (meta.dataset_meta.classes)."""
  sd = torch_format.flax_to_state_dict(params, cfg, kind, fmt)
  torch = _torch()
  # A copy: arrays fetched from devices are read-only, and torch warns on
  # (and must never write through) a tensor over one.
  tensors = {k: torch.from_numpy(np.array(v, order="C", copy=True)) for k, v in sd.items()}
  wrapper = "state_dict" if fmt == torch_format.MMPRETRAIN else "model"
  meta = {"converted_by": "mixmim_jax", "config": cfg.to_json()}
  if classes is not None:
    meta["dataset_meta"] = {"classes": [str(c) for c in classes]}
  return {wrapper: tensors, "meta": meta}


def recorded_classes(checkpoint) -> tuple[str, ...] | None:
  """Class names a PyTorch checkpoint records, where mmpretrain's get_model
  looks: meta.dataset_meta.classes (mmpretrain 1.x), else meta.CLASSES (mmcls 0.x)."""
  meta = checkpoint.get("meta") if isinstance(checkpoint, Mapping) else None
  if not isinstance(meta, Mapping):
    return None
  dataset_meta = meta.get("dataset_meta")
  classes = dataset_meta.get("classes") if isinstance(dataset_meta, Mapping) else None
  classes = classes if classes is not None else meta.get("CLASSES")
  return tuple(str(c) for c in classes) if classes is not None else None


def read(path: str):
  """(config, kind ("pretrain", "classifier" or "encoder"), params, the class
  names it records or None, format) of a .pth file."""
  checkpoint = load_torch_checkpoint(path)
  cfg, kind, params, fmt = import_state_dict(checkpoint)
  classes = recorded_classes(checkpoint) if kind == "classifier" else None
  if classes is not None and len(classes) != cfg.num_classes:
    logger.warning("%s records %d class names for a %d-class head; they are not used",
                   path, len(classes), cfg.num_classes)
    classes = None
  return cfg, kind, params, classes, fmt


def save(path: str, checkpoint) -> None:
  """Writes a checkpoint object (export_state_dict's) as torch.save does,
  atomically: an interrupted or failed write leaves nothing."""
  target = epath.Path(path)
  if not files.is_remote(path) and not target.parent.exists():
    raise FileNotFoundError(f"cannot write {path!r}: its directory does not exist.")
  buffer = io.BytesIO()
  _torch().save(checkpoint, buffer)
  files.write_atomically(path, buffer.getvalue())
