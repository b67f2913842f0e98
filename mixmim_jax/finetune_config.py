"""The fine-tuning / linear-probing config: defaults, validation and the numbers
derived from it (epochs -> steps, learning rate), in one place."""
from __future__ import annotations

import dataclasses

import ml_collections

from mixmim_jax import train_config
from mixmim_jax.arch import ModelConfig
from mixmim_jax.data import labeled

TASKS = ("finetune", "linprobe")


def finetune_defaults() -> ml_collections.ConfigDict:
  """mmpretrain's 100-epoch MixMIM-B fine-tune on ImageNet-1k (MIXMIM.md)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "finetune"               # or "linprobe": frozen encoder, BN + linear head
  c.arch = "base"
  c.model = train_config.model_fields(drop_path_rate=0.1)
  c.num_classes = 1000

  c.data = labeled.default_config()

  # Where the weights come from: "" = scratch; an orbax pretraining workdir of
  # mixmim_jax.main; a params file (.msgpack, e.g. from mixmim_jax.convert);
  # or a PyTorch checkpoint (.pth, mmpretrain or the authors' format).
  c.init_from = ""
  c.init_step = -1                  # pretraining checkpoint step; -1 = latest

  c.label_smoothing = 0.1
  c.mixup_alpha = 0.8               # 0 disables; one of mixup/cutmix per batch
  c.cutmix_alpha = 1.0

  c.batch_size = 1024
  c.num_epochs = 100.0
  c.warmup_epochs = 5.0
  c.num_train_steps = -1            # > 0 overrides num_epochs (smoke runs)

  c.optim = ml_collections.ConfigDict(dict(
      name="adamw",                 # "lars" for the linear probe (MAE's recipe)
      base_lr=5e-4,                 # per 256 images: lr = base_lr * batch_size / 256
      b1=0.9, b2=0.999, eps=1e-8, momentum=0.9,
      weight_decay=0.05,
      wd_rule="mmpretrain",         # or "authors"
      layer_decay=0.7,              # 1.0 = off
      layer_decay_rule="mmpretrain",  # or "authors"
      warmup_start_factor=1e-6,     # mmengine LinearLR(start_factor=1e-6)
      end_lr=1e-6,                  # CosineAnnealingLR(eta_min=1e-6)
      grad_clip_norm=0.0))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
  c.eval_batch_size = 1024
  c.eval_every_steps = 0            # 0: at the end only
  c.checkpoint_every_steps = 1000
  c.checkpoint_keep = 2
  c.checkpoint_async = True
  c.log_every_steps = 50
  return c


def linprobe_defaults() -> ml_collections.ConfigDict:
  """MAE's linear probe: frozen encoder, affine-free BatchNorm on the pooled
  features, a linear head trained by LARS (lr 0.1 x batch/256, no weight decay),
  90 epochs with 10 warmup, crop + flip only."""
  c = finetune_defaults()
  c.task = "linprobe"
  c.model.drop_path_rate = 0.0
  c.label_smoothing = 0.0
  c.mixup_alpha = c.cutmix_alpha = 0.0
  c.data.randaugment = False
  c.data.erase_prob = 0.0
  c.batch_size = 16384
  c.num_epochs = 90.0
  c.warmup_epochs = 10.0
  c.optim.update(name="lars", base_lr=0.1, weight_decay=0.0, layer_decay=1.0,
                 warmup_start_factor=0.0, end_lr=0.0)
  return c


def fashion_mnist_small(c) -> ml_collections.ConfigDict:
  """The small model of configs/fashion_mnist_pretrain.py on Fashion-MNIST with
  10 % of the labels, evaluated on the test split: shared by the Fashion-MNIST
  fine-tune and linear-probe configs."""
  c.model.update(dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8),
                      window_sizes=(8, 8, 8, 4), patch_size=2))
  c.num_classes = 10
  c.data.update(dict(source="fashion_mnist", split="train", eval_split="test",
                     image_size=64, eval_resize=64, crop_scale=(0.2, 1.0),
                     mean=(72.94,) * 3, std=(90.02,) * 3, label_fraction=0.1))
  c.eval_batch_size = 500
  c.checkpoint_every_steps = 500
  return c


def build_model_config(config) -> ModelConfig:
  return train_config.build_model_config(config, num_classes=config.num_classes)


@dataclasses.dataclass(frozen=True)
class Plan:
  model: ModelConfig
  steps_per_epoch: int
  total_steps: int
  warmup_steps: int
  lr: float
  batch_devices: int


def make_plan(config, num_examples: int, num_devices: int) -> Plan:
  """Validates the config against the data and devices; one clear error per problem."""
  if config.task not in TASKS:
    raise ValueError(f"task={config.task!r}; expected one of {TASKS}.")
  if config.optim.name not in ("adamw", "lars"):
    raise ValueError(f"optim.name={config.optim.name!r}; expected 'adamw' or 'lars'.")
  if config.task == "linprobe" and config.optim.layer_decay != 1.0:
    raise ValueError(f"optim.layer_decay={config.optim.layer_decay} with task='linprobe': "
                     "only the head is trained, so set it to 1.0.")
  model = build_model_config(config)
  sizes = train_config.mesh_shape(config.mesh, num_devices)
  batch_devices = sizes["data"] * sizes["fsdp"]
  for name in ("batch_size", "eval_batch_size"):
    if config[name] % batch_devices:
      raise ValueError(f"{name}={config[name]} is not divisible by the data-parallel size "
                       f"{batch_devices} (mesh data x fsdp).")
  steps_per_epoch = num_examples // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"the training split has {num_examples} examples, fewer than one "
                     f"batch of {config.batch_size}.")
  total = (config.num_train_steps if config.num_train_steps > 0
           else int(round(config.num_epochs * steps_per_epoch)))
  warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total)
  return Plan(model=model, steps_per_epoch=steps_per_epoch, total_steps=total,
              warmup_steps=warmup, lr=config.optim.base_lr * config.batch_size / 256,
              batch_devices=batch_devices)
