"""Optimizer parity with mmengine/mmpretrain: the weight-decay split and the
warmup + cosine learning-rate schedule of the MixMIM pretraining recipe."""
from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mixmim_jax.model import api  # noqa: E402
from mixmim_jax.model.arch import model_config  # noqa: E402
from mixmim_jax.tools import torch_reference as ref  # noqa: E402
from mixmim_jax.training import optim
from mixmim_jax.weights import torch_format

CFG = model_config(dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)),
                   window_sizes=(8, 8, 4, 2), img_size=64, decoder_dim=64, decoder_depth=1,
                   decoder_heads=2, num_classes=0)


def _flat_mask(mask_tree):
  """{mmpretrain name: decays?} from our mask tree, through the converter's table."""
  return {key: bool(_get(mask_tree, path))
          for path, key in torch_format.torch_names(CFG, "pretrain").items()}


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def test_mmpretrain_weight_decay_split_matches_mmengine():
  """Our mask decays exactly the tensors mmengine's paramwise_cfg (custom_keys
  'ln' and 'bias' with decay_mult 0) gives weight decay 0.05."""
  from mmengine.optim import build_optim_wrapper  # pylint: disable=import-outside-toplevel
  model = ref.build_pretrain_model(CFG)
  wrapper = build_optim_wrapper(model, dict(
      type="OptimWrapper",
      optimizer=dict(type="AdamW", lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05),
      paramwise_cfg=dict(custom_keys={"ln": dict(decay_mult=0.0),
                                      "bias": dict(decay_mult=0.0)})))
  names = {id(p): n for n, p in model.named_parameters()}
  theirs = {}
  for group in wrapper.optimizer.param_groups:
    for p in group["params"]:
      theirs[names[id(p)]] = group["weight_decay"] > 0
  params = api.param_shapes(CFG, "pretrain")
  ours = _flat_mask(optim.weight_decay_mask(params, "mmpretrain"))
  assert ours == {k: v for k, v in theirs.items() if k in ours}
  assert set(theirs) - set(ours) == set()          # every trained tensor is covered
  # The name rule's surprises, stated: these are decayed / exempt in mmpretrain.
  assert ours["backbone.patch_embed.norm.weight"] and ours["neck.mask_token"]
  assert not ours["backbone.layers.0.blocks.0.attn.relative_position_bias_table"]


def test_authors_weight_decay_rule():
  """timm rule: no decay on 1-D tensors and the mask token; decay on the rest,
  the relative position bias tables included."""
  params = api.param_shapes(CFG, "pretrain")
  ours = _flat_mask(optim.weight_decay_mask(params, "authors"))
  for name, decays in ours.items():
    paths = {k: p for p, k in torch_format.torch_names(CFG, "pretrain").items()}
    shape = _get(params, paths[name]).shape
    expected = len(shape) > 1 and not name.endswith("mask_token")
    assert decays == expected, name
  assert ours["backbone.layers.0.blocks.0.attn.relative_position_bias_table"]
  assert not ours["backbone.patch_embed.norm.weight"]


def test_schedule_matches_mmengine_linear_then_cosine():
  from mmengine.optim.scheduler import CosineAnnealingLR, LinearLR  # pylint: disable=import-outside-toplevel
  total, warmup, lr = 30, 7, 1.2e-3
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.AdamW([param], lr=lr)
  schedulers = [LinearLR(opt, start_factor=1e-4, by_epoch=False, begin=0, end=warmup),
                CosineAnnealingLR(opt, T_max=total - warmup, by_epoch=False, begin=warmup,
                                  end=total)]
  theirs = []
  for _ in range(total):
    theirs.append(opt.param_groups[0]["lr"])
    opt.step()
    for s in schedulers:
      s.step()
  schedule = optim.warmup_cosine(lr, total, warmup, 1e-4)
  ours = [float(schedule(i)) for i in range(total)]
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-12)


def test_adamw_update_matches_torch():
  """One AdamW step with decoupled weight decay equals torch.optim.AdamW."""
  import optax  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  w = rng.standard_normal((4, 3)).astype(np.float32)
  grads = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(3)]
  p = torch.nn.Parameter(torch.from_numpy(w.copy()))
  opt = torch.optim.AdamW([p], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.05, eps=1e-8)
  tx = optax.adamw(1e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05)
  params, state = jax.numpy.asarray(w), None
  state = tx.init(params)
  for g in grads:
    p.grad = torch.from_numpy(g)
    opt.step()
    updates, state = tx.update(jax.numpy.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(np.asarray(params), p.detach().numpy(), rtol=1e-5, atol=1e-7)
