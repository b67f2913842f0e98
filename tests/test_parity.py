"""Parity with mmpretrain 1.2.0 (run live) on random weights converted by our
converter: same input, same mask, float32.

Tolerances (issue 2): loss to 1e-5 relative; tensors max|ours - ref| <= 1e-4 max|ref|.
"""
from __future__ import annotations

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


def tiny_config(**kw):
  fields = dict(TINY, **kw)
  return model_config(fields.pop("arch"), **fields)


def assert_close(ours, theirs, what, rtol=1e-4):
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs {theirs.shape}"
  err = np.max(np.abs(ours - theirs))
  scale = np.max(np.abs(theirs))
  assert err <= rtol * scale, f"{what}: max|diff| {err:.3g} > {rtol} x max|ref| {scale:.3g}"


def coarse_mask(cfg, seed):
  rng = np.random.default_rng(seed)
  n = cfg.num_mask_cells
  m = np.zeros(n, np.float32)
  m[rng.permutation(n)[: n // 2]] = 1.0    # floor(n * 0.5), the reference's count
  return m


def run_pretrain_parity(cfg, batch, seed, fmt=torch_format.MMPRETRAIN):
  """Returns nothing; asserts encoder, decoder, loss and gradient parity."""
  pos_layout = "row_col" if fmt == torch_format.MMPRETRAIN else "col_row"
  model = ref.build_pretrain_model(cfg)
  th.randomize_(model, seed, pos_layout, cfg)
  if fmt == torch_format.OFFICIAL:
    # The authors' decoder table has their encoder table's (col, row) order.
    with torch.no_grad():
      model.neck.decoder_pos_embed.copy_(torch.from_numpy(
          tables.sincos_2d(cfg.mask_grid, cfg.decoder_dim, "col_row"))[None])
  sd = th.numpy_state_dict(model)
  checkpoint = ({"state_dict": sd} if fmt == torch_format.MMPRETRAIN
                else {"model": th.to_official_state_dict(sd, cfg)})
  got_cfg, kind, params, got_fmt = torch_io.import_state_dict(
      checkpoint, decoder_heads=cfg.decoder_heads)
  assert (got_fmt, kind) == (fmt, "pretrain")
  assert got_cfg.replace(num_classes=cfg.num_classes) == cfg.replace(
      pos_embed=pos_layout, decoder_pos_embed=pos_layout)
  cfg = got_cfg

  rng = np.random.default_rng(seed + 1)
  images = rng.standard_normal((batch, cfg.img_size, cfg.img_size, 3)).astype(np.float32)
  mask = coarse_mask(cfg, seed + 2)

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
  jmask = jnp.asarray(mask)[None]
  ours_latent = api.encode(cfg, params["encoder"], jnp.asarray(images), jmask)
  assert_close(ours_latent, latent.detach().numpy(), "encoder features")
  out = api.pretrain_forward(cfg, params, jnp.asarray(images), jmask)
  assert_close(out["seq1"], x_rec[:batch].detach().numpy(), "decoder seq1")
  assert_close(out["seq2"], x_rec[batch:].detach().numpy(), "decoder seq2")
  np.testing.assert_allclose(float(out["loss"]), float(loss), rtol=1e-5)

  grads = jax.grad(lambda p: api.pretrain_forward(cfg, p, jnp.asarray(images), jmask)["loss"])(
      params)
  grad_sd = torch_format.flax_to_state_dict(grads, cfg, kind, fmt, with_buffers=False)
  names = torch_format.torch_names(cfg, kind, fmt)
  last_stage = len(cfg.depths) - 2
  table = ("encoder", f"layers_{last_stage}", "blocks_1", "attn", "relative_position_bias_table")
  picked = {
      names[("encoder", "patch_embed", "proj", "kernel")]: "backbone.patch_embed.projection.weight",
      names[table]: f"backbone.layers.{last_stage}.blocks.1.attn.relative_position_bias_table",
      names[("decoder", "pred", "kernel")]: "neck.decoder_pred.weight",
  }
  for ours_key, ref_key in picked.items():
    assert_close(grad_sd[ours_key], ref_grads[ref_key], f"grad {ref_key}")


def run_classifier_parity(cfg, batch, seed):
  model = ref.build_classifier(cfg)
  th.randomize_(model, seed, "row_col", cfg)
  cfg2, kind, params, _ = torch_io.import_state_dict({"state_dict": th.numpy_state_dict(model)})
  assert kind == "classifier" and cfg2.num_classes == cfg.num_classes
  images = np.random.default_rng(seed).standard_normal(
      (batch, cfg.img_size, cfg.img_size, 3)).astype(np.float32)
  with torch.no_grad():
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    feats = model.backbone(x)[0]
    logits = model.head(model.neck(model.backbone(x)) if model.with_neck else (feats,))
  assert_close(api.classify(cfg2, params, jnp.asarray(images)), logits.numpy(), "logits")
  tokens = api.encode(cfg2, params["encoder"], jnp.asarray(images))
  assert_close(tokens.mean(axis=1), feats.numpy(), "pooled features")


def test_tiny_pretrain_parity():
  run_pretrain_parity(tiny_config(), batch=4, seed=0)


def test_tiny_pretrain_parity_odd_batch():
  # With an odd batch the middle image is its own partner, as in the reference.
  run_pretrain_parity(tiny_config(), batch=3, seed=10)


def test_tiny_pretrain_parity_authors_format():
  """Authors' state dict (keys under `model`, timm merge order, MAE col/row sin-cos
  tables in encoder and decoder) with their decoder LayerNorm eps 1e-5, made by
  renaming mmpretrain's; test_authors.py runs checkpoints of their own code."""
  run_pretrain_parity(tiny_config(decoder_ln_eps=1e-5), batch=4, seed=20,
                      fmt=torch_format.OFFICIAL)


def test_tiny_classifier_parity():
  run_classifier_parity(tiny_config(), batch=3, seed=30)


@pytest.mark.slow_base
def test_base_pretrain_parity():
  run_pretrain_parity(model_config("base"), batch=2, seed=40)


@pytest.mark.slow_base
def test_base_classifier_parity():
  run_classifier_parity(model_config("base", num_classes=1000), batch=2, seed=50)
