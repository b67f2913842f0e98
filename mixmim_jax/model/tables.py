"""Fixed tables computed with NumPy at trace time (never stored as parameters)."""
from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=None)
def sincos_2d(grid: int, dim: int, layout: str = "row_col") -> np.ndarray:
  """(grid*grid, dim) float32 2-D sin-cos position table, tokens in row-major order.

  With o_i = 1 / 10000**(i / (dim/4)), each token gets four blocks of dim/4:
  layout "row_col" (mmpretrain): [sin(row o), cos(row o), sin(col o), cos(col o)];
  layout "col_row" (the authors' MAE helper): the row and column blocks swapped.
  """
  if dim % 4:
    raise ValueError(f"sin-cos table width {dim} is not a multiple of 4.")
  quarter = dim // 4
  omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
  rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
  out_r = rows.reshape(-1, 1) * omega
  out_c = cols.reshape(-1, 1) * omega
  first, second = (out_r, out_c) if layout == "row_col" else (out_c, out_r)
  table = np.concatenate([np.sin(first), np.cos(first), np.sin(second), np.cos(second)],
                         axis=1)
  return table.astype(np.float32)


def absolute_pos_embed(grid: int, dim: int, layout: str) -> np.ndarray:
  """The encoder's fixed position table for a ModelConfig.pos_embed layout."""
  if layout == "none":
    return np.zeros((grid * grid, dim), np.float32)
  return sincos_2d(grid, dim, layout)


@functools.lru_cache(maxsize=None)
def relative_position_index(window: int) -> np.ndarray:
  """(N, N) int32 index into a ((2W-1)**2, heads) bias table, N = W*W, as in Swin:
  (dy + W - 1) * (2W - 1) + (dx + W - 1) for query minus key offsets (dy, dx)."""
  ys, xs = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
  ys, xs = ys.reshape(-1), xs.reshape(-1)
  dy = ys[:, None] - ys[None, :] + window - 1
  dx = xs[:, None] - xs[None, :] + window - 1
  return (dy * (2 * window - 1) + dx).astype(np.int32)
