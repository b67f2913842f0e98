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

from typing import Any

import jax
import jax.numpy as jnp
import optax

from mixmim_jax import optim
from mixmim_jax.arch import ModelConfig

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


def group_schedules(scales, lr: float, total_steps: int, warmup_steps: int,
                    start_factor: float, end_lr: float, rule: str = "mmpretrain"):
  """A tree of per-leaf learning-rate schedules (step -> lr) for layer decay.

  Both references give each layer the peak lr x its scale, warmed up from
  start_factor x that. They differ where the cosine ends: mmengine anneals each
  param group to the absolute eta_min (`end_lr`), so a deep layer whose scaled
  peak lies below eta_min rises to it (base: the stem's 2.7e-7 -> 1e-6); the
  authors' lr_sched scales the whole schedule, its floor included."""
  if rule not in RULES:
    raise ValueError(f"layer-decay rule {rule!r}; expected one of {RULES}.")
  base = optim.warmup_cosine(lr, total_steps, warmup_steps, start_factor, end_lr)

  def schedule(scale):
    if rule == "mmpretrain":
      return optim.warmup_cosine(scale * lr, total_steps, warmup_steps, start_factor, end_lr)
    return lambda step: scale * base(step)

  return jax.tree.map(schedule, scales)


def scale_by_schedules(schedules) -> optax.GradientTransformation:
  """optax.scale_by_learning_rate with one schedule per leaf (a tree like the
  updates): each update is multiplied by -schedule(step)."""

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params
    out = jax.tree.map(lambda u, lr: -jnp.asarray(lr(state.count), u.dtype) * u, updates,
                       schedules)
    return out, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init, update)


def frozen_mask(params, trainable_prefixes: tuple[str, ...]) -> Any:
  """True for leaves whose top-level key is not in `trainable_prefixes`."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: _keys(p)[0] not in trainable_prefixes, params)
