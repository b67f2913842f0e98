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


def float32_parts(x, parts: int = 3) -> list[np.ndarray]:
  """float32 arrays that sum to float64 `x` within 2**-72 of it (three parts):
  a float64 tensor through a layout conversion that works in float32."""
  x, out = np.asarray(x, np.float64), []
  for _ in range(parts):
    out.append(x.astype(np.float32))
    x = x - out[-1]
  return out


def exact_layout(convert, tree_or_state_dict, parts: int = 3):
  """`convert` (a torch_format layout conversion, which casts to float32)
  applied to a float64 tree or state dict without losing its precision: the
  conversions are re-layouts (transposes, permutations), so they commute with
  the float32 split of `float32_parts`. A state dict's fixed tables and
  indices (FIXED, which the conversion checks and drops) go whole into every part."""
  import jax  # pylint: disable=import-outside-toplevel
  if parts == 1:
    return convert(tree_or_state_dict)

  def split(path, a):
    key = jax.tree_util.keystr(path)
    if any(f in key for f in FIXED) or not np.issubdtype(np.asarray(a).dtype, np.floating):
      return [a] * parts
    return float32_parts(a, parts)

  pieces = jax.tree_util.tree_map_with_path(split, tree_or_state_dict)
  converted = [convert(jax.tree.map(lambda p, i=i: p[i], pieces,
                                    is_leaf=lambda v: isinstance(v, list)))
               for i in range(parts)]
  return jax.tree.map(lambda *xs: sum(np.asarray(x, np.float64) for x in xs), *converted)


def share_tables_(model: torch.nn.Module, cfg: ModelConfig) -> float:
  """Our fixed sin-cos tables (encoder and, in pretraining, decoder; mmpretrain's
  row/col layout) into the reference, after checking that its own equal them
  to float32's rounding; returns the largest difference. mmpretrain computes
  them in float32 (its own roundings), so in a float64 comparison they would
  otherwise be the largest difference left."""
  worst = 0.0
  with torch.no_grad():
    for name, buf in list(model.named_parameters()) + list(model.named_buffers()):
      if name.endswith("backbone.absolute_pos_embed") and buf.abs().max() > 0:
        table = tables.sincos_2d(cfg.patch_grid, cfg.embed_dim, "row_col")
      elif name.endswith("neck.decoder_pos_embed"):
        table = tables.sincos_2d(cfg.mask_grid, cfg.decoder_dim, "row_col")
      else:
        continue
      diff = float(np.abs(buf.detach().numpy()[0] - table).max())
      assert diff <= 1e-6, f"{name}: mmpretrain's table differs from ours by {diff:.3g}"
      worst = max(worst, diff)
      buf.copy_(torch.from_numpy(table)[None])
  return worst


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


# Sample sizes that tell a 5 % error in the scale of a law (see below).
NORMAL_SAMPLE = 20000
UNIFORM_SAMPLE = 1000


def looks_uniform(x: np.ndarray) -> bool:
  """The largest |x| of a zero-mean uniform draw is sqrt(3) = 1.73 std; of
  >= 500 normal values it is above 2 std (all below has probability < 1e-10)."""
  x = np.asarray(x, np.float64).ravel()
  return bool(np.abs(x).max() < 2 * x.std())


def assert_same_distribution(name: str, ours: np.ndarray, theirs: np.ndarray,
                             require_power: bool = True) -> None:
  """`ours` was drawn like `theirs` (both pooled over independent draws): both
  zero, both the same constant, or both zero-mean random of one family
  (uniform or normal) and one scale, within sampling error, from samples large
  enough to tell a 5 % error in that scale (asserted):

  normal: sample stds within 4 sigma, sigma = sqrt(1/(2 n_o) + 1/(2 n_t)) the
    relative error of their ratio; a 5 % error is 7 sigma away when
    sigma <= 0.05 / 7, i.e. n >= 19600 values on each side.
  uniform: largest |x| within 12/n_o + 12/n_t (each falls short of the bound
    by Exp(1)/n: more than 12/n has probability 6e-6); a 5 % error is caught
    for n >= 500. Their stds too, as for a normal law.
  `require_power=False` compares smaller samples at those tolerances.
  """
  ours, theirs = np.asarray(ours, np.float64).ravel(), np.asarray(theirs, np.float64).ravel()
  if not theirs.any():
    assert not ours.any(), f"{name}: reference starts at zero, ours has std {ours.std():.3g}"
    return
  if np.all(theirs == theirs[0]):
    np.testing.assert_array_equal(ours, theirs[0], err_msg=f"{name}: reference is constant")
    return
  n_o, n_t = ours.size, theirs.size
  std_o, std_t = ours.std(), theirs.std()
  assert std_o > 0, f"{name}: ours is constant, reference has std {std_t:.3g}"
  uniform_o, uniform_t = looks_uniform(ours), looks_uniform(theirs)
  assert uniform_o == uniform_t, (
      f"{name}: ours looks {'uniform' if uniform_o else 'normal'}, the reference "
      f"{'uniform' if uniform_t else 'normal'} (max|x| / std {np.abs(ours).max() / std_o:.2f} "
      f"vs {np.abs(theirs).max() / std_t:.2f})")
  sigma = np.sqrt(1 / (2 * n_o) + 1 / (2 * n_t))
  if uniform_t:
    bound_tol = 12 / n_o + 12 / n_t
    assert not require_power or (bound_tol <= 0.025 and min(n_o, n_t) >= 500), \
        f"{name}: {n_o} / {n_t} values cannot tell a 5 % error in a uniform bound"
    bound_o, bound_t = np.abs(ours).max(), np.abs(theirs).max()
    assert abs(bound_o / bound_t - 1) <= bound_tol, \
        f"{name}: uniform bound {bound_o:.5g} vs reference {bound_t:.5g} (tolerance {bound_tol:.2g})"
  else:
    assert not require_power or 7 * sigma <= 0.05, \
        f"{name}: {n_o} / {n_t} values cannot tell a 5 % error in a normal std"
  assert abs(std_o / std_t - 1) <= 4 * sigma, \
      f"{name}: std {std_o:.5g} vs reference {std_t:.5g} (n={n_o}/{n_t}, tolerance {4 * sigma:.3f})"
  for label, x in (("ours", ours), ("reference", theirs)):
    assert abs(x.mean()) <= 5 * x.std() / np.sqrt(x.size), f"{name}: {label} mean {x.mean():.3g}"


def draws_needed(theirs: np.ndarray) -> int:
  """Independent draws of a tensor like `theirs` (one draw) that make a
  sample large enough for assert_same_distribution."""
  theirs = np.asarray(theirs)
  if not theirs.any() or np.all(theirs == theirs.ravel()[0]):
    return 1
  need = UNIFORM_SAMPLE if looks_uniform(theirs) and theirs.size >= 64 else NORMAL_SAMPLE
  return -(-need // theirs.size)
