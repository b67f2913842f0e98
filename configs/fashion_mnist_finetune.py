"""Fine-tune the small Fashion-MNIST MixMIM (configs/fashion_mnist_pretrain.py) on
10 % of the labels (6,000 images), on a CPU.

  python -m mixmim_jax.main --config=configs/fashion_mnist_pretrain.py --workdir=/tmp/fmnist_pre
  python -m mixmim_jax.finetune --config=configs/fashion_mnist_finetune.py \
      --workdir=/tmp/fmnist_ft --config.init_from=/tmp/fmnist_pre
  (--config.init_from= for the from-scratch baseline)

The mmpretrain recipe scaled down: AdamW, layer decay 0.7, label smoothing,
mixup/cutmix, RandAugment, erasing, drop path 0.1; a larger lr per image for
the small model and batch. Evaluated on the 10,000 test images (resized, no
crop). See docs/FINETUNE.md for measured figures.
"""
from mixmim_jax.finetune_config import finetune_defaults

TASK = "finetune"


def small(c):
  c.model.embed_dim = 32
  c.model.depths = (1, 1, 2, 1)
  c.model.num_heads = (1, 2, 4, 8)
  c.model.window_sizes = (8, 8, 8, 4)
  c.model.patch_size = 2
  c.num_classes = 10
  c.data.source = "fashion_mnist"
  c.data.split = "train"
  c.data.eval_split = "test"
  c.data.image_size = 64
  c.data.eval_resize = 64
  c.data.crop_scale = (0.2, 1.0)
  c.data.mean = (72.94,) * 3
  c.data.std = (90.02,) * 3
  c.data.label_fraction = 0.1
  c.eval_batch_size = 500
  c.checkpoint_every_steps = 500
  return c


def get_config(arg: str = ""):
  c = small(finetune_defaults())
  c.batch_size = 64
  c.num_epochs = 3.0
  c.warmup_epochs = 0.5
  c.optim.base_lr = 2e-3              # lr 5e-4 at batch 64
  c.log_every_steps = 50
  if arg == "runlocal":
    c.num_train_steps = 4
    c.log_every_steps = 2
  return c
