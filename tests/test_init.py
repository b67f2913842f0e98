"""A fresh model starts from the reference's distributions, tensor by tensor:
mmpretrain's own modules, built from its recipes and initialised by their
init_weights(), against ours with model.init="mmpretrain" (the authors' code:
test_authors.py). Same family (zero, constant, uniform bound, normal std)
within sampling error."""
from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mixmim_jax.model import api  # noqa: E402
from mixmim_jax.tools import torch_reference as ref  # noqa: E402
from mixmim_jax.weights import torch_format
import torch_helpers as th  # noqa: E402
from test_parity import tiny_config  # noqa: E402

# Wider than the parity tests' tiny model, so every tensor has enough values
# to tell a distribution (the smallest weight has 64 x 192).
CFG = tiny_config(arch=dict(embed_dim=64, depths=(1, 1, 2, 1), num_heads=(2, 4, 8, 16)),
                  decoder_dim=128, decoder_heads=4)


def compare_init(ours_params, reference_model, cfg, kind, fmt=torch_format.MMPRETRAIN):
  ours = torch_format.flax_to_state_dict(ours_params, cfg, kind, fmt, with_buffers=False)
  theirs = th.numpy_state_dict(reference_model)
  assert set(ours) <= set(theirs)
  for key in sorted(ours):
    th.assert_same_distribution(key, ours[key], theirs[key])
  return len(ours)


@pytest.mark.parametrize("kind", ["pretrain", "classifier"])
def test_fresh_model_draws_like_mmpretrain(kind):
  model = (ref.build_pretrain_model(CFG) if kind == "pretrain" else ref.build_classifier(CFG))
  params = api.init_params(CFG, kind, seed=3)
  assert compare_init(params, model, CFG, kind) > 30
  if kind == "pretrain":
    # What the issue measured on base, at this size: zero tables, torch-default
    # decoder Linears with non-zero biases.
    table = params["encoder"]["layers_0"]["blocks_0"]["attn"]["relative_position_bias_table"]
    assert not np.any(table)
    bias = np.asarray(params["decoder"]["blocks_0"]["attn"]["qkv"]["bias"])
    assert 0 < np.abs(bias).max() <= 1 / np.sqrt(CFG.decoder_dim)


def test_init_schemes_differ_where_the_references_do():
  """authors: N(0, 0.02) tables and xavier decoder; mmpretrain: zero tables and
  torch's default decoder (the distributions themselves are checked against
  the references' code above and in test_authors.py)."""
  mm = api.init_params(CFG, "pretrain", seed=0)
  au = api.init_params(CFG.replace(init="authors"), "pretrain", seed=0)
  path = ("encoder", "layers_2", "blocks_1", "attn", "relative_position_bias_table")
  table_mm, table_au = mm, au
  for p in path:
    table_mm, table_au = table_mm[p], table_au[p]
  assert not np.any(table_mm)
  assert abs(np.std(table_au) / 0.02 - 1) < 0.15
  qkv_mm = np.asarray(mm["decoder"]["blocks_0"]["attn"]["qkv"]["kernel"])
  qkv_au = np.asarray(au["decoder"]["blocks_0"]["attn"]["qkv"]["kernel"])
  fan_in, fan_out = qkv_mm.shape
  np.testing.assert_allclose(np.abs(qkv_mm).max(), 1 / np.sqrt(fan_in), rtol=0.02)
  np.testing.assert_allclose(np.abs(qkv_au).max(), np.sqrt(6 / (fan_in + fan_out)), rtol=0.02)
  assert not np.any(au["decoder"]["blocks_0"]["attn"]["qkv"]["bias"])


def test_authors_finetuning_redraws_the_head_of_a_loaded_model(tmp_path):
  """main_finetune.py of the authors: trunc_normal_(head.weight, std=2e-5) after
  loading pretrained weights; mmpretrain keeps its N(0, 0.02) head."""
  from mixmim_jax.weights import adapt, params_file  # pylint: disable=import-outside-toplevel
  cfg = CFG.replace(num_classes=100)
  path = str(tmp_path / "pre.msgpack")
  params_file.save_params(path, cfg, "pretrain", api.init_params(cfg, "pretrain", seed=1))
  stds = {}
  for scheme in ("authors", "mmpretrain"):
    dst = cfg.replace(init=scheme)
    fresh = api.init_params(dst, "classifier", seed=2)
    params, _ = adapt.initial_params(path, -1, dst, jax.device_get(fresh), seed=3)
    stds[scheme] = float(np.std(params["head"]["kernel"]))
    assert not np.any(params["head"]["bias"])
  assert stds["authors"] == pytest.approx(2e-5, rel=0.1)
  assert stds["mmpretrain"] == pytest.approx(0.02, rel=0.1)
