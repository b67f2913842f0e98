"""The MixMIM pretraining decoder ("neck" in mmpretrain) and the full
pretraining model (encoder + decoder). The loss lives in `objective.py`."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mixmim_jax.model import init_schemes, masking, tables
from mixmim_jax.model.arch import ModelConfig
from mixmim_jax.model.block_stack import run_blocks
from mixmim_jax.model.encoder import MixMIMEncoder
from mixmim_jax.model.layers import TransformerBlock, dense, full_precision, layer_norm


class MixMIMDecoder(nn.Module):
  """Encoder tokens (B, L, 8C) and the coarse mask (G, L) -> two pixel predictions
  (B, L, 32*32*3) per mixed image.

  seq1 keeps the tokens at m = 0 and puts the mask token at m = 1, seq2 the
  opposite; both go through the same ViT blocks. They are stacked on a new axis
  next to the image axis (not concatenated along the batch, as the references
  do), so a batch sharded over devices stays where it is.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, latent, coarse_mask, *, train: bool = False):
    cfg = self.cfg
    linear = init_schemes.scheme(cfg.init, classifier=False).decoder_linear
    x = dense(cfg.decoder_dim, cfg.num_features, linear, cfg.dtype, "embed")(latent)
    token = self.param("mask_token", nn.initializers.normal(0.02), (cfg.decoder_dim,))
    groups = coarse_mask.shape[0]
    x = masking.split_groups(x, groups)                   # (G, S, L, D)
    m = coarse_mask[:, None, :, None].astype(x.dtype)
    token = token.astype(x.dtype)
    seq1 = x * (1 - m) + token * m
    seq2 = x * m + token * (1 - m)
    x = jnp.stack([seq1, seq2], axis=2)                   # (G, S, 2, L, D)
    pos = tables.sincos_2d(cfg.mask_grid, cfg.decoder_dim, cfg.decoder_pos_embed)
    x = x + jnp.asarray(pos, x.dtype)
    block_kwargs = dict(num_heads=cfg.decoder_heads, mlp_ratio=cfg.mlp_ratio,
                        ln_eps=cfg.decoder_ln_eps, dtype=cfg.dtype, linear_init=linear)
    x = run_blocks(self, TransformerBlock, block_kwargs, x, None, (0.0,) * cfg.decoder_depth,
                   deterministic=not train, remat=cfg.remat, scan=cfg.scan_blocks)
    x = layer_norm(cfg.decoder_ln_eps, "norm")(x)
    x = dense(cfg.target_dim, cfg.decoder_dim, linear, cfg.dtype, "pred")(x)
    x = x.astype(full_precision(x.dtype))
    b = latent.shape[0]
    return x[:, :, 0].reshape(b, *x.shape[-2:]), x[:, :, 1].reshape(b, *x.shape[-2:])


class MixMIMPretrainModel(nn.Module):
  """images (B, H, W, 3), coarse_mask (G, L) -> (seq1, seq2), each (B, L, 32*32*3).

  G mask groups of B/G images each; image i is mixed with image S-1-i of its
  group. Use `objective.reconstruction_loss` to unmix and score the prediction."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, images, coarse_mask, *, train: bool = False):
    cfg = self.cfg
    if coarse_mask.ndim != 2 or coarse_mask.shape[1] != cfg.num_mask_cells:
      raise ValueError(f"mask of shape {coarse_mask.shape} given; expected (groups, "
                       f"{cfg.num_mask_cells}) cells on the {cfg.mask_grid}x{cfg.mask_grid} grid.")
    latent = MixMIMEncoder(cfg, name="encoder")(images, coarse_mask, train=train)
    return MixMIMDecoder(cfg, name="decoder")(latent, coarse_mask, train=train)
