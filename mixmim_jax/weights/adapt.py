"""Adapting weights to the model a fine-tuning run trains: every tensor whose
shape fits is kept, relative position bias tables are resized when a stage's
window changes (bicubic on the (2W-1) x (2W-1) grid, as torch's
F.interpolate(mode="bicubic", align_corners=False)), a head is kept only if it
has the target's class count, and the rest is left to fresh init (the
pretraining decoder is dropped). The absolute sin-cos table is computed from
the config, so a new image size needs nothing; the checkpoint's row/column
layout is carried over into the target config."""
from __future__ import annotations

import logging

import jax
import numpy as np
from flax import traverse_util

from mixmim_jax.model import init_schemes
from mixmim_jax.model.arch import ModelConfig
from mixmim_jax.weights.sources import read_checkpoint

logger = logging.getLogger(__name__)

# What must agree between a checkpoint and the model it initialises.
_SAME_ARCH = ("embed_dim", "depths", "num_heads", "patch_size", "in_chans", "mlp_ratio")


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
