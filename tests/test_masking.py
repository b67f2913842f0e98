"""Mask drawing, upsampling, mixing, unmixing and the same-source attention bias
(masking.py), checked against independent NumPy/PyTorch formulations of the
references' code, plus per-device pairing under 8 fake CPU devices."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mixmim_jax.model import masking

torch = pytest.importorskip("torch")

COLLECTIVES = ("all-to-all", "collective-permute", "all-gather", "all-reduce",
               "reduce-scatter")

_draw = jax.jit(masking.draw_coarse_masks, static_argnums=(1, 2, 3, 4))
_mix = jax.jit(masking.mix)
_unmix = jax.jit(masking.unmix)


def binary_mask(rng, groups, cells):
  m = np.zeros((groups, cells), np.float32)
  for g in range(groups):
    m[g, rng.permutation(cells)[: cells // 2]] = 1.0
  return m


# ---------------------------------------------------------------------------
# draw_coarse_masks

@pytest.mark.parametrize("cells,ratio", [(49, 0.5), (49, 0.75), (49, 0.3), (4, 0.5),
                                         (144, 0.6), (16, 0.99), (9, 0.0)])
def test_exact_count_per_group(cells, ratio):
  m = np.asarray(_draw(jax.random.key(cells), 64, cells, ratio, 0.0))
  assert m.shape == (64, cells) and m.dtype == np.float32
  assert set(np.unique(m)) <= {0.0, 1.0}
  want = math.floor(cells * ratio)
  assert want == masking.num_masked(cells, ratio)
  np.testing.assert_array_equal(m.sum(axis=1), np.full(64, want))
  # Groups draw independent masks: 64 draws show most of the comb(cells, want)
  # possible masks (all 6 for 2 of 4), or >= 24 distinct ones when there are many.
  distinct = len({tuple(row) for row in m})
  assert distinct >= 0.75 * min(math.comb(cells, want), 32), distinct


def test_range_mask_ratio_count_within_bounds_and_varies():
  cells, lo, width, groups = 49, 0.5, 0.25, 512
  m = np.asarray(_draw(jax.random.key(7), groups, cells, lo, width))
  counts = m.sum(axis=1)
  assert counts.min() >= math.floor(cells * lo) == 24
  assert counts.max() <= math.floor(cells * (lo + width)) == 36
  # r = 0.5 + U(0, 0.25) per group: floor(49 r) spans 24..36 (13 values); with 512
  # groups each value has probability >= ~0.06, so nearly all of them occur.
  assert len(np.unique(counts)) >= 11
  # Their mean is E[floor(49 (0.5 + 0.25 U))], within 5 standard errors.
  exact = np.floor(cells * (lo + width * (np.arange(100000) + 0.5) / 100000))
  assert abs(counts.mean() - exact.mean()) < 5 * exact.std() / math.sqrt(groups)


def test_every_cell_masked_with_frequency_ratio():
  cells, ratio, groups = 49, 0.5, 4000
  m = np.asarray(_draw(jax.random.key(3), groups, cells, ratio, 0.0))
  p = math.floor(cells * ratio) / cells          # 24/49: the exact per-cell rate
  freq = m.mean(axis=0)
  std = math.sqrt(p * (1 - p) / groups)
  # 5 sigma per cell over 49 cells: a false alarm has probability ~3e-5.
  assert np.all(np.abs(freq - p) < 5 * std), (freq - p) / std
  # And the cells are not correlated by position: pair (0, 1) co-masked at the
  # hypergeometric rate p * (24-1)/(49-1).
  both = (m[:, 0] * m[:, 1]).mean()
  q = p * (24 - 1) / (cells - 1)
  assert abs(both - q) < 5 * math.sqrt(q * (1 - q) / groups)


# ---------------------------------------------------------------------------
# upsample_mask

@pytest.mark.parametrize("grid,factor", [(7, 8), (7, 4), (7, 2), (7, 1), (2, 8), (3, 5)])
def test_upsample_is_nearest(grid, factor):
  rng = np.random.default_rng(grid * 10 + factor)
  coarse = (rng.random((3, grid * grid)) < 0.5).astype(np.float32)
  up = np.asarray(jax.jit(masking.upsample_mask, static_argnums=(1, 2))(
      jnp.asarray(coarse), grid, factor))
  side = grid * factor
  assert up.shape == (3, side * side)
  square = coarse.reshape(3, grid, grid)
  by_repeat = np.repeat(np.repeat(square, factor, axis=1), factor, axis=2)
  by_kron = np.stack([np.kron(s, np.ones((factor, factor), np.float32)) for s in square])
  np.testing.assert_array_equal(up.reshape(3, side, side), by_repeat)
  np.testing.assert_array_equal(up.reshape(3, side, side), by_kron)
  # The reference: F.interpolate(mask (1, 1, g, g), size=(s, s), mode='nearest').
  by_torch = torch.nn.functional.interpolate(torch.from_numpy(square)[:, None],
                                             size=(side, side), mode="nearest")
  np.testing.assert_array_equal(up, by_torch.reshape(3, side * side).numpy())


# ---------------------------------------------------------------------------
# partner, mix, unmix

def test_partner_one_group_is_reference_flip():
  rng = np.random.default_rng(0)
  for b in (1, 2, 3, 4, 7):
    x = rng.standard_normal((b, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(masking.partner(jnp.asarray(x), 1)),
                                  torch.from_numpy(x).flip(0).numpy())


def test_partner_stays_inside_each_group():
  b, g = 24, 4
  ids = jnp.arange(b, dtype=jnp.int32)
  got = np.asarray(masking.partner(ids, g))
  s = b // g
  want = np.array([(i // s) * s + (s - 1 - i % s) for i in range(b)])
  np.testing.assert_array_equal(got, want)
  assert np.all(got // s == np.arange(b) // s)
  # An involution without fixed points for even group sizes.
  np.testing.assert_array_equal(got[got], np.arange(b))
  assert not np.any(got == np.arange(b))
  with pytest.raises(ValueError, match="25 is not divisible into 4"):
    masking.partner(jnp.arange(25), 4)


def test_mix_one_group_equals_reference_formula():
  rng = np.random.default_rng(1)
  b, l, c = 5, 16, 6
  x = rng.standard_normal((b, l, c)).astype(np.float32)
  m = binary_mask(rng, 1, l)
  got = np.asarray(_mix(jnp.asarray(x), jnp.asarray(m)))
  tx, tm = torch.from_numpy(x), torch.from_numpy(m).reshape(1, l, 1)
  want = (tx * (1 - tm) + tx.flip(0) * tm).numpy()     # mmpretrain's mixing line
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("b,g", [(4, 1), (5, 1), (12, 3), (16, 8), (32, 8)])
def test_mix_twice_and_unmix_identities(b, g):
  rng = np.random.default_rng(b * 100 + g)
  l, c = 16, 4
  x = jnp.asarray(rng.standard_normal((b, l, c)).astype(np.float32))
  m = jnp.asarray(binary_mask(rng, g, l))
  mixed = _mix(x, m)
  assert not np.array_equal(np.asarray(mixed), np.asarray(x)) or b // g == 1
  # Swapping the same cells twice gives the original back, bit for bit.
  np.testing.assert_array_equal(np.asarray(_mix(mixed, m)), np.asarray(x))
  # A perfect decoder: seq1[i] reconstructs image i, seq2[i] its partner; unmix
  # then returns every image exactly.
  np.testing.assert_array_equal(np.asarray(_unmix(x, masking.partner(x, g), m)), np.asarray(x))
  # Feeding the mixed tokens as both sequences: at m=1 seq1[i] holds the partner's
  # tokens, at m=0 seq2[partner] holds the partner's own; so unmix gives partner(x).
  np.testing.assert_array_equal(np.asarray(_unmix(mixed, mixed, m)),
                                np.asarray(masking.partner(x, g)))
  # Each group is the reference's unmix `x1 * m + x2.flip(0) * (1 - m)` on its own.
  s1 = rng.standard_normal((b, l, c)).astype(np.float32)
  s2 = rng.standard_normal((b, l, c)).astype(np.float32)
  got = np.asarray(_unmix(jnp.asarray(s1), jnp.asarray(s2), m))
  s = b // g
  for k in range(g):
    t1, t2 = torch.from_numpy(s1[k * s:(k + 1) * s]), torch.from_numpy(s2[k * s:(k + 1) * s])
    tm = torch.from_numpy(np.asarray(m)[k]).reshape(1, l, 1)
    np.testing.assert_array_equal(got[k * s:(k + 1) * s],
                                  (t1 * tm + t2.flip(0) * (1 - tm)).numpy())


# ---------------------------------------------------------------------------
# window partition and the same-source bias

def windows_by_loops(token_mask, resolution, window):
  g = token_mask.shape[0]
  grid = token_mask.reshape(g, resolution, resolution)
  out = []
  for wy in range(resolution // window):
    for wx in range(resolution // window):
      cells = [grid[:, wy * window + y, wx * window + x]
               for y in range(window) for x in range(window)]
      out.append(np.stack(cells, axis=-1))
  return np.stack(out, axis=1)


@pytest.mark.parametrize("resolution,window", [(16, 4), (56, 14), (28, 14), (14, 14),
                                                (7, 7), (12, 3)])
def test_window_partition_mask(resolution, window):
  rng = np.random.default_rng(resolution + window)
  # Distinct values per token so any permutation error shows.
  tm = rng.permutation(2 * resolution * resolution).astype(np.float32).reshape(2, -1)
  got = np.asarray(masking.window_partition_mask(jnp.asarray(tm), resolution, window))
  n = (resolution // window) ** 2
  assert got.shape == (2, n, window * window)
  np.testing.assert_array_equal(got, windows_by_loops(tm, resolution, window))


def test_same_source_bias():
  rng = np.random.default_rng(5)
  wm = (rng.random((2, 3, 9)) < 0.5).astype(np.float32)
  bias = np.asarray(masking.same_source_bias(jnp.asarray(wm)))
  assert bias.shape == (2, 3, 9, 9) and bias.dtype == np.float32
  agree = wm[..., :, None] == wm[..., None, :]
  assert np.all(bias[agree] == 0.0)
  assert np.all(bias[~agree] == np.float32(-1e30))
  assert agree.any() and (~agree).any()
  # mmpretrain: logits - 1e30 * (1 - (m m^T + (1-m)(1-m)^T)).
  m = torch.from_numpy(wm).reshape(6, 1, 1, 9)
  mask_new = 1 - (m * m.transpose(2, 3) + (1 - m) * (1 - m).transpose(2, 3))
  np.testing.assert_array_equal(bias.reshape(6, 9, 9), (-1e30 * mask_new).reshape(6, 9, 9).numpy())
  half = np.asarray(masking.same_source_bias(jnp.asarray(wm), jnp.float16))
  assert half.dtype == np.float16
  assert np.all(half[agree] == 0) and np.all(half[~agree] == np.float16(-65500.0))
  # After softmax, a query puts exactly zero weight on the other source's keys.
  logits = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
  attn = np.asarray(jax.nn.softmax(jnp.asarray(logits) + bias, axis=-1))
  assert np.all(attn[~agree] == 0.0)
  np.testing.assert_allclose(attn.sum(-1), 1.0, rtol=1e-6)


# ---------------------------------------------------------------------------
# Pairing never leaves a device (8 fake CPU devices, conftest.py).

def _mesh():
  devices = jax.devices()
  assert len(devices) == 8, "conftest.py should provide 8 fake CPU devices"
  return Mesh(np.array(devices), ("data",))


def _compiled(fn, mesh, *args):
  shard = NamedSharding(mesh, P("data"))
  jitted = jax.jit(fn, in_shardings=(shard,) * len(args), out_shardings=shard)
  placed = [jax.device_put(a, shard) for a in args]
  return jitted(*placed), jitted.lower(*placed).compile().as_text()


@pytest.mark.parametrize("b,g", [(16, 8), (32, 8)])
def test_sharded_mix_and_unmix_equal_unsharded_without_collectives(b, g):
  mesh = _mesh()
  rng = np.random.default_rng(b)
  l, c = 64, 8
  x = jnp.asarray(rng.standard_normal((b, l, c)).astype(np.float32))
  s2 = jnp.asarray(rng.standard_normal((b, l, c)).astype(np.float32))
  m = jnp.asarray(binary_mask(rng, g, l))

  out, hlo = _compiled(masking.mix, mesh, x, m)
  assert len(out.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(out), np.asarray(_mix(x, m)))
  found = [op for op in COLLECTIVES if op in hlo]
  assert not found, f"mix communicates across devices: {found}"

  out, hlo = _compiled(masking.unmix, mesh, x, s2, m)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(_unmix(x, s2, m)))
  found = [op for op in COLLECTIVES if op in hlo]
  assert not found, f"unmix communicates across devices: {found}"


def test_hlo_check_sees_cross_device_pairing():
  """Control for the test above: the reference's whole-batch flip does pair
  images on different devices, and the same HLO check catches it."""
  mesh = _mesh()
  x = jnp.arange(16 * 4 * 2, dtype=jnp.float32).reshape(16, 4, 2)
  m = jnp.ones((1, 4), jnp.float32)
  out, hlo = _compiled(lambda a: masking.mix(a, m), mesh, x)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(x)[::-1])
  assert any(op in hlo for op in COLLECTIVES)
