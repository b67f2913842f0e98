"""Parity with mmpretrain 1.2.0 (run live) on random weights converted by our
converter: same input, same mask.

The tiny arch runs in float64 in both frameworks (torch `.double()`, JAX under
`jax.enable_x64`), so the only difference left is the order of float64
roundings: encoder features, decoder outputs, logits and the loss must agree
within 10x the largest error measured here, and so must *every* parameter
gradient. Any change of a constant or formula moves them by far more (a
decoder LayerNorm eps of 1e-5 for 1e-6 moves the decoder outputs by ~4e-6).
Base (224 px) runs in float32, as training does, at a few times float32's
noise. Errors are max|ours - reference| / max|reference| per tensor (the
loss: relative), the largest over a test's tensors.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mixmim_jax.model import api, tables
from mixmim_jax.model.arch import model_config  # noqa: E402
from mixmim_jax.tools import torch_reference as ref  # noqa: E402
from mixmim_jax.weights import torch_format, torch_io
import torch_helpers as th  # noqa: E402

TINY = dict(arch=dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)),
            window_sizes=(8, 8, 4, 2), img_size=64, decoder_dim=64, decoder_depth=2,
            decoder_heads=2, num_classes=10)

# Measured on this machine (2-core Intel Xeon, XLA:CPU at -O0, torch 2.13 CPU),
# the largest over the tests of this file. float64, tiny: outputs (features,
# decoder, logits, loss) 2.4e-15, gradients 1.1e-14 (every tensor; the
# smallest gradients have the largest relative error).
NOISE = {"float64": dict(outputs=2.4e-15, gradients=1.1e-14),
         # float32, base: outputs 1.3e-6 (decoder), gradients 4.8e-6.
         "float32": dict(outputs=1.3e-6, gradients=4.8e-6)}
# float64: 10x its noise. float32: 4x (its roundings vary more between CPUs).
BOUND = {"float64": {k: 10 * v for k, v in NOISE["float64"].items()},
         "float32": {k: 4 * v for k, v in NOISE["float32"].items()}}


def tiny_config(**kw):
  fields = dict(TINY, **kw)
  return model_config(fields.pop("arch"), **fields)


def relative_error(ours, theirs, what):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs {theirs.shape}"
  return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def assert_close(ours, theirs, what, rtol=1e-4):
  """max|ours - theirs| <= rtol x max|theirs|."""
  err = relative_error(ours, theirs, what)
  assert err <= rtol, f"{what}: max|diff| / max|ref| = {err:.3g} > {rtol:.3g}"
  return err


def coarse_mask(cfg, seed):
  rng = np.random.default_rng(seed)
  n = cfg.num_mask_cells
  m = np.zeros(n, np.float32)
  m[rng.permutation(n)[: n // 2]] = 1.0    # floor(n * 0.5), the reference's count
  return m


@functools.partial(jax.jit, static_argnums=0)
def _ours(cfg, params, images, mask):
  """Encoder features, the pretraining outputs and every gradient of the loss."""
  def loss(p):
    out = api.pretrain_forward(cfg, p, images, mask)
    return out["loss"], out
  (_, out), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return api.encode(cfg, params["encoder"], images, mask), out, grads


def _copy_decoder_table(model, cfg, layout):
  """Our decoder sin-cos table into the reference, after checking that its own
  equals ours to float32's rounding: in float64 a float32 rounding of the
  table would be the largest difference left."""
  table = tables.sincos_2d(cfg.mask_grid, cfg.decoder_dim, layout)
  theirs = model.neck.decoder_pos_embed.detach().numpy()[0]
  if layout == "row_col":     # mmpretrain's own table
    np.testing.assert_allclose(theirs, table, rtol=0, atol=1e-6)
  with torch.no_grad():
    model.neck.decoder_pos_embed.copy_(torch.from_numpy(table)[None])


def run_pretrain_parity(cfg, batch, seed, fmt=torch_format.MMPRETRAIN, double=True):
  """Asserts encoder, decoder, loss and gradient parity; returns the errors."""
  pos_layout = "row_col" if fmt == torch_format.MMPRETRAIN else "col_row"
  model = ref.build_pretrain_model(cfg, seed=seed)
  th.randomize_(model, seed, pos_layout, cfg)
  # The authors' decoder table has their encoder table's (col, row) order.
  _copy_decoder_table(model, cfg, pos_layout)
  if fmt == torch_format.OFFICIAL:
    ref.use_authors_decoder_norms(model)
  ln_eps = model.neck.ln1.eps        # the reference's decoder LayerNorm, not ours
  sd = th.numpy_state_dict(model)
  checkpoint = ({"state_dict": sd} if fmt == torch_format.MMPRETRAIN
                else {"model": th.to_official_state_dict(sd, cfg)})
  got_cfg, kind, params, got_fmt = torch_io.import_state_dict(
      checkpoint, decoder_heads=cfg.decoder_heads)
  assert (got_fmt, kind) == (fmt, "pretrain")
  assert got_cfg.replace(num_classes=cfg.num_classes) == cfg.replace(
      pos_embed=pos_layout, decoder_pos_embed=pos_layout, decoder_ln_eps=ln_eps)
  cfg = got_cfg

  rng = np.random.default_rng(seed + 1)
  images = rng.standard_normal((batch, cfg.img_size, cfg.img_size, 3))
  mask = coarse_mask(cfg, seed + 2)
  dtype = np.float64 if double else np.float32
  if double:
    model.double()
  images = images.astype(dtype)

  # Reference: encoder, decoder, loss, gradients.
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  with th.fixed_mask(mask):
    latent, mask_s4 = model.backbone(x)
  np.testing.assert_array_equal(mask_s4.numpy().reshape(-1), mask)
  x_rec = model.neck(latent, mask_s4)
  loss = model.head.loss(x_rec, x, mask_s4)
  model.zero_grad()
  loss.backward()
  ref_grads = {k: p.grad.numpy() for k, p in model.named_parameters() if p.grad is not None}

  # Ours, one mask group == the reference's whole-batch mask.
  with jax.enable_x64(double):
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    ours_latent, out, grads = _ours(cfg, params, jnp.asarray(images), jnp.asarray(mask)[None])
    assert out["loss"].dtype == dtype and grads["decoder"]["pred"]["kernel"].dtype == dtype
    out, grads = jax.device_get((out, grads))
  errors = {"encoder features": relative_error(ours_latent, latent.detach().numpy(), "latent"),
            "decoder seq1": relative_error(out["seq1"], x_rec[:batch].detach().numpy(), "seq1"),
            "decoder seq2": relative_error(out["seq2"], x_rec[batch:].detach().numpy(), "seq2"),
            "loss": abs(float(out["loss"]) / float(loss) - 1)}
  grad_sd = th.exact_layout(lambda g: torch_format.flax_to_state_dict(
      g, cfg, kind, fmt, with_buffers=False), grads, parts=3 if double else 1)
  if fmt == torch_format.OFFICIAL:    # the reference's in the authors' names and order
    ref_grads = th.to_official_state_dict(ref_grads, cfg)
  assert set(grad_sd) == set(ref_grads)        # every trained tensor
  errors["gradients"] = max(relative_error(grad_sd[k], ref_grads[k], f"grad {k}")
                            for k in grad_sd)
  return errors


def run_classifier_parity(cfg, batch, seed, double=True):
  model = ref.build_classifier(cfg, seed=seed)
  th.randomize_(model, seed, "row_col", cfg)
  cfg2, kind, params, _ = torch_io.import_state_dict({"state_dict": th.numpy_state_dict(model)})
  assert kind == "classifier" and cfg2.num_classes == cfg.num_classes
  dtype = np.float64 if double else np.float32
  if double:
    model.double()
  images = np.random.default_rng(seed).standard_normal(
      (batch, cfg.img_size, cfg.img_size, 3)).astype(dtype)
  with torch.no_grad():
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    feats = model.backbone(x)[0]
    logits = model.head(model.neck(model.backbone(x)) if model.with_neck else (feats,))
  with jax.enable_x64(double):
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    ours = np.asarray(api.classify(cfg2, params, jnp.asarray(images)))
    tokens = np.asarray(api.encode(cfg2, params["encoder"], jnp.asarray(images)))
  assert ours.dtype == dtype
  return {"logits": relative_error(ours, logits.numpy(), "logits"),
          "pooled features": relative_error(tokens.mean(axis=1), feats.numpy(), "features")}


def check(errors, precision, name):
  print(f"\n{name} ({precision}): " + ", ".join(f"{k} {v:.2g}" for k, v in errors.items()))
  for what, err in errors.items():
    bound = BOUND[precision]["gradients" if what == "gradients" else "outputs"]
    assert err <= bound, f"{name}: {what} max|diff| / max|ref| = {err:.3g} > {bound:.3g}"


def test_tiny_pretrain_parity():
  check(run_pretrain_parity(tiny_config(), batch=4, seed=0), "float64", "tiny pretrain")


def test_tiny_pretrain_parity_odd_batch():
  # With an odd batch the middle image is its own partner, as in the reference.
  check(run_pretrain_parity(tiny_config(), batch=3, seed=10), "float64", "odd batch")


def test_tiny_pretrain_parity_authors_format():
  """Authors' state dict (keys under `model`, timm merge order, MAE col/row sin-cos
  tables in encoder and decoder, their decoder LayerNorms: torch's default eps),
  made by renaming mmpretrain's; test_authors.py runs checkpoints of their own code."""
  check(run_pretrain_parity(tiny_config(), batch=4, seed=20, fmt=torch_format.OFFICIAL),
        "float64", "authors' format")


def test_tiny_classifier_parity():
  check(run_classifier_parity(tiny_config(), batch=3, seed=30), "float64", "tiny classifier")


@pytest.mark.slow_base
def test_base_pretrain_parity():
  check(run_pretrain_parity(model_config("base"), batch=2, seed=40, double=False), "float32",
        "base pretrain")


@pytest.mark.slow_base
def test_base_classifier_parity():
  check(run_classifier_parity(model_config("base", num_classes=1000), batch=2, seed=50,
                              double=False), "float32", "base classifier")
