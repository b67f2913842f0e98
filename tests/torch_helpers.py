"""Shared helpers for tests that run the PyTorch reference (mmpretrain 1.2.0)."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from mixmim_jax.model import tables
from mixmim_jax.model.arch import ModelConfig

FIXED = ("absolute_pos_embed", "decoder_pos_embed", "relative_position_index")


def randomize_(model: torch.nn.Module, seed: int, pos_layout: str | None = "row_col",
               cfg: ModelConfig | None = None) -> None:
  """Fill every trained tensor with random values of a sensible scale, so that
  every parameter (norm scales and biases included) influences the output."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if any(f in name for f in FIXED):
        continue
      if name.endswith("relative_position_bias_table") or name.endswith("mask_token"):
        scale, base = 0.5, 0.0
      elif p.ndim == 1 and ("ln" in name or "norm" in name) and name.endswith("weight"):
        scale, base = 0.2, 1.0
      elif p.ndim == 1:
        scale, base = 0.05, 0.0
      else:
        scale, base = (1.0 / p[0].numel()) ** 0.5, 0.0
      p.copy_(base + scale * torch.randn(p.shape, generator=gen))
    if pos_layout is not None and cfg is not None:
      table = tables.sincos_2d(cfg.patch_grid, cfg.embed_dim, pos_layout)
      for name, buf in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith("backbone.absolute_pos_embed"):
          buf.copy_(torch.from_numpy(table)[None])


def numpy_state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def fixed_mask(coarse: np.ndarray):
  """Make the reference's `random_masking` choose exactly the cells of `coarse`
  (1-D, 0/1): its noise is argsorted and the first floor(n*r) cells are masked,
  so noise that puts the masked cells first (in any order) reproduces the mask.
  Requires floor(n * mask_ratio) == coarse.sum()."""
  noise = torch.from_numpy(np.where(coarse > 0, 0.0, 1.0).astype(np.float32))
  noise = noise + torch.linspace(0, 0.5, noise.numel())
  real_rand = torch.rand

  def fake_rand(*shape, **kwargs):
    return noise.reshape(shape).to(kwargs.get("device") or "cpu")

  torch.rand = fake_rand
  try:
    yield
  finally:
    torch.rand = real_rand


def merge_permutation_empirical(channels: int) -> np.ndarray:
  """P with timm_concat[i] = unfold[P[i]] for a 2x2 patch merge, measured by running
  both orderings on a tensor of distinct values (independent of our converter)."""
  x = torch.arange(channels * 4, dtype=torch.float32).reshape(1, channels, 2, 2)
  unfold = torch.nn.functional.unfold(x, kernel_size=2, stride=2)[0, :, 0]
  nhwc = x.permute(0, 2, 3, 1)
  timm = torch.cat([nhwc[:, 0::2, 0::2], nhwc[:, 1::2, 0::2], nhwc[:, 0::2, 1::2],
                    nhwc[:, 1::2, 1::2]], -1).reshape(-1)
  lookup = {float(v): i for i, v in enumerate(unfold)}
  return np.array([lookup[float(v)] for v in timm])


def to_official_state_dict(sd: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
  """Rewrite an mmpretrain MixMIM state dict in the authors' (Sense-X) key names and
  timm patch-merging order, so a model that computes the same function results."""
  out = {}
  for key, value in sd.items():
    k = key
    for a, b in (("backbone.", ""), ("neck.decoder_blocks", "decoder_blocks"),
                 ("neck.ln1.", "decoder_norm."), ("neck.", ""),
                 ("patch_embed.projection", "patch_embed.proj"), (".ln1.", ".norm1."),
                 (".ln2.", ".norm2."), ("ffn.layers.0.0", "mlp.fc1"), ("ffn.layers.1", "mlp.fc2"),
                 ("head.fc.", "head.")):
      k = k.replace(a, b)
    if ".downsample." in k:
      stage = int(k.split(".")[1])
      perm = merge_permutation_empirical(cfg.stage_dims[stage])
      value = value[..., perm] if k.endswith("reduction.weight") else value[perm]
    out[k] = value
  return out


def assert_same_distribution(name: str, ours: np.ndarray, theirs: np.ndarray) -> None:
  """`ours` was drawn like `theirs`: both zero, both the same constant, or both
  zero-mean random of one family (uniform or normal) and one scale, within
  sampling error (n values: a sample std's relative error is about 1/sqrt(2n))."""
  ours, theirs = np.asarray(ours, np.float64).ravel(), np.asarray(theirs, np.float64).ravel()
  assert ours.shape == theirs.shape, f"{name}: {ours.shape} vs {theirs.shape}"
  if not theirs.any():
    assert not ours.any(), f"{name}: reference starts at zero, ours has std {ours.std():.3g}"
    return
  if np.all(theirs == theirs[0]):
    np.testing.assert_array_equal(ours, theirs[0], err_msg=f"{name}: reference is constant")
    return
  n = theirs.size
  std_o, std_t = ours.std(), theirs.std()
  assert std_o > 0, f"{name}: ours is constant, reference has std {std_t:.3g}"
  tol = 6 / np.sqrt(n) + 0.01
  assert abs(std_o / std_t - 1) <= tol, \
      f"{name}: std {std_o:.4g} vs reference {std_t:.4g} (n={n}, tolerance {tol:.2f})"
  for label, x in (("ours", ours), ("reference", theirs)):
    assert abs(x.mean()) <= 6 * x.std() / np.sqrt(n), f"{name}: {label} mean {x.mean():.3g}"
  if n >= 500:
    # The largest |x| of a uniform draw is sqrt(3) = 1.73 std; of >= 500 normal
    # values it is above 2 std (all below has probability < 1e-10).
    uniform_o = np.abs(ours).max() < 2 * std_o
    uniform_t = np.abs(theirs).max() < 2 * std_t
    assert uniform_o == uniform_t, (
        f"{name}: ours looks {'uniform' if uniform_o else 'normal'}, the reference "
        f"{'uniform' if uniform_t else 'normal'} (max|x| / std {np.abs(ours).max() / std_o:.2f} "
        f"vs {np.abs(theirs).max() / std_t:.2f})")
    if uniform_t:
      bound_o, bound_t = np.abs(ours).max(), np.abs(theirs).max()
      assert abs(bound_o / bound_t - 1) <= 20 / n + 0.01, \
          f"{name}: uniform bound {bound_o:.4g} vs reference {bound_t:.4g}"
