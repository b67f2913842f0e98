"""One plan for every trainer: the config checked against the data and the
devices, and every number derived from it (epochs -> steps, learning rate,
per-device batches, mask groups), computed in one place. Each problem is one
sentence naming the value and what was expected."""
from __future__ import annotations

import dataclasses

from mixmim_jax.model.arch import ModelConfig, model_config
from mixmim_jax.training import recipes, sharding


# The recipe's mask group: mmpretrain and the authors draw one mask per GPU batch
# of 128 images (16 GPUs x 128 for MixMIM-B).
RECIPE_GROUP_SIZE = 128


def default_group_size(micro_batch: int) -> int:
  """group_size=-1: the recipe's 128 images per mask wherever the per-device
  micro-batch holds whole groups of 128; otherwise the whole per-device batch
  (a group never spans two devices, so its pairs and mask need no communication)."""
  return RECIPE_GROUP_SIZE if micro_batch % RECIPE_GROUP_SIZE == 0 else micro_batch


def grouping_line(plan: "Plan") -> str:
  """One line on the mask groups of a pretraining plan, and how they differ
  from the reference's."""
  per = "micro-batch" if plan.micro_batch < plan.per_device_batch else "step"
  masks = f"{plan.num_groups} mask" + ("s" if plan.num_groups != 1 else "")
  shards = f"{plan.batch_devices} batch shard" + ("s" if plan.batch_devices != 1 else "")
  line = f"mask groups: {plan.group_size} images per mask, {masks} per {per} ({shards})"
  if plan.group_size == RECIPE_GROUP_SIZE:
    return line + f"; as the reference, one mask per {RECIPE_GROUP_SIZE} images"
  why = (f"the per-device batch {plan.micro_batch} is not a multiple of {RECIPE_GROUP_SIZE}"
         if plan.micro_batch % RECIPE_GROUP_SIZE else "as config.group_size asks")
  return line + (f"; the reference draws one mask per {RECIPE_GROUP_SIZE} images: "
                 f"{RECIPE_GROUP_SIZE / plan.group_size:.3g}x as many masks here ({why})")


