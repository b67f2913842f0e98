"""Pictures of what the model does: originals, the mixed input, reconstructions."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mixmim_jax.model import masking, objective, pixels
from mixmim_jax.model.arch import ModelConfig
from mixmim_jax.model.decoder import MixMIMPretrainModel
from mixmim_jax.training import metrics


@functools.partial(jax.jit, static_argnames=("cfg", "norm_pix"))
def _reconstruct(params, images, mask, cfg: ModelConfig, norm_pix: bool):
  """Pixel-space (normalized) reconstructions and mixed inputs for one mask group."""
  p = cfg.encoder_stride
  seq1, seq2 = MixMIMPretrainModel(cfg).apply({"params": params}, images, mask)
  pred = masking.unmix(seq1, seq2, mask)
  if norm_pix:
    # Undo the per-patch standardisation with the true patches' statistics, as
    # MAE-style visualisations do.
    raw = objective.patchify(images, p)
    mean = raw.mean(-1, keepdims=True)
    std = jnp.sqrt(raw.var(-1, keepdims=True, ddof=1) + 1e-6)
    pred = pred * std + mean
  recon = objective.unpatchify(pred, p, cfg.in_chans)
  pixel_mask = masking.upsample_mask(mask, cfg.mask_grid, p).reshape(
      1, cfg.img_size, cfg.img_size, 1)
  mixed = images * (1 - pixel_mask) + jnp.flip(images, 0) * pixel_mask
  return recon, mixed


def pairs_png(path: str, cfg: ModelConfig, params, images: np.ndarray, mask: np.ndarray,
              mean, std, norm_pix: bool = True, write: bool = True) -> None:
  """Writes one row per pair (a, b): a, b, the mixed input the encoder saw for a,
  and the reconstructions of a and b. `images` holds an even number of
  images (uint8 as the pipeline gives them, or normalised floats); a is image i
  and b image n-1-i (one mask group). Every
  process must call it (the params may be sharded across hosts); only `write` ones save."""
  images = pixels.normalize(jnp.asarray(images), mean, std)
  recon, mixed = _reconstruct(params, images, jnp.asarray(mask), cfg, norm_pix)
  if not write:
    return
  to_u8 = functools.partial(metrics.denormalize, mean=mean, std=std)
  imgs, recon, mixed = to_u8(np.asarray(images)), to_u8(np.asarray(recon)), to_u8(
      np.asarray(mixed))
  n = len(images)
  rows = [[imgs[i], imgs[n - 1 - i], mixed[i], recon[i], recon[n - 1 - i]]
          for i in range(n // 2)]
  metrics.save_pairs_png(path, rows, ["image a", "image b", "mixed", "recon a", "recon b"])
