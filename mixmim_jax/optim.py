"""Learning-rate schedule, weight-decay masks and the AdamW optimizer."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from mixmim_jax import torch_format
from mixmim_jax.arch import ModelConfig


def warmup_cosine(lr: float, total_steps: int, warmup_steps: int,
                  start_factor: float = 1e-4, end_lr: float = 0.0):
  """mmengine's LinearLR followed by CosineAnnealingLR, per iteration.

  LinearLR(begin=0, end=W) reaches the full lr at iteration W - 1 (mmengine counts
  end - begin - 1 iterations of change); the cosine then starts at iteration W at
  the full lr and would reach end_lr at `total_steps`."""
  decay_steps = max(total_steps - warmup_steps, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = lr * (start_factor + (1.0 - start_factor) * step / max(warmup_steps - 1, 1))
    t = jnp.clip(step - warmup_steps, 0, decay_steps) / decay_steps
    cos = end_lr + (lr - end_lr) * 0.5 * (1.0 + jnp.cos(math.pi * t))
    return jnp.where(step < warmup_steps, warm, cos)

  return schedule


def _torch_names(params, cfg: ModelConfig, kind: str):
  """{flax path: mmpretrain parameter name}: the references' rules are written
  on those names, so we apply them to the very same names."""
  return {path: key for key, path, _, _ in torch_format._entries(  # pylint: disable=protected-access
      cfg, torch_format.MMPRETRAIN, kind)}


def weight_decay_mask(params, cfg: ModelConfig, kind: str, rule: str = "mmpretrain",
                      finetune: bool = False):
  """True where weight decay applies.

  mmpretrain: exempt names containing 'ln' or 'bias' (pretraining) or '.ln' or
  '.bias' (fine-tuning). authors (timm): exempt every 1-D tensor and the mask token.
  """
  if rule not in ("mmpretrain", "authors"):
    raise ValueError(f"wd_rule={rule!r}; expected 'mmpretrain' or 'authors'.")
  names = _torch_names(params, cfg, kind)
  exempt = (".ln", ".bias") if finetune else ("ln", "bias")

  def decide(path, leaf):
    keys = tuple(getattr(p, "key", p) for p in path)
    if rule == "authors":
      return leaf.ndim > 1 and keys[-1] != "mask_token"
    name = names[keys]
    return not any(e in name for e in exempt)

  return jax.tree_util.tree_map_with_path(decide, params)


def make_optimizer(params, cfg: ModelConfig, kind: str, optim_config, schedule):
  chain = []
  if optim_config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(optim_config.grad_clip_norm))
  chain.append(optax.adamw(
      schedule, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
      weight_decay=optim_config.weight_decay,
      mask=weight_decay_mask(params, cfg, kind, optim_config.wd_rule)))
  return optax.chain(*chain)
