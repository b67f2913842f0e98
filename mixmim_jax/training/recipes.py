"""The recipes' default settings, as ml_collections configs: mmpretrain's MixMIM-B
pretraining and fine-tuning, MAE's linear probe, and the small Fashion-MNIST
model. configs/*.py start from these and change what their recipe changes.

`config.trainer` names the program a config is for ("pretrain" or "finetune");
`python -m mixmim_jax.main` runs it.
"""
from __future__ import annotations

import ml_collections

from mixmim_jax import data

TRAINERS = ("pretrain", "finetune")
TASKS = ("finetune", "linprobe")     # what the "finetune" trainer trains


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


def _run_fields(c: ml_collections.ConfigDict, keep: int) -> None:
  """What every trainer has: mesh, checkpoints, logging."""
  # Mesh: -1 takes the devices left over. data x fsdp hold batch shards.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
  c.checkpoint_every_steps = 1000
  c.checkpoint_keep = keep
  c.checkpoint_async = True
  c.log_every_steps = 50
  # Compiled programs kept across restarts (startup.py): "auto" is
  # JAX_COMPILATION_CACHE_DIR when set, else WORKDIR/compile_cache; a path; "off".
  c.compile_cache = "auto"
  # A resumed run must mean by a step what its workdir recorded (run_record.py):
  # the keys named here ("batch_size,optim.base_lr") may differ all the same.
  c.allow_config_change = ""


def pretrain_defaults() -> ml_collections.ConfigDict:
  """mmpretrain's 300-epoch MixMIM-B recipe on ImageNet-1k (see MIXMIM.md)."""
  c = ml_collections.ConfigDict()
  c.trainer = "pretrain"
  c.seed = 0

  c.arch = "base"
  c.model = model_fields(drop_path_rate=0.0, decoder_dim=512, decoder_depth=8,
                         decoder_heads=16, decoder_ln_eps=1e-6, decoder_pos_embed="row_col")

  c.data = data.default_config()

  # Masking: exactly floor(L * r) cells, r = mask_ratio + U(0, range_mask_ratio).
  c.mask_ratio = 0.5
  c.range_mask_ratio = 0.0
  c.norm_pix = True
  # Images that share one mask and pair i <-> S-1-i. -1: the reference's 128
  # (one mask per GPU batch) where the per-device micro-batch is a multiple of
  # 128, else the per-device batch (plan.default_group_size). Must divide the
  # per-device micro-batch.
  c.group_size = -1

  c.batch_size = 2048               # global, per optimizer step
  c.grad_accum_steps = 1            # micro-batches per step (each draws its own masks)
  c.num_epochs = 300.0
  c.warmup_epochs = 40.0
  c.num_train_steps = -1            # > 0 overrides num_epochs (smoke runs)

  c.optim = ml_collections.ConfigDict(dict(
      name="adamw",
      base_lr=1.5e-4,               # per 256 images: lr = base_lr * batch_size / 256
      b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.05,
      wd_rule="mmpretrain",         # or "authors" (timm: no decay on 1-D tensors)
      layer_decay=1.0,              # none in pretraining
      layer_decay_rule="mmpretrain",
      warmup_start_factor=1e-4,     # warmup from 1e-4 x lr (mmengine LinearLR)
      end_lr=0.0,                   # the cosine's floor
      grad_clip_norm=0.0))          # 0: no clipping (the recipe has none)

  _run_fields(c, keep=3)
  c.image_every_steps = 1000        # PNG of a few reconstructed pairs; 0: never
  c.num_image_pairs = 4
  # Representation probes while pretraining (evaluation/probes.py), each also
  # at step 0 and after the last step. ImageNet: the first 10 % of TFDS's
  # train records (shuffled by TFDS when it prepared them: about 128 images of
  # every class) as the kNN memory and few-shot pool, the validation split as
  # queries; both read the same features. Every 3125 steps = 5 epochs at batch
  # 2048: 0.7 % of the run by FLOPs (docs/PROBES.md).
  c.evals = ml_collections.ConfigDict(dict(
      knn=knn_probe(every_steps=3125, train_split="train[:10%]", eval_split="validation"),
      fewshot=fewshot_probe(every_steps=3125, train_split="train[:10%]",
                            eval_split="validation")))
  return c


def _probe(kind: str, every_steps: int, train_split: str, eval_split: str,
           **extra) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      type=kind,
      every_steps=every_steps,      # N > 0: every N steps; 0: start and end only; -1: never
      train_split=train_split,      # the labelled examples (kNN memory, few-shot pool)
      train_fraction=1.0,           # of each class (folder / fashion_mnist; tfds: slice the split)
      eval_split=eval_split,        # the images scored
      eval_fraction=1.0,            # of each class, as train_fraction
      eval_resize=256,              # short side before the centre crop (the test view)
      batch_size=1024,              # global, images per feature batch
      **extra))


def knn_probe(every_steps: int, train_split: str, eval_split: str) -> ml_collections.ConfigDict:
  """DINO's weighted kNN: k nearest by cosine, votes exp(sim / temperature)."""
  return _probe("knn", every_steps, train_split, eval_split, k=20, temperature=0.07)


def fewshot_probe(every_steps: int, train_split: str,
                  eval_split: str) -> ml_collections.ConfigDict:
  """big_vision's fewshot_lsr: ridge regression on n examples per class,
  drawn with each seed; l2_reg as big_vision's."""
  return _probe("fewshot", every_steps, train_split, eval_split, shots=(1, 5, 10, 25),
                seeds=(0, 1, 2), l2_reg=2.0 ** 10)


def finetune_defaults() -> ml_collections.ConfigDict:
  """mmpretrain's 100-epoch MixMIM-B fine-tune on ImageNet-1k (MIXMIM.md)."""
  c = ml_collections.ConfigDict()
  c.trainer = "finetune"
  c.seed = 0
  c.task = "finetune"               # or "linprobe": frozen encoder, BN + linear head
  c.arch = "base"
  c.model = model_fields(drop_path_rate=0.1)
  c.num_classes = 1000

  c.data = data.labeled_config()

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

  _run_fields(c, keep=2)
  c.eval_batch_size = 1024
  c.eval_every_steps = 0            # 0: at the end only
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
