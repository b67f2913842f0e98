"""Every place a model's weights can come from, read the same way: a published
model's name (the registry downloads it once), a trainer's workdir (its latest
checkpoint, or a given step), a PyTorch checkpoint or a params file."""
from __future__ import annotations

import jax
import numpy as np
from etils import epath

from mixmim_jax.model.arch import ModelConfig
from mixmim_jax.model.linear_probe import fold_probe
from mixmim_jax.training import checkpointing
from mixmim_jax.weights import hub
from mixmim_jax.weights.params_file import ParamsFile, read_file


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
  return read_file(path)


def read_checkpoint(path: str, step: int = -1):
  """(config, kind, params, description) of `read`."""
  loaded, where = read(path, step)
  return loaded.config, loaded.kind, loaded.params, where
