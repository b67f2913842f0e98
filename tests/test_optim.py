"""Optimizer parity with mmengine/mmpretrain: the weight-decay split of the
MixMIM pretraining recipe (its own optim_wrapper), the authors' rule, and
AdamW's update. The schedule against the recipes' own schedulers:
test_constants.py."""
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
  """Our mask decays exactly the tensors to which mmengine, given the
  pretraining recipe's own optim_wrapper (paramwise_cfg custom_keys 'ln' and
  'bias' with decay_mult 0), gives the recipe's weight decay."""
  from mmengine.optim import build_optim_wrapper  # pylint: disable=import-outside-toplevel
  model = ref.build_pretrain_model(CFG)
  recipe = ref.recipe(ref.PRETRAIN_RECIPE).optim_wrapper.to_dict()
  wrapper = build_optim_wrapper(model, recipe)
  names = {id(p): n for n, p in model.named_parameters()}
  theirs = {}
  for group in wrapper.optimizer.param_groups:
    for p in group["params"]:
      assert group["weight_decay"] in (0.0, recipe["optimizer"]["weight_decay"])
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


def test_adamw_update_matches_torch():
  """Three AdamW steps with decoupled weight decay, as the pretraining recipe
  sets it up (betas, weight decay, torch's default eps), equal
  torch.optim.AdamW in float64: measured 6.7e-16 at most (weights ~1), bound 10x."""
  import optax  # pylint: disable=import-outside-toplevel
  from mixmim_jax.training import recipes  # pylint: disable=import-outside-toplevel
  o = recipes.pretrain_defaults().optim
  theirs = ref.recipe(ref.PRETRAIN_RECIPE).optim_wrapper.optimizer
  rng = np.random.default_rng(0)
  w = rng.standard_normal((4, 3))
  grads = [rng.standard_normal((4, 3)) for _ in range(3)]
  p = torch.nn.Parameter(torch.from_numpy(w.copy()))
  opt = torch.optim.AdamW([p], lr=1e-2, betas=theirs.betas, weight_decay=theirs.weight_decay)
  with jax.enable_x64(True):
    tx = optax.adamw(1e-2, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
    params = jax.numpy.asarray(w)
    state = tx.init(params)
    for g in grads:
      p.grad = torch.from_numpy(g)
      opt.step()
      updates, state = tx.update(jax.numpy.asarray(g), state, params)
      params = optax.apply_updates(params, updates)
    assert params.dtype == np.float64
  np.testing.assert_allclose(np.asarray(params), p.detach().numpy(), rtol=0, atol=6.7e-15)
