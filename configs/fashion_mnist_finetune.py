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
from mixmim_jax.recipes import fashion_mnist_small, finetune_defaults


def get_config(arg: str = ""):
  c = fashion_mnist_small(finetune_defaults())
  c.batch_size = 64
  c.num_epochs = 3.0
  c.warmup_epochs = 0.5
  c.optim.base_lr = 2e-3              # lr 5e-4 at batch 64
  c.log_every_steps = 50
  if arg == "runlocal":
    c.num_train_steps = 4
    c.log_every_steps = 2
  return c
