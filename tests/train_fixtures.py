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


def write_idx_split(directory, split, count, seed=0):
  """Fashion-MNIST-format images (smooth blobs whose size encodes the class) and labels."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, count).astype(np.uint8)
  yy, xx = np.mgrid[:28, :28]
  images = np.stack([255 * np.exp(-((yy - 14) ** 2 + (xx - 14) ** 2) / (2 * (2 + l) ** 2))
                     for l in labels]).astype(np.uint8)
  prefix = {"train": "train", "test": "t10k"}[split]
  os.makedirs(directory, exist_ok=True)
  with gzip.open(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), "wb") as f:
    f.write(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", count, 28, 28) + images.tobytes())
  with gzip.open(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as f:
    f.write(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", count) + labels.tobytes())
  return images, labels


def clustered_features(count: int, num_classes: int, dim: int, seed: int, spread=0.9):
  """Unit feature rows around one random centre per class, and their labels:
  fixed inputs for the probes, neither separable nor random."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((num_classes, dim))
  labels = rng.integers(0, num_classes, count)
  x = centres[labels] + spread * np.sqrt(dim) * rng.standard_normal((count, dim)) / 2
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


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
  for probe in c.evals.values():      # the representation probes only where a test asks
    probe.every_steps = -1
  for key, value in changes.items():
    target = c
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return c
