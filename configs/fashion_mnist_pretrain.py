"""A small MixMIM pretrained on Fashion-MNIST on a CPU in minutes (the README's run).

  python -m mixmim_jax.main --config=configs/fashion_mnist_pretrain.py --workdir=/tmp/mixmim-fmnist

Needs the Debian package dataset-fashion-mnist (60,000 28x28 grey training images).
The mask lives on the input/stride grid with stride = patch x 8; a 28-px image
upsampled to 64 px with the usual patch 4 would leave a 2x2 grid (4 cells, 2
masked), too coarse to learn from. Patch 2 makes the stride 16 and the grid
4x4 = 16 cells (8 masked), like a 7x7 grid at 224 px but cheaper: stage maps
32, 16, 8, 4 with windows 8, 8, 8, 4.

Expected (`make run`, 2 CPU cores, AMD EPYC, 2026-12-07): 750 steps of 32
images at 0.32-0.41 s (78-99 images/s) after a 21 s compile, 5 min 30 s for the
whole command with the probes (28 s of it); the norm-pix loss goes from 1.22
(step 1) to 0.75 (step 750), kNN top-1 on 1,000 test images from 65.4 % (the
random encoder) to 69.5 %.
"""
from mixmim_jax.training.recipes import fewshot_probe, knn_probe, pretrain_defaults


def get_config(arg: str = ""):
  c = pretrain_defaults()
  c.arch = "base"
  c.model.embed_dim = 32
  c.model.depths = (1, 1, 2, 1)
  c.model.num_heads = (1, 2, 4, 8)
  c.model.window_sizes = (8, 8, 8, 4)
  c.model.patch_size = 2
  c.model.decoder_dim = 128
  c.model.decoder_depth = 2
  c.model.decoder_heads = 4

  c.data.source = "fashion_mnist"
  c.data.image_size = 64
  c.data.mean = (72.94,) * 3          # Fashion-MNIST pixel mean / std on 0-255
  c.data.std = (90.02,) * 3
  c.data.cache = True

  c.batch_size = 32
  c.num_epochs = 0.4                  # 750 steps of 32 images
  c.warmup_epochs = 0.01
  c.optim.base_lr = 8e-3              # lr 1e-3: a small model and batch want a larger lr
  c.log_every_steps = 50
  c.checkpoint_every_steps = 200
  c.image_every_steps = 200
  # Representation probes at the start and the end: kNN and few-shot top-1 on
  # 1,000 test images (100 of each class) with 300 of each class's training
  # images as the kNN memory and the few-shot pool; both read the same
  # features, 4,000 images a round (`:long`: all 10,000 test images and 600 of
  # each class, the fine-tunes' labelled subset).
  for name, probe in (("knn", knn_probe), ("fewshot", fewshot_probe)):
    c.evals[name] = probe(every_steps=0, train_split="train", eval_split="test")
    c.evals[name].update(dict(train_fraction=0.05, eval_fraction=0.1, eval_resize=64,
                              batch_size=200))
  if arg == "long":                   # the pretraining of docs/FINETUNE.md's table
    c.batch_size = 128
    c.num_epochs = 5.0                # 2,340 steps, about 52 min alone on 2 cores
    c.warmup_epochs = 0.2
    c.optim.base_lr = 4e-3            # lr 2e-3 at batch 128
    c.checkpoint_every_steps = 250
    c.image_every_steps = 250
    for probe in c.evals.values():
      probe.update(dict(every_steps=468, train_fraction=0.1, eval_fraction=1.0))  # each epoch
  elif arg == "runlocal":             # a few steps, for tests
    c.num_train_steps = 4
    c.log_every_steps = 2
    c.checkpoint_every_steps = 2
    c.image_every_steps = 4
    c.evals.knn.every_steps = c.evals.fewshot.every_steps = -1
  return c
