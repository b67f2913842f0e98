"""A tiny pretraining config over a synthetic Fashion-MNIST-format dataset."""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from mixmim_jax.training.recipes import pretrain_defaults


def write_idx_images(directory: str, count: int = 96, seed: int = 0) -> str:
  """train-images-idx3-ubyte.gz with `count` 28x28 images of smooth random blobs."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:28, :28]
  images = np.zeros((count, 28, 28), np.float32)
  for i in range(count):
    cy, cx, r = rng.uniform(6, 22), rng.uniform(6, 22), rng.uniform(3, 9)
    images[i] = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, "train-images-idx3-ubyte.gz")
  with gzip.open(path, "wb") as f:
    f.write(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">III", count, 28, 28))
    f.write(images.astype(np.uint8).tobytes())
  return directory


def tiny_config(data_dir: str, **changes):
  c = pretrain_defaults()
  c.model.embed_dim = 16
  c.model.depths = (1, 1, 1, 1)
  c.model.num_heads = (1, 1, 2, 2)
  c.model.window_sizes = (4, 4, 2, 1)
  c.model.patch_size = 2
  c.model.decoder_dim = 32
  c.model.decoder_depth = 1
  c.model.decoder_heads = 2
  c.data.source = "fashion_mnist"
  c.data.fashion_mnist_dir = data_dir
  c.data.image_size = 32
  c.data.num_parallel_calls = 2
  c.batch_size = 16
  c.num_train_steps = 4
  c.warmup_epochs = 0.5
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.checkpoint_async = False
  c.image_every_steps = 0
  for key, value in changes.items():
    target = c
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return c
