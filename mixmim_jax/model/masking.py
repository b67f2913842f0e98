"""MixMIM's mask, mixing and unmixing as pure functions of arrays and keys.

Shapes: images are grouped as (G, S, ...) where a *group* of S images shares one
mask and pairs image i with image S-1-i (the reference's `x.flip(0)` applied per
group). The trainer makes each group live on one device, so pairing never moves
data between devices. With one group this is exactly the reference's batch reversal.
A coarse mask has shape (G, L) with L = (img/32)**2 cells; 1 = the cell is taken
from the partner image ("masked" for this image).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Added to an attention logit whose key comes from the other image of the pair;
# the references subtract 1e30 (65500 in float16).
MASK_LOGIT = -1e30
MASK_LOGIT_FP16 = -65500.0


def num_masked(num_cells: int, ratio: float) -> int:
  """floor(num_cells * ratio): the reference's `int(seq_l * mask_ratio)`."""
  return int(math.floor(num_cells * ratio))


def draw_coarse_masks(key: jax.Array, num_groups: int, num_cells: int,
                      mask_ratio: float = 0.5, range_mask_ratio: float = 0.0
                      ) -> jax.Array:
  """(num_groups, num_cells) float32 masks, each with exactly
  floor(num_cells * r) ones, r = mask_ratio + U(0, range_mask_ratio) per group.

  The count depends on a random ratio, so it is computed as a traced value and
  the cells are chosen by ranking uniform noise (the reference's argsort)."""
  ratio_key, noise_key = jax.random.split(key)
  ratio = mask_ratio + range_mask_ratio * jax.random.uniform(ratio_key, (num_groups, 1))
  count = jnp.floor(num_cells * ratio).astype(jnp.int32)
  noise = jax.random.uniform(noise_key, (num_groups, num_cells))
  rank = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)
  return (rank < count).astype(jnp.float32)


def upsample_mask(coarse: jax.Array, grid: int, factor: int) -> jax.Array:
  """Nearest upsampling of (G, grid*grid) masks to (G, (grid*factor)**2) tokens,
  row-major, as F.interpolate(mode='nearest') with an integer factor."""
  g = coarse.shape[0]
  m = coarse.reshape(g, grid, 1, grid, 1)
  m = jnp.broadcast_to(m, (g, grid, factor, grid, factor))
  return m.reshape(g, (grid * factor) ** 2)


def split_groups(x: jax.Array, num_groups: int) -> jax.Array:
  """(B, ...) -> (G, B/G, ...)."""
  if x.shape[0] % num_groups:
    raise ValueError(f"batch {x.shape[0]} is not divisible into {num_groups} mask groups.")
  return x.reshape(num_groups, x.shape[0] // num_groups, *x.shape[1:])


def partner(x: jax.Array, num_groups: int) -> jax.Array:
  """Each image's partner: image S-1-i of its own group (reversal inside the group)."""
  return jnp.flip(split_groups(x, num_groups), axis=1).reshape(x.shape)


def _token_mask(mask: jax.Array, x: jax.Array) -> jax.Array:
  """(G, L) mask -> broadcastable against grouped tokens (G, S, L, C)."""
  return mask[:, None, :, None].astype(x.dtype)


def mix(tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """x * (1 - m) + partner(x) * m for tokens (B, L, C) and a (G, L) token mask."""
  g = mask.shape[0]
  x = split_groups(tokens, g)
  m = _token_mask(mask, x)
  mixed = x * (1 - m) + jnp.flip(x, axis=1) * m
  return mixed.reshape(tokens.shape)


def unmix(seq1: jax.Array, seq2: jax.Array, mask: jax.Array) -> jax.Array:
  """Reassemble each image's prediction from the two decoder sequences.

  seq1[i] predicts image i where m = 1 (its masked cells); image i's cells with
  m = 0 are predicted by seq2 of the mixed sample that holds i's tokens at m = 1,
  i.e. its partner. Inputs (B, L, D), mask (G, L)."""
  g = mask.shape[0]
  s1 = split_groups(seq1, g)
  s2 = split_groups(seq2, g)
  m = _token_mask(mask, s1)
  return (s1 * m + jnp.flip(s2, axis=1) * (1 - m)).reshape(seq1.shape)


def window_partition_mask(token_mask: jax.Array, resolution: int, window: int
                          ) -> jax.Array:
  """(G, R*R) token mask -> (G, num_windows, window*window), windows row-major."""
  g = token_mask.shape[0]
  n = resolution // window
  m = token_mask.reshape(g, n, window, n, window)
  return m.transpose(0, 1, 3, 2, 4).reshape(g, n * n, window * window)


def same_source_bias(window_mask: jax.Array, dtype=jnp.float32) -> jax.Array:
  """(G, nW, N) window mask -> (G, nW, N, N) additive logit bias that forbids a
  query from attending to keys of the other source image."""
  differ = window_mask[..., :, None] != window_mask[..., None, :]
  fill = MASK_LOGIT_FP16 if jnp.dtype(dtype) == jnp.float16 else MASK_LOGIT
  return jnp.where(differ, jnp.asarray(fill, dtype), jnp.asarray(0, dtype))
