"""Against the authors' own code (Sense-X/MixMIM's models_mixmim.py and
models_mixmim_ft.py, run live; see authors_reference.py for how to point the
tests at a checkout): checkpoints their code writes convert with
`python -m mixmim_jax.convert` and compute what their modules compute, and a
fresh model with model.init="authors" is drawn as theirs is.

Tolerances: loss rel 1e-5; tensors max|ours - ref| <= 1e-4 max|ref|.
"""
from __future__ import annotations

import argparse
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mixmim_jax import convert  # noqa: E402
from mixmim_jax.model import api
from mixmim_jax.weights import params_file, torch_format, torch_io
import authors_reference as authors  # noqa: E402
import torch_helpers as th  # noqa: E402
from test_init import compare_init_draws, our_state_dict, redraw_ours_tensors  # noqa: E402
from test_parity import assert_close, coarse_mask, tiny_config  # noqa: E402

OFFICIAL = torch_format.OFFICIAL


def _their_pretraining_model(module, cfg, seed):
  model = authors.build(module, **authors.arch_kwargs(cfg), decoder_dim=cfg.decoder_dim,
                        decoder_depth=cfg.decoder_depth, decoder_num_heads=cfg.decoder_heads)
  th.randomize_(model, seed, pos_layout=None)   # their sin-cos tables stay as they made them
  return model


@pytest.mark.parametrize("decoder, model_name, flags, heads_note", [
    # Their registered models all build 16 decoder heads: read off args.model.
    (dict(decoder_dim=128, decoder_depth=2, decoder_heads=16), "mixmim_base", [],
     "read from args.model='mixmim_base'"),
    # A model of their code with another decoder: nothing records its heads.
    (dict(decoder_dim=64, decoder_depth=1, decoder_heads=2), "my_mixmim", ["--decoder-heads=2"],
     "given with --decoder-heads"),
])
def test_authors_pretraining_checkpoint_converts_and_matches(tmp_path, capsys, decoder,
                                                             model_name, flags, heads_note):
  models_mixmim, _, misc = authors.modules()
  cfg = tiny_config(decoder_ln_eps=1e-5, **decoder)
  model = _their_pretraining_model(models_mixmim, cfg, seed=5)
  # Written by their own save_model, as their main_pretrain.py does each epoch.
  args = argparse.Namespace(model=model_name, output_dir=str(tmp_path), input_size=cfg.img_size,
                            mask_ratio=0.5, norm_pix_loss=True)
  misc.save_model(args, 0, model, model, torch.optim.AdamW(model.parameters()),
                  misc.NativeScalerWithGradNormCount())
  out = str(tmp_path / "theirs.msgpack")
  assert convert.main([str(tmp_path / "checkpoint.pth"), out] + flags) == 0
  summary = capsys.readouterr().out
  assert f"{cfg.decoder_heads} heads ({heads_note}" in summary, summary
  loaded = params_file.load_params(out)
  got = loaded.config
  assert (got.decoder_dim, got.decoder_depth, got.decoder_heads, got.decoder_pos_embed,
          got.pos_embed, got.decoder_ln_eps) == (cfg.decoder_dim, cfg.decoder_depth,
                                                 cfg.decoder_heads, "col_row", "col_row", 1e-5)

  batch = 4
  images = np.random.default_rng(6).standard_normal(
      (batch, cfg.img_size, cfg.img_size, 3)).astype(np.float32)
  mask = coarse_mask(cfg, 7)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  with th.fixed_mask(mask), torch.no_grad():
    masks = model.random_masking(x, 0.5)
    latent = model.forward_encoder(x, *masks)
    x_rec = model.forward_decoder(latent, masks[-1])
    loss = model.forward_loss(x, x_rec, masks[-1])
  np.testing.assert_array_equal(masks[-1].numpy().reshape(-1), mask)

  jmask = jnp.asarray(mask)[None]
  assert_close(api.encode(got, loaded.params["encoder"], jnp.asarray(images), jmask),
               latent.numpy(), "encoder features")
  ours = api.pretrain_forward(got, loaded.params, jnp.asarray(images), jmask)
  assert_close(ours["seq1"], x_rec[:batch].numpy(), "decoder seq1")
  assert_close(ours["seq2"], x_rec[batch:].numpy(), "decoder seq2")
  np.testing.assert_allclose(float(ours["loss"]), float(loss), rtol=1e-5)


