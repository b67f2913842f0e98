"""Input pixels cross from the host to the device as uint8 and are normalised
there, as mmpretrain's data_preprocessor does on the GPU: the host pipeline does
no per-pixel float work and sends a quarter of float32's bytes.

Every step (pretraining, fine-tuning, evaluation) calls `normalize` first. A
float batch is taken as already normalised and passes unchanged: exported
models and `api.classify` take normalised float32 images (`predict` normalises its own).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize(images, mean, std):
  """(uint8 images - mean) / std per channel, in float32 (in float64 under
  jax_enable_x64, as the float64 parity tests run); float images as they are."""
  if images.dtype != jnp.uint8:
    return images
  dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
  return ((images.astype(dtype) - jnp.asarray(mean, dtype)) / jnp.asarray(std, dtype))
