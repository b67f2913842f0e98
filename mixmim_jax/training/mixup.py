"""Mixup / CutMix on device (pure JAX), as mmpretrain's RandomBatchAugment with
augments=[Mixup(alpha=0.8), CutMix(alpha=1.0)] and probs=None: each call picks
one of the two uniformly, draws lam ~ Beta(alpha, alpha) and a permutation of
the batch, and mixes images and one-hot targets with it.

In mmpretrain every GPU mixes its own batch; `mix_per_device` does the same on
each device's contiguous slice of the global batch, so mixing partners never
cross devices and the step needs no communication for it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def mixup(key, images, targets, alpha: float):
  """lam * x + (1 - lam) * x[perm] for images (B, H, W, C) and targets (B, K)."""
  lam_key, perm_key = jax.random.split(key)
  lam = jax.random.beta(lam_key, alpha, alpha)
  perm = jax.random.permutation(perm_key, images.shape[0])
  mixed = lam * images + (1 - lam) * images[perm]
  return mixed.astype(images.dtype), lam * targets + (1 - lam) * targets[perm]


def cutmix_box(key, lam, height: int, width: int):
  """mmpretrain's rand_bbox: a box of side int(size * sqrt(1 - lam)) centred at a
  uniform pixel, clipped to the image; returns (y0, y1, x0, x1) and the lam
  corrected to the box's real area (correct_lam=True)."""
  ky, kx = jax.random.split(key)
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  cy = jax.random.randint(ky, (), 0, height)
  cx = jax.random.randint(kx, (), 0, width)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  area = (y1 - y0) * (x1 - x0)
  return (y0, y1, x0, x1), 1.0 - area / (height * width)


def cutmix(key, images, targets, alpha: float):
  """Paste the same box of x[perm] into every image; targets weighted by area."""
  lam_key, box_key, perm_key = jax.random.split(key, 3)
  lam = jax.random.beta(lam_key, alpha, alpha)
  perm = jax.random.permutation(perm_key, images.shape[0])
  h, w = images.shape[1:3]
  (y0, y1, x0, x1), lam = cutmix_box(box_key, lam, h, w)
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  box = ((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1))[None, :, :, None]
  mixed = jnp.where(box, images[perm], images)
  return mixed, lam * targets + (1 - lam) * targets[perm]


def random_batch_augment(key, images, targets, mixup_alpha: float, cutmix_alpha: float):
  """One of mixup / cutmix (those with alpha > 0), chosen uniformly."""
  fns = []
  if mixup_alpha > 0:
    fns.append(lambda k, x, t: mixup(k, x, t, mixup_alpha))
  if cutmix_alpha > 0:
    fns.append(lambda k, x, t: cutmix(k, x, t, cutmix_alpha))
  if not fns:
    return images, targets
  choice_key, mix_key = jax.random.split(key)
  if len(fns) == 1:
    return fns[0](mix_key, images, targets)
  index = jax.random.randint(choice_key, (), 0, len(fns))
  return jax.lax.switch(index, fns, mix_key, images, targets)


def mix_per_device(key, images, targets, num_shards: int, mixup_alpha: float,
                   cutmix_alpha: float):
  """random_batch_augment on each of `num_shards` contiguous slices (one per
  batch-holding device), with its own key: the slices are the devices' shards,
  so the reshape is free and every gather stays on its device."""
  b = images.shape[0]
  x = images.reshape(num_shards, b // num_shards, *images.shape[1:])
  t = targets.reshape(num_shards, b // num_shards, *targets.shape[1:])
  keys = jax.random.split(key, num_shards)
  x, t = jax.vmap(lambda k, xi, ti: random_batch_augment(k, xi, ti, mixup_alpha,
                                                         cutmix_alpha))(keys, x, t)
  return x.reshape(images.shape), t.reshape(targets.shape)
