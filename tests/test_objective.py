"""patchify / pixel_target / reconstruction_loss (objective.py) against the
references' PyTorch formulas (mmpretrain MAEPretrainHead / MixMIMPretrainHead)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixmim_jax.model import objective

torch = pytest.importorskip("torch")

_patchify = jax.jit(objective.patchify, static_argnums=1)
_unpatchify = jax.jit(objective.unpatchify, static_argnums=(1, 2))
_target = jax.jit(objective.pixel_target, static_argnums=(1, 2))
_loss = jax.jit(objective.reconstruction_loss)


def torch_patchify(nchw: np.ndarray, p: int) -> np.ndarray:
  """mmpretrain MAEPretrainHead.patchify, verbatim."""
  imgs = torch.from_numpy(nchw)
  h = w = imgs.shape[2] // p
  x = imgs.reshape(shape=(imgs.shape[0], imgs.shape[1], h, p, w, p))
  x = torch.einsum("nchpwq->nhwpqc", x)
  return x.reshape(shape=(imgs.shape[0], h * w, p ** 2 * imgs.shape[1])).numpy()


def images(seed, b=3, size=64, c=3, scale=1.0, offset=0.0):
  rng = np.random.default_rng(seed)
  return (offset + scale * rng.standard_normal((b, size, size, c))).astype(np.float32)


@pytest.mark.parametrize("size,p,c", [(64, 32, 3), (224, 32, 3), (32, 4, 3), (48, 16, 1)])
def test_patchify_matches_reference_einsum_and_round_trips(size, p, c):
  x = images(size + p, size=size, c=c)
  ours = np.asarray(_patchify(jnp.asarray(x), p))
  assert ours.shape == (3, (size // p) ** 2, p * p * c)
  np.testing.assert_array_equal(ours, torch_patchify(x.transpose(0, 3, 1, 2).copy(), p))
  np.testing.assert_array_equal(np.asarray(_unpatchify(jnp.asarray(ours), p, c)), x)


def test_patchify_order_by_hand():
  # Patch k = row-major patch index; value (i, j, ch) inside it at (i*p + j)*C + ch.
  x = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
  got = np.asarray(_patchify(jnp.asarray(x), 4))
  assert got[1, 2, (1 * 4 + 3) * 3 + 2] == x[1, 4 + 1, 0 + 3, 2]
  assert got[0, 1, (2 * 4 + 0) * 3 + 0] == x[0, 2, 4, 0]
  with pytest.raises(ValueError, match="not divisible into 5x5"):
    objective.patchify(jnp.zeros((1, 8, 8, 3)), 5)


def test_pixel_target_norm_pix_is_bessel_corrected_with_eps_1e6():
  # Patches of very different scales, including an almost constant one where the
  # eps and the variance estimator dominate.
  x = images(0, b=2, size=64, scale=1.0, offset=3.0)
  x[0, :32, :32] = 5.0 + 1e-3 * x[0, :32, :32]
  x[1, 32:, 32:] *= 40.0
  got = np.asarray(_target(jnp.asarray(x), 32, True))
  t = torch.from_numpy(torch_patchify(x.transpose(0, 3, 1, 2).copy(), 32))
  mean, var = t.mean(dim=-1, keepdim=True), t.var(dim=-1, keepdim=True)   # torch: unbiased
  want = ((t - mean) / (var + 1.e-6) ** .5).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Both choices matter at these tolerances: a biased variance, or another eps,
  # would miss the reference.
  n = 32 * 32 * 3
  t64 = t.double()
  biased = ((t64 - t64.mean(-1, keepdim=True)) /
            (t64.var(-1, keepdim=True) * (n - 1) / n + 1e-6) ** .5).numpy()
  assert np.max(np.abs(got - biased)) > 1e-4
  other_eps = ((t64 - t64.mean(-1, keepdim=True)) / (t64.var(-1, keepdim=True) + 1e-5) ** .5
               ).numpy()
  assert np.max(np.abs(got - other_eps)) > 1e-2
  # Without norm_pix the target is the raw patches.
  np.testing.assert_array_equal(np.asarray(_target(jnp.asarray(x), 32, False)), t.numpy())


@pytest.mark.parametrize("b", [4, 3])
def test_reconstruction_loss_equals_reference_unmix_formula(b):
  rng = np.random.default_rng(b)
  l, d = 16, 48
  seq1 = rng.standard_normal((b, l, d)).astype(np.float32)
  seq2 = rng.standard_normal((b, l, d)).astype(np.float32)
  target = rng.standard_normal((b, l, d)).astype(np.float32)
  mask = np.zeros((1, l), np.float32)
  mask[0, rng.permutation(l)[: l // 2]] = 1.0
  loss, pred = _loss(jnp.asarray(seq1), jnp.asarray(seq2), jnp.asarray(target),
                     jnp.asarray(mask))
  # mmpretrain MixMIMPretrainHead.loss: x_rec = cat(seq1, seq2);
  # unmix = x1 * mask + x2.flip(0) * (1 - mask); MSE over everything.
  m = mask.reshape(1, l, 1).astype(np.float64)
  unmixed = seq1 * m + seq2[::-1] * (1 - m)
  np.testing.assert_array_equal(np.asarray(pred), unmixed.astype(np.float32))
  np.testing.assert_allclose(float(loss), np.mean((unmixed - target) ** 2), rtol=1e-6)
  # And via torch's MSE, as PixelReconstructionLoss(criterion='L2') computes it.
  tm = torch.from_numpy(mask).reshape(1, l, 1)
  t_unmix = torch.from_numpy(seq1) * tm + torch.from_numpy(seq2).flip(0) * (1 - tm)
  ref = torch.nn.functional.mse_loss(t_unmix, torch.from_numpy(target))
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)


def test_reconstruction_loss_groups_are_independent_references():
  """With G groups the loss is the mean of G reference losses of equal size."""
  rng = np.random.default_rng(9)
  g, s, l, d = 3, 4, 9, 12
  seq1, seq2, target = (rng.standard_normal((g * s, l, d)).astype(np.float32) for _ in range(3))
  mask = (rng.random((g, l)) < 0.5).astype(np.float32)
  loss, _ = _loss(jnp.asarray(seq1), jnp.asarray(seq2), jnp.asarray(target), jnp.asarray(mask))
  per_group = []
  for k in range(g):
    sl = slice(k * s, (k + 1) * s)
    m = mask[k].reshape(1, l, 1)
    unmixed = seq1[sl] * m + seq2[sl][::-1] * (1 - m)
    per_group.append(np.mean((unmixed.astype(np.float64) - target[sl]) ** 2))
  np.testing.assert_allclose(float(loss), np.mean(per_group), rtol=1e-5)