def test_authors_checkpoint_without_heads_says_what_was_assumed(tmp_path, capsys):
  models_mixmim, _, _ = authors.modules()
  cfg = tiny_config(decoder_ln_eps=1e-5, decoder_dim=64, decoder_depth=1, decoder_heads=4)
  torch.save({"model": _their_pretraining_model(models_mixmim, cfg, 8).state_dict()},
             tmp_path / "bare.pth")
  assert convert.main([str(tmp_path / "bare.pth"), str(tmp_path / "bare.msgpack")]) == 0
  summary = capsys.readouterr().out
  assert "16 heads (16 assumed" in summary and "--decoder-heads=N" in summary, summary


def test_authors_classifier_checkpoint_matches(tmp_path):
  _, models_mixmim_ft, _ = authors.modules()
  cfg = tiny_config()
  model = authors.build(models_mixmim_ft, **authors.arch_kwargs(cfg), num_classes=10)
  th.randomize_(model, 9, pos_layout=None)
  torch.save({"model": model.state_dict()}, tmp_path / "ft.pth")
  got, kind, params, fmt = torch_io.import_state_dict(
      torch_io.load_torch_checkpoint(str(tmp_path / "ft.pth")))
  assert (fmt, kind, got.num_classes, got.pos_embed) == (OFFICIAL, "classifier", 10, "col_row")
  images = np.random.default_rng(10).standard_normal(
      (3, cfg.img_size, cfg.img_size, 3)).astype(np.float32)
  with torch.no_grad():
    logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
  assert_close(api.classify(got, params, jnp.asarray(images)), logits.numpy(), "logits")


@pytest.mark.parametrize("kind", ["pretrain", "classifier"])
def test_fresh_model_draws_like_the_authors(kind):
  models_mixmim, models_mixmim_ft, _ = authors.modules()
  from test_init import CFG  # pylint: disable=import-outside-toplevel
  cfg = CFG.replace(init="authors", decoder_ln_eps=1e-5)
  if kind == "pretrain":
    model = authors.build(models_mixmim, **authors.arch_kwargs(cfg), decoder_dim=cfg.decoder_dim,
                          decoder_depth=cfg.decoder_depth, decoder_num_heads=cfg.decoder_heads)
  else:
    model = authors.build(models_mixmim_ft, **authors.arch_kwargs(cfg),
                          num_classes=cfg.num_classes)
  del model
  builds = {}

  def theirs(seed):
    """Their model as their code draws it from torch's seed `seed`."""
    if seed not in builds:
      torch.manual_seed(seed)
      np.random.seed(seed)
      module = models_mixmim if kind == "pretrain" else models_mixmim_ft
      extra = (dict(decoder_dim=cfg.decoder_dim, decoder_depth=cfg.decoder_depth,
                    decoder_num_heads=cfg.decoder_heads) if kind == "pretrain"
               else dict(num_classes=cfg.num_classes))
      builds[seed] = th.numpy_state_dict(authors.build(module, **authors.arch_kwargs(cfg),
                                                       **extra))
    return builds[seed]

  count = compare_init_draws(
      cfg, kind,
      lambda seed: our_state_dict(api.init_params(cfg, kind, seed=4 + seed), cfg, kind,
                                   fmt=OFFICIAL),
      theirs, redraw_ours=lambda keys, n: redraw_ours_tensors(cfg, kind, keys, n, fmt=OFFICIAL),
      # Their init is the constructor's: a tensor is redrawn by building anew.
      redraw_theirs=lambda key, n: [theirs(1000 + i)[key] for i in range(n)])
  assert count > 30


def test_tests_find_the_checkout_when_told():
  """With MIXMIM_AUTHORS_REPO set, the tests above run rather than skip."""
  if not os.environ.get(authors.ENV):
    pytest.skip(f"{authors.ENV} is not set")
  assert authors.modules()[0].MixMIM.__module__ == "models_mixmim"
