"""Layer-wise learning-rate decay for fine-tuning (MIXMIM.md, "Layer decay").

Every classifier parameter gets a layer id from its place in the Flax tree, and
its learning rate is scaled by rate ** (num_layers - 1 - id), num_layers =
sum(depths) + 2. The two references agree on the stem (id 0) and on block j of
stage s (sum(depths[:s]) + j + 1) and differ on the rest:

  rule          patch merging after stage s   final norm     head
  mmpretrain    sum(depths[:s+1])             num_layers-2   num_layers-1 (scale 1)
  authors       sum(depths[:s+1]) + 1         num_layers-2   num_layers-2 (scale rate)

The ids are read off the tree structure, not off PyTorch names, so the tests can
compare them against mmpretrain's name-based `get_layer_depth` independently.
"""
from __future__ import annotations

import jax

from mixmim_jax.model.arch import ModelConfig

RULES = ("mmpretrain", "authors")


def num_layers(cfg: ModelConfig) -> int:
  return sum(cfg.depths) + 2


def layer_id(path: tuple[str, ...], cfg: ModelConfig, rule: str = "mmpretrain") -> int:
  """The layer id of the classifier parameter at Flax `path` (keys as strings)."""
  if rule not in RULES:
    raise ValueError(f"layer-decay rule {rule!r}; expected one of {RULES}.")
  last = num_layers(cfg) - 1
  if path[0] == "head":
    return last if rule == "mmpretrain" else last - 1
  if path[0] != "encoder":
    raise ValueError(f"parameter {'/'.join(path)} is neither under 'encoder' nor 'head'.")
  part = path[1]
  if part == "patch_embed":
    return 0
  if part == "norm":
    return last - 1
  if part.startswith("layers_"):
    s = int(part[len("layers_"):])
    if path[2] == "downsample":
      return sum(cfg.depths[:s + 1]) + (1 if rule == "authors" else 0)
    j = int(path[2][len("blocks_"):])
    return sum(cfg.depths[:s]) + j + 1
  raise ValueError(f"no layer id for encoder parameter {'/'.join(path)}.")


def _keys(path) -> tuple[str, ...]:
  return tuple(str(getattr(p, "key", getattr(p, "name", p))) for p in path)


def layer_ids(params, cfg: ModelConfig, rule: str = "mmpretrain"):
  """A tree like `params` (arrays or ShapeDtypeStructs) holding each leaf's id."""
  return jax.tree_util.tree_map_with_path(lambda p, _: layer_id(_keys(p), cfg, rule), params)


def lr_scales(params, cfg: ModelConfig, decay_rate: float, rule: str = "mmpretrain"):
  """A tree of Python floats: decay_rate ** (num_layers - 1 - layer id)."""
  last = num_layers(cfg) - 1
  return jax.tree.map(lambda i: float(decay_rate ** (last - i)),
                      layer_ids(params, cfg, rule))
