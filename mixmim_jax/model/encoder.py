"""The hierarchical MixMIM encoder (a Swin-like transformer without shifted
windows) and its linear classifier."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mixmim_jax.model import init_schemes, masking, tables
from mixmim_jax.model.arch import NUM_STAGES, ModelConfig
from mixmim_jax.model.block_stack import run_blocks
from mixmim_jax.model.init_schemes import InitScheme, LinearInit
from mixmim_jax.model.layers import TransformerBlock, dense, full_precision, layer_norm

ENCODER_LN_EPS = 1e-5


class PatchEmbed(nn.Module):
  """A patch x patch convolution with equal stride, then LayerNorm; (B, L, C) out."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, images):
    p = self.cfg.patch_size
    # Both references keep torch Conv2d's default init, bias included. In
    # float32 under any compute dtype: 0.1 % of the FLOPs, and the first
    # rounding of the residual stream would otherwise happen here.
    x = nn.Conv(self.cfg.embed_dim, (p, p), strides=(p, p), padding="VALID",
                dtype=full_precision(images.dtype), kernel_init=init_schemes.torch_default_kernel,
                bias_init=init_schemes.torch_default_bias(p * p * images.shape[-1]),
                name="proj")(images)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    return layer_norm(ENCODER_LN_EPS, "norm")(x)


class PatchMerging(nn.Module):
  """Concatenate each 2x2 neighbourhood (4C), LayerNorm, Linear(4C -> 2C, no bias).

  Our channel order is kernel-major: [(r0,c0), (r0,c1), (r1,c0), (r1,c1)] blocks of
  C channels each; it keeps channels minor, so it is a transpose of the two middle
  axes only. Checkpoint conversion permutes mmpretrain's (channel-major, Unfold)
  and the authors' (timm) orders into it.
  """
  resolution: int
  dtype: str = "float32"
  linear_init: LinearInit = init_schemes.XAVIER

  @nn.compact
  def __call__(self, x):
    b, _, c = x.shape
    r = self.resolution // 2
    x = x.reshape(b, r, 2, r, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, r * r, 4 * c)
    x = layer_norm(ENCODER_LN_EPS, "norm")(x)
    return dense(2 * c, 4 * c, self.linear_init, self.dtype, "reduction", use_bias=False)(x)


class Stage(nn.Module):
  """`depth` blocks at one resolution, then patch merging (except the last stage)."""
  cfg: ModelConfig
  index: int
  drop_path_rates: tuple[float, ...]
  init_scheme: InitScheme

  @nn.compact
  def __call__(self, x, token_mask=None, *, deterministic: bool = True):
    cfg, s = self.cfg, self.index
    res, window = cfg.stage_resolutions[s], cfg.effective_windows[s]
    mask_bias = None
    if token_mask is not None:
      # One bias per stage, shared by its blocks: the mask is the same throughout.
      win_mask = masking.window_partition_mask(token_mask, res, window)
      mask_bias = masking.same_source_bias(win_mask)    # the logits are float32
    init = self.init_scheme
    block_kwargs = dict(num_heads=cfg.num_heads[s], mlp_ratio=cfg.mlp_ratio, window=window,
                        resolution=res, drop=cfg.drop_rate, attn_drop=cfg.attn_drop_rate,
                        ln_eps=ENCODER_LN_EPS, dtype=cfg.dtype,
                        linear_init=init.encoder_linear, table_std=init.relative_table_std)
    x = run_blocks(self, TransformerBlock, block_kwargs, x, mask_bias, self.drop_path_rates,
                   deterministic=deterministic, remat=cfg.remat, scan=cfg.scan_blocks)
    if s < NUM_STAGES - 1:
      x = PatchMerging(res, cfg.dtype, init.encoder_linear, name="downsample")(x)
    return x


class MixMIMEncoder(nn.Module):
  """Images (B, H, W, 3) -> final-norm tokens (B, (H/32)*(W/32), 8C).

  With `coarse_mask` (G, L) the batch is treated as G groups that each share one
  mask: tokens are mixed with the partner image right after the patch embedding
  and every attention is restricted to keys of the same source image.
  `for_classifier` picks the classifier's init (mmpretrain draws it differently).
  """
  cfg: ModelConfig
  for_classifier: bool = False

  @nn.compact
  def __call__(self, images, coarse_mask: Optional[jax.Array] = None, *,
               train: bool = False):
    cfg = self.cfg
    if images.shape[1:3] != (cfg.img_size, cfg.img_size):
      raise ValueError(f"images of size {images.shape[1:3]} given to a model built for "
                       f"{cfg.img_size}x{cfg.img_size}.")
    deterministic = not train
    x = PatchEmbed(cfg, name="patch_embed")(images.astype(full_precision(images.dtype)))
    grid = cfg.mask_grid
    if coarse_mask is not None:
      x = masking.mix(x, masking.upsample_mask(coarse_mask, grid, 2 ** (NUM_STAGES - 1)))
    pos = tables.absolute_pos_embed(cfg.patch_grid, cfg.embed_dim, cfg.pos_embed)
    x = x + jnp.asarray(pos, x.dtype)
    x = nn.Dropout(cfg.drop_rate)(x, deterministic)
    rates = np.linspace(0.0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
    init = init_schemes.scheme(cfg.init, self.for_classifier)
    start = 0
    for s, depth in enumerate(cfg.depths):
      token_mask = None
      if coarse_mask is not None:
        token_mask = masking.upsample_mask(coarse_mask, grid, 2 ** (NUM_STAGES - 1 - s))
      x = Stage(cfg, s, tuple(rates[start:start + depth]), init, name=f"layers_{s}")(
          x, token_mask, deterministic=deterministic)
      start += depth
    return layer_norm(ENCODER_LN_EPS, "norm")(x)


class MixMIMClassifier(nn.Module):
  """Encoder, mean over tokens, Linear(8C -> classes). Returns float32 logits
  (or pooled features when num_classes == 0)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    cfg = self.cfg
    x = MixMIMEncoder(cfg, for_classifier=True, name="encoder")(images, train=train)
    x = x.mean(axis=1)
    if cfg.num_classes == 0:
      return x.astype(full_precision(x.dtype))
    head_init = init_schemes.scheme(cfg.init, classifier=True).head
    x = dense(cfg.num_classes, cfg.num_features, head_init, cfg.dtype, "head")(x)
    return x.astype(full_precision(x.dtype))
