"""The pretraining config: defaults, validation, and every derived quantity
(epochs -> steps, learning rate, groups) computed in one place."""
from __future__ import annotations

import dataclasses

import ml_collections

from mixmim_jax import data
from mixmim_jax.arch import ModelConfig, model_config

MESH_AXES = ("data", "fsdp", "model")


def model_fields(**extra) -> ml_collections.ConfigDict:
  """The encoder's ModelConfig fields as config keys (None = the arch's value),
  shared by the pretraining and fine-tuning configs, plus `extra` fields."""
  return ml_collections.ConfigDict(dict(
      embed_dim=ml_collections.FieldReference(None, field_type=int),
      depths=ml_collections.FieldReference(None, field_type=tuple),
      num_heads=ml_collections.FieldReference(None, field_type=tuple),
      window_sizes=(14, 14, 14, 7), patch_size=4, mlp_ratio=4.0,
      drop_rate=0.0, attn_drop_rate=0.0, dtype="float32", remat=False, scan_blocks=True,
      init="mmpretrain",            # or "authors": whose init code fresh tensors follow
      pos_embed="row_col",          # the encoder's fixed table; the authors': "col_row"
      **extra))


def pretrain_defaults() -> ml_collections.ConfigDict:
  """mmpretrain's 300-epoch MixMIM-B recipe on ImageNet-1k (see MIXMIM.md)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.arch = "base"
  c.model = model_fields(drop_path_rate=0.0, decoder_dim=512, decoder_depth=8,
                         decoder_heads=16, decoder_ln_eps=1e-6, decoder_pos_embed="row_col")

  c.data = data.default_config()

  # Masking: exactly floor(L * r) cells, r = mask_ratio + U(0, range_mask_ratio).
  c.mask_ratio = 0.5
  c.range_mask_ratio = 0.0
  c.norm_pix = True
  # Images that share one mask and pair i <-> S-1-i. -1: the per-device batch
  # (the reference's per-GPU batch). Must divide the per-device micro-batch.
  c.group_size = -1

  c.batch_size = 2048               # global, per optimizer step
  c.grad_accum_steps = 1            # micro-batches per step (each draws its own masks)
  c.num_epochs = 300.0
  c.warmup_epochs = 40.0
  c.num_train_steps = -1            # > 0 overrides num_epochs (smoke runs)

  c.optim = ml_collections.ConfigDict(dict(
      base_lr=1.5e-4,               # per 256 images: lr = base_lr * batch_size / 256
      b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.05,
      wd_rule="mmpretrain",         # or "authors" (timm: no decay on 1-D tensors)
      warmup_start_factor=1e-4,     # warmup from 1e-4 x lr (mmengine LinearLR)
      grad_clip_norm=0.0))          # 0: no clipping (the recipe has none)

  # Mesh: -1 takes the devices left over. data x fsdp hold batch shards.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))

  c.checkpoint_every_steps = 1000
  c.checkpoint_keep = 3
  c.checkpoint_async = True
  c.log_every_steps = 50
  c.image_every_steps = 1000        # PNG of a few reconstructed pairs; 0: never
  c.num_image_pairs = 4
  return c


def build_model_config(config, num_classes: int = 0) -> ModelConfig:
  """The ModelConfig of a (pretraining or fine-tuning) config: its arch, the
  non-None `model` fields and the data's image size."""
  overrides = {k: v for k, v in config.model.items() if v is not None}
  for key in ("depths", "num_heads", "window_sizes"):
    if key in overrides:
      overrides[key] = tuple(overrides[key])
  return model_config(config.arch, img_size=config.data.image_size, num_classes=num_classes,
                      **overrides)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Numbers derived from the config, the dataset size and the device count."""
  model: ModelConfig
  steps_per_epoch: int
  total_steps: int
  warmup_steps: int
  lr: float
  num_devices: int
  batch_devices: int              # devices that hold distinct batch shards (data x fsdp)
  per_device_batch: int           # per optimizer step
  micro_batch: int                # per device, per micro-step
  group_size: int
  num_groups: int                 # mask groups in one micro-batch, whole mesh


def mesh_shape(mesh_config, num_devices: int) -> dict[str, int]:
  sizes = {a: int(mesh_config[a]) for a in MESH_AXES}
  free = [a for a in MESH_AXES if sizes[a] == -1]
  if len(free) > 1:
    raise ValueError(f"mesh {sizes}: at most one axis may be -1.")
  fixed = 1
  for a in MESH_AXES:
    if sizes[a] != -1:
      if sizes[a] < 1:
        raise ValueError(f"mesh.{a}={sizes[a]}; expected a positive size or -1.")
      fixed *= sizes[a]
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh {sizes} does not fit {num_devices} devices: the fixed axes "
                       f"({fixed}) do not divide the device count.")
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f"mesh {sizes} has {fixed} devices but {num_devices} are available; "
                     "set one axis to -1 or make the product match.")
  return sizes


def make_plan(config, num_examples: int, num_devices: int) -> Plan:
  """Validates the config against the data and devices; one clear error per problem."""
  model = build_model_config(config)
  sizes = mesh_shape(config.mesh, num_devices)
  batch_devices = sizes["data"] * sizes["fsdp"]
  b, accum = config.batch_size, config.grad_accum_steps
  if accum < 1:
    raise ValueError(f"grad_accum_steps={accum}; expected >= 1.")
  if b % (batch_devices * accum):
    raise ValueError(f"batch_size={b} is not divisible by the data-parallel size "
                     f"{batch_devices} (mesh data x fsdp) x grad_accum_steps {accum}.")
  per_device = b // batch_devices
  micro = per_device // accum
  group = micro if config.group_size == -1 else config.group_size
  if micro % 2:
    raise ValueError(f"per-device micro-batch {micro} (batch_size {b} / {batch_devices} "
                     f"devices / {accum} accumulation steps) is odd; MixMIM pairs images "
                     "on each device, so it must be even.")
  if group < 2 or group % 2 or micro % group:
    raise ValueError(f"group_size={group} must be even and divide the per-device "
                     f"micro-batch {micro}, so that mask groups never span two devices.")
  steps_per_epoch = num_examples // b
  if steps_per_epoch < 1:
    raise ValueError(f"the dataset has {num_examples} examples, fewer than one batch of {b}.")
  total = (config.num_train_steps if config.num_train_steps > 0
           else int(round(config.num_epochs * steps_per_epoch)))
  warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total)
  return Plan(model=model, steps_per_epoch=steps_per_epoch, total_steps=total,
              warmup_steps=warmup, lr=config.optim.base_lr * b / 256,
              num_devices=num_devices, batch_devices=batch_devices, per_device_batch=per_device,
              micro_batch=micro, group_size=group,
              num_groups=batch_devices * micro // group)
