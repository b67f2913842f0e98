"""The pretraining target and loss as pure functions (NHWC images)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mixmim_jax.model import masking


def patchify(images: jax.Array, patch: int) -> jax.Array:
  """(B, H, W, C) -> (B, (H/p)*(W/p), p*p*C), each patch flattened in
  (row, col, channel) order like the references' 'nchpwq->nhwpqc'."""
  b, h, w, c = images.shape
  if h % patch or w % patch:
    raise ValueError(f"image {h}x{w} is not divisible into {patch}x{patch} patches.")
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: jax.Array, patch: int, channels: int = 3) -> jax.Array:
  """Inverse of `patchify` for square images."""
  b, l, _ = patches.shape
  side = int(round(l ** 0.5))
  if side * side != l:
    raise ValueError(f"{l} patches do not form a square grid.")
  x = patches.reshape(b, side, side, patch, patch, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, side * patch, side * patch, channels)


def pixel_target(images: jax.Array, patch: int, norm_pix: bool = True) -> jax.Array:
  """Patches of the normalized input; with norm_pix each patch is standardized
  with Bessel's correction (torch.var's default), eps 1e-6 as the references."""
  t = patchify(images.astype(jnp.promote_types(images.dtype, jnp.float32)), patch)
  if norm_pix:
    mean = t.mean(axis=-1, keepdims=True)
    var = t.var(axis=-1, keepdims=True, ddof=1)
    t = (t - mean) / jnp.sqrt(var + 1e-6)
  return t


def reconstruction_loss(seq1: jax.Array, seq2: jax.Array, target: jax.Array,
                        coarse_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean squared error of the unmixed prediction over all cells and values.

  Returns (loss, unmixed prediction (B, L, D))."""
  dtype = jnp.promote_types(jnp.result_type(seq1, seq2), jnp.float32)
  pred = masking.unmix(seq1.astype(dtype), seq2.astype(dtype), coarse_mask)
  return jnp.mean((pred - target) ** 2), pred
