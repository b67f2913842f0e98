"""Weights in and out, in one place: our one-file params format (msgpack holding
the arch config, the model kind, the parameter tree and, when known, the class
names), reading weights from any source (a trainer's workdir, a params file, a
PyTorch checkpoint, a published model's name), and adapting them to a target
model for fine-tuning.

Every path goes through etils.epath, so gs:// works wherever a local path does.

Adapting keeps every tensor whose shape fits, resizes relative position bias
tables when a stage's window changes (bicubic on the (2W-1) x (2W-1) grid, as
torch's F.interpolate(mode="bicubic", align_corners=False)), keeps a head only
if it has the target's class count, and leaves the rest to fresh init (the
pretraining decoder is dropped). The absolute sin-cos table is computed from
the config, so a new image size needs nothing; the checkpoint's row/column
layout is carried over into the target config.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np
from etils import epath
from flax import serialization, traverse_util

from mixmim_jax import checkpointing, files, hub, init_schemes
from mixmim_jax.arch import ModelConfig
from mixmim_jax.linear_probe import fold_probe

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
KINDS = ("pretrain", "classifier", "encoder")
TORCH_SUFFIXES = (".pth", ".pt")
# What must agree between a checkpoint and the model it initialises.
_SAME_ARCH = ("embed_dim", "depths", "num_heads", "patch_size", "in_chans", "mlp_ratio")


class ParamsFile(NamedTuple):
  config: ModelConfig
  kind: str            # "pretrain" (encoder + decoder), "classifier" or "encoder"
  params: dict
  classes: tuple[str, ...] | None = None   # the head's class names, when recorded


# ------------------------------------------------------------ our params files

def save_params(path: str, config: ModelConfig, kind: str, params: Mapping[str, Any],
                classes=None) -> None:
  """Writes atomically (temp file + rename) so an interrupted save never leaves a
  truncated file where a good one was. `classes` (names of the head's classes)
  is an optional entry: files without it read as before, and older readers
  ignore it, so the format version stays 1."""
  if kind not in KINDS:
    raise ValueError(f"kind {kind!r} is not one of {KINDS}.")
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


# ------------------------------------------------------------ any source

def _from_workdir(path: str, step: int):
  """A pretraining workdir (kind "pretrain") or a fine-tune workdir (kind
  "classifier"; a linear probe comes back with its normalization folded in)."""
  state, meta, where = checkpointing.read(checkpointing.directory_of(path), step)
  cfg = ModelConfig.from_dict(meta["model_config"])
  params, task = state["params"], meta.get("task", "pretrain")
  if task == "linprobe":
    params = jax.tree.map(np.asarray, fold_probe(params, state["batch_stats"]))
  kind = "pretrain" if task == "pretrain" else "classifier"
  return cfg, kind, params, f"{task} checkpoint {where}"


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


def read(path: str, step: int = -1) -> tuple[ParamsFile, str]:
  """(ParamsFile, description) from a published model's name (hub.get_model),
  a trainer's workdir (its latest checkpoint, or `step`), a PyTorch checkpoint
  (.pth/.pt, with the class names it records) or a params file."""
  entry = hub.entry_for(path)
  if entry is not None:
    return hub.get_model(entry.name), f"published model {entry.name}"
  if epath.Path(path).is_dir():
    cfg, kind, params, where = _from_workdir(path, step)
    return ParamsFile(cfg, kind, params), where
  if path.endswith(TORCH_SUFFIXES):
    from mixmim_jax import convert  # pylint: disable=import-outside-toplevel
    checkpoint = convert.load_torch_checkpoint(path)
    cfg, kind, params, fmt = convert.import_state_dict(checkpoint)
    classes = recorded_classes(checkpoint) if kind == "classifier" else None
    if classes is not None and len(classes) != cfg.num_classes:
      logger.warning("%s records %d class names for a %d-class head; they are not used",
                     path, len(classes), cfg.num_classes)
      classes = None
    return ParamsFile(cfg, kind, params, classes), f"{fmt} PyTorch checkpoint {path}"
  return load_params(path), f"params file {path}"


def read_checkpoint(path: str, step: int = -1):
  """(config, kind, params, description) of `read`."""
  loaded, where = read(path, step)
  return loaded.config, loaded.kind, loaded.params, where


# ------------------------------------------------------------ adapting

def _cubic(x, a=-0.75):
  x = np.abs(x)
  return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                  np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of torch's 1-D bicubic resize (a = -0.75,
  align_corners=False, edge indices clamped)."""
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  x0 = np.floor(src).astype(int)
  t = src - x0
  m = np.zeros((n_out, n_in))
  for k in range(-1, 3):
    idx = np.clip(x0 + k, 0, n_in - 1)
    np.add.at(m, (np.arange(n_out), idx), _cubic(t - k))
  return m


def resize_relative_bias_table(table: np.ndarray, window: int) -> np.ndarray:
  """((2W0-1)^2, heads) -> ((2W-1)^2, heads), bicubic on the 2-D offset grid."""
  side_in = int(round(np.sqrt(table.shape[0])))
  side_out = 2 * window - 1
  if side_in == side_out:
    return np.asarray(table)
  grid = np.asarray(table, np.float64).reshape(side_in, side_in, -1)
  m = bicubic_matrix(side_in, side_out)
  out = np.einsum("ri,ijh,cj->rch", m, grid, m)
  return out.reshape(side_out * side_out, -1).astype(np.float32)


def adapt(src_cfg: ModelConfig, src_params, dst_cfg: ModelConfig, fresh_params):
  """(params, report): `fresh_params` (a full target tree) overwritten with every
  source tensor that fits. report = dict(loaded, resized, fresh) lists of paths."""
  for name in _SAME_ARCH:
    if getattr(src_cfg, name) != getattr(dst_cfg, name):
      raise ValueError(f"the checkpoint's {name}={getattr(src_cfg, name)} differs from the "
                       f"config's {getattr(dst_cfg, name)}; they must be the same arch.")
  src = traverse_util.flatten_dict(src_params)
  out, report = {}, dict(loaded=[], resized=[], fresh=[])
  for path, fresh in traverse_util.flatten_dict(fresh_params).items():
    have = src.get(path)
    name = "/".join(path)
    if have is not None and path[-1] == "relative_position_bias_table" and \
        np.shape(have) != np.shape(fresh):
      s = int(path[1][len("layers_"):])
      out[path] = resize_relative_bias_table(np.asarray(have), dst_cfg.effective_windows[s])
      report["resized"].append(name)
    elif have is not None and np.shape(have) == np.shape(fresh):
      out[path] = np.asarray(have, np.float32)
      report["loaded"].append(name)
    else:
      out[path] = fresh
      report["fresh"].append(name)
  return traverse_util.unflatten_dict(out), report


def initial_params(init_from: str, init_step: int, dst_cfg: ModelConfig, fresh_params,
                   seed: int = 0):
  """(params, model config) a fine-tuning run starts from: `fresh_params` when
  `init_from` is empty, else the source adapted to `dst_cfg`. Logs what was
  loaded and what is fresh."""
  if not init_from:
    logger.info("init: from scratch (%d tensors freshly initialised)",
                len(jax.tree.leaves(fresh_params)))
    return fresh_params, dst_cfg
  src_cfg, kind, params, where = read_checkpoint(init_from, init_step)
  if kind == "pretrain":
    params = {"encoder": params["encoder"]}          # the decoder is not needed
  dst_cfg = dst_cfg.replace(pos_embed=src_cfg.pos_embed)
  tree, report = adapt(src_cfg, params, dst_cfg, fresh_params)
  head_std = init_schemes.HEAD_STD_AFTER_LOAD.get(dst_cfg.init)
  if head_std and "head/kernel" in report["fresh"]:
    # The authors' fine-tuning redraws the head of a loaded model.
    shape = np.shape(tree["head"]["kernel"])
    tree["head"]["kernel"] = (head_std * np.random.default_rng(seed).standard_normal(shape)
                              ).astype(np.float32)
    logger.info("init: head weight drawn from N(0, %g), as the %s fine-tuning does",
                head_std, dst_cfg.init)
  logger.info("init: %d tensors loaded from the %s", len(report["loaded"]), where)
  if report["resized"]:
    logger.info("init: relative position bias tables resized for windows %s (were %s): %s",
                dst_cfg.effective_windows, src_cfg.effective_windows, report["resized"])
  logger.info("init: freshly initialised: %s", report["fresh"] or "nothing")
  if src_cfg.pos_embed != "row_col":
    logger.info("init: the checkpoint's position table layout %r is kept", src_cfg.pos_embed)
  return tree, dst_cfg