def build_model_config(config) -> ModelConfig:
  """The ModelConfig of a config: its arch, the non-None `model` fields, the
  data's image size and (fine-tuning) the class count."""
  overrides = {k: v for k, v in config.model.items() if v is not None}
  for key in ("depths", "num_heads", "window_sizes"):
    if key in overrides:
      overrides[key] = tuple(overrides[key])
  return model_config(config.arch, img_size=config.data.image_size,
                      num_classes=config.get("num_classes", 0), **overrides)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Numbers derived from the config, the dataset size and the device count."""
  trainer: str                    # "pretrain" or "finetune"
  model: ModelConfig
  steps_per_epoch: int
  total_steps: int
  warmup_steps: int
  lr: float
  num_devices: int
  batch_devices: int              # devices that hold distinct batch shards (data x fsdp)
  per_device_batch: int           # per optimizer step
  micro_batch: int                # per device, per micro-step
  group_size: int = 0             # pretraining: images per mask
  num_groups: int = 0             # pretraining: mask groups in one micro-batch, whole mesh


def _check_optimizer(config) -> None:
  o = config.optim
  names = ("adamw", "lars") if config.trainer == "finetune" else ("adamw",)
  if o.name not in names:
    raise ValueError(f"optim.name={o.name!r}; expected one of {names} for {config.trainer}.")
  if config.trainer == "pretrain" and o.layer_decay != 1.0:
    raise ValueError(f"optim.layer_decay={o.layer_decay}: pretraining has no layer decay; "
                     "set it to 1.0.")
  if config.get("task") == "linprobe" and o.layer_decay != 1.0:
    raise ValueError(f"optim.layer_decay={o.layer_decay} with task='linprobe': "
                     "only the head is trained, so set it to 1.0.")


def _check_ranges(config) -> None:
  """Values that a run would accept and then misuse: say so before it starts."""
  def need(ok: bool, key: str, expected: str):
    if not ok:
      raise ValueError(f"{key}={_get(config, key)!r}; expected {expected}.")
  need(config.batch_size >= 1, "batch_size", "a positive number of images per step")
  need(config.num_train_steps > 0 or config.num_epochs > 0, "num_epochs",
       "a positive number of epochs (or num_train_steps > 0)")
  need(config.warmup_epochs >= 0, "warmup_epochs", "0 or more")
  need(config.optim.base_lr > 0, "optim.base_lr", "a positive learning rate")
  need(config.optim.weight_decay >= 0, "optim.weight_decay", "0 or more")
  for key in ("checkpoint_every_steps", "checkpoint_keep", "log_every_steps"):
    need(config[key] >= 1, key, "1 or more")
  need(config.optim.grad_clip_norm >= 0, "optim.grad_clip_norm", "0 (no clipping) or more")
  for key in ("optim.b1", "optim.b2"):
    need(0 <= _get(config, key) < 1, key, "a decay rate in [0, 1)")
  need(config.optim.eps > 0, "optim.eps", "a positive number")
  need(config.optim.end_lr >= 0, "optim.end_lr", "0 or more")
  need(0 < config.optim.layer_decay <= 1, "optim.layer_decay", "a factor in (0, 1]")
  if config.trainer == "pretrain":
    need(config.image_every_steps >= 0, "image_every_steps", "0 (never) or more")
    need(config.num_image_pairs >= 1, "num_image_pairs", "1 or more")
  else:
    need(config.num_classes >= 1, "num_classes", "1 or more")
    need(config.eval_batch_size >= 1, "eval_batch_size", "a positive number of images")
    need(config.eval_every_steps >= 0, "eval_every_steps", "0 (at the end only) or more")
    need(0 <= config.label_smoothing < 1, "label_smoothing", "a fraction in [0, 1)")
    need(config.mixup_alpha >= 0, "mixup_alpha", "0 (off) or more")
    need(config.cutmix_alpha >= 0, "cutmix_alpha", "0 (off) or more")
    need(0 < config.data.label_fraction <= 1, "data.label_fraction", "a fraction in (0, 1]")
    need(config.init_step >= -1, "init_step", "a checkpoint step, or -1 for the latest")
  if config.trainer == "pretrain":
    need(0 <= config.mask_ratio <= 1, "mask_ratio", "a fraction of the cells in [0, 1]")
    need(config.range_mask_ratio >= 0 and config.mask_ratio + config.range_mask_ratio <= 1,
         "range_mask_ratio", "0 or more, with mask_ratio + range_mask_ratio <= 1")


def _get(config, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config


def make_plan(config, num_examples: int, num_devices: int) -> Plan:
  """Validates the config against the data and devices; one clear error per problem."""
  if config.trainer not in recipes.TRAINERS:
    raise ValueError(f"trainer={config.trainer!r}; expected one of {recipes.TRAINERS}.")
  if config.trainer == "finetune" and config.task not in recipes.TASKS:
    raise ValueError(f"task={config.task!r}; expected one of {recipes.TASKS}.")
  _check_ranges(config)
  _check_optimizer(config)
  model = build_model_config(config)
  sizes = sharding.mesh_shape(config.mesh, num_devices)
  batch_devices = sizes["data"] * sizes["fsdp"]
  b = config.batch_size
  accum = config.get("grad_accum_steps", 1)
  if accum < 1:
    raise ValueError(f"grad_accum_steps={accum}; expected >= 1.")
  if b % (batch_devices * accum):
    extra = f" x grad_accum_steps {accum}" if accum > 1 else ""
    raise ValueError(f"batch_size={b} is not divisible by the data-parallel size "
                     f"{batch_devices} (mesh data x fsdp){extra}.")
  if config.trainer == "finetune" and config.eval_batch_size % batch_devices:
    raise ValueError(f"eval_batch_size={config.eval_batch_size} is not divisible by the "
                     f"data-parallel size {batch_devices} (mesh data x fsdp).")
  per_device = b // batch_devices
  micro = per_device // accum
  group = num_groups = 0
  if config.trainer == "pretrain":
    group = default_group_size(micro) if config.group_size == -1 else config.group_size
    if micro % 2:
      raise ValueError(f"per-device micro-batch {micro} (batch_size {b} / {batch_devices} "
                       f"devices / {accum} accumulation steps) is odd; MixMIM pairs images "
                       "on each device, so it must be even.")
    if group < 2 or group % 2 or micro % group:
      raise ValueError(f"group_size={group} must be even and divide the per-device "
                       f"micro-batch {micro}, so that mask groups never span two devices.")
    num_groups = batch_devices * micro // group
  steps_per_epoch = num_examples // b
  if steps_per_epoch < 1:
    raise ValueError(f"the dataset has {num_examples} examples, fewer than one batch of {b}.")
  total = (config.num_train_steps if config.num_train_steps > 0
           else int(round(config.num_epochs * steps_per_epoch)))
  if total < 1:
    raise ValueError(f"num_epochs={config.num_epochs} of {steps_per_epoch} steps each makes "
                     "no step; expected at least one (or set num_train_steps).")
  warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total)
  return Plan(trainer=config.trainer, model=model, steps_per_epoch=steps_per_epoch,
              total_steps=total, warmup_steps=warmup, lr=config.optim.base_lr * b / 256,
              num_devices=num_devices, batch_devices=batch_devices, per_device_batch=per_device,
              micro_batch=micro, group_size=group, num_groups=num_groups)
