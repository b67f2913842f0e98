"""The optimizer of every trainer: learning-rate schedule, weight-decay masks,
AdamW (or MAE's LARS), layer decay and the linear probe's frozen encoder."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from mixmim_jax.model.arch import ModelConfig
from mixmim_jax.training import layer_decay


def warmup_cosine(lr: float, total_steps: int, warmup_steps: int,
                  start_factor: float = 1e-4, end_lr: float = 0.0):
  """mmengine's LinearLR followed by CosineAnnealingLR, per iteration.

  LinearLR(begin=0, end=W) reaches the full lr at iteration W - 1 (mmengine counts
  end - begin - 1 iterations of change); the cosine then starts at iteration W at
  the full lr and would reach end_lr at `total_steps`."""
  decay_steps = max(total_steps - warmup_steps, 1)

  def schedule(step):
    # float32; float64 under jax_enable_x64, as mmengine's lr in Python floats.
    step = jnp.asarray(step, jax.dtypes.canonicalize_dtype(jnp.float64))
    warm = lr * (start_factor + (1.0 - start_factor) * step / max(warmup_steps - 1, 1))
    t = jnp.clip(step - warmup_steps, 0, decay_steps) / decay_steps
    cos = end_lr + (lr - end_lr) * 0.5 * (1.0 + jnp.cos(math.pi * t))
    return jnp.where(step < warmup_steps, warm, cos)

  return schedule


def group_schedules(scales, lr: float, total_steps: int, warmup_steps: int,
                    start_factor: float, end_lr: float, rule: str = "mmpretrain"):
  """A tree of per-leaf learning-rate schedules (step -> lr) for layer decay.

  Both references give each layer the peak lr x its scale, warmed up from
  start_factor x that. They differ where the cosine ends: mmengine anneals each
  param group to the absolute eta_min (`end_lr`), so a deep layer whose scaled
  peak lies below eta_min rises to it (base: the stem's 2.7e-7 -> 1e-6); the
  authors' lr_sched scales the whole schedule, its floor included."""
  if rule not in layer_decay.RULES:
    raise ValueError(f"layer-decay rule {rule!r}; expected one of {layer_decay.RULES}.")
  base = warmup_cosine(lr, total_steps, warmup_steps, start_factor, end_lr)

  def schedule(scale):
    if rule == "mmpretrain":
      return warmup_cosine(scale * lr, total_steps, warmup_steps, start_factor, end_lr)
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


# Which parameters each reference exempts from weight decay, by a parameter's
# role in the model. mmpretrain writes its rules on its parameter names:
# pretraining exempts names containing "ln" or "bias" (every bias, the blocks'
# ln1/ln2, the decoder's final norm `neck.ln1`, and the relative position bias
# tables), fine-tuning names containing ".ln" or ".bias" (every bias, the
# blocks' ln1/ln2). The authors' code (timm) exempts every 1-D tensor and the
# mask token. tests/test_optim.py checks each against the references' own
# optimizer groups.
MMPRETRAIN_EXEMPT = {
    "pretrain": frozenset({"bias", "block_norm", "decoder_norm", "relative_position_table"}),
    "finetune": frozenset({"bias", "block_norm"}),
}


def param_role(path: tuple[str, ...]) -> str:
  """What a parameter (its path in the params tree) is, for the decay rules."""
  leaf, parent = path[-1], (path[-2] if len(path) > 1 else "")
  if leaf == "bias":
    return "bias"
  if leaf == "mask_token":
    return "mask_token"
  if leaf == "relative_position_bias_table":
    return "relative_position_table"
  if parent in ("ln1", "ln2"):
    return "block_norm"
  if parent == "norm":
    return "decoder_norm" if path[0] == "decoder" else "norm"
  return "weight"


def weight_decay_mask(params, rule: str = "mmpretrain", finetune: bool = False):
  """True where weight decay applies, under `rule` ("mmpretrain" or "authors")."""
  if rule not in ("mmpretrain", "authors"):
    raise ValueError(f"wd_rule={rule!r}; expected 'mmpretrain' or 'authors'.")
  exempt = MMPRETRAIN_EXEMPT["finetune" if finetune else "pretrain"]

  def decide(path, leaf):
    role = param_role(tuple(getattr(p, "key", p) for p in path))
    if rule == "authors":
      return leaf.ndim > 1 and role != "mask_token"
    return role not in exempt

  return jax.tree_util.tree_map_with_path(decide, params)


def make_tx(plan, config, params_shapes):
  """(optax transformation, base learning-rate schedule) for `plan`'s trainer.

  `params_shapes` is the params tree (arrays or ShapeDtypeStructs) the
  transformation will see."""
  o, cfg = config.optim, plan.model
  schedule = warmup_cosine(plan.lr, plan.total_steps, plan.warmup_steps,
                           o.warmup_start_factor, o.end_lr)
  finetune = plan.trainer == "finetune"
  kind = "classifier" if finetune else "pretrain"
  # Masks as functions of the params they see: under the linear probe's
  # multi_transform the frozen encoder arrives as an empty node.
  decay_mask = lambda p: weight_decay_mask(p, o.wd_rule, finetune)  # noqa: E731
  matrices = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
  if o.name == "lars":   # MAE's LARS: no trust ratio and no decay on 1-D tensors
    inner = optax.lars(schedule, weight_decay=o.weight_decay, momentum=o.momentum,
                       trust_ratio_mask=matrices, weight_decay_mask=matrices)
  elif o.layer_decay == 1.0:
    inner = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                        mask=decay_mask)
  else:
    # optax.adamw with a learning-rate schedule per layer (torch's param groups).
    scales = layer_decay.lr_scales(params_shapes, cfg, o.layer_decay, o.layer_decay_rule)
    inner = optax.chain(
        optax.scale_by_adam(o.b1, o.b2, o.eps),
        optax.add_decayed_weights(o.weight_decay, decay_mask),
        scale_by_schedules(group_schedules(
            scales, plan.lr, plan.total_steps, plan.warmup_steps, o.warmup_start_factor,
            o.end_lr, o.layer_decay_rule)))
  chain = [optax.clip_by_global_norm(o.grad_clip_norm)] if o.grad_clip_norm > 0 else []
  tx = optax.chain(*chain, inner)
  if finetune and config.task == "linprobe":
    # Only the head learns; the frozen encoder has no optimizer state at all.
    labels = {k: ("train" if k == "head" else "freeze") for k in params_shapes}
    tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
  return tx, schedule
