"""Layer-wise lr decay and the fine-tune weight-decay split against both references:
mmpretrain's LearningRateDecayOptimWrapperConstructor built live, and the
authors' rule as written in MIXMIM.md (encoded here independently)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from mixmim_jax.model import api  # noqa: E402
from mixmim_jax.model.arch import model_config  # noqa: E402
from mixmim_jax.tools import torch_reference as ref  # noqa: E402
from mixmim_jax.training import layer_decay, optim
from mixmim_jax.weights import torch_format

BASE = model_config("base", num_classes=1000)
TINY = model_config(dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)),
                    window_sizes=(8, 8, 4, 2), img_size=64, num_classes=10)
LR, WD, RATE = 2e-3, 0.05, 0.7


def _mmpretrain_groups(model):
  """{param name: (lr scale, weight decay)} from mmpretrain's constructor."""
  from mmengine.optim import build_optim_wrapper  # pylint: disable=import-outside-toplevel
  from mmengine.registry import init_default_scope  # pylint: disable=import-outside-toplevel
  import mmpretrain.engine  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  init_default_scope("mmpretrain")
  wrapper = build_optim_wrapper(model, dict(
      type="OptimWrapper",
      optimizer=dict(type="AdamW", lr=LR, betas=(0.9, 0.999), weight_decay=WD),
      constructor="LearningRateDecayOptimWrapperConstructor",
      paramwise_cfg=dict(layer_decay_rate=RATE,
                         custom_keys={".ln": dict(decay_mult=0.0),
                                      ".bias": dict(decay_mult=0.0)})))
  names = {id(p): n for n, p in model.named_parameters()}
  out = {}
  for group in wrapper.optimizer.param_groups:
    for p in group["params"]:
      out[names[id(p)]] = (group["lr"] / LR, group["weight_decay"])
  return wrapper, out


def _ours(cfg, rule):
  """{mmpretrain name: (lr scale, weight decay)} from our trees."""
  shapes = api.param_shapes(cfg, "classifier")
  scales = layer_decay.lr_scales(shapes, cfg, RATE, rule)
  mask = optim.weight_decay_mask(shapes, rule, finetune=True)
  out = {}
  for path, key in torch_format.torch_names(cfg, "classifier").items():
    s, m = scales, mask
    for p in path:
      s, m = s[p], m[p]
    out[key] = (s, WD if m else 0.0)
  return out


@pytest.fixture(scope="module")
def base_reference():
  return _mmpretrain_groups(ref.build_classifier(BASE))[1]


def test_mmpretrain_rule_matches_constructor_tensor_by_tensor(base_reference):
  ours = _ours(BASE, "mmpretrain")
  assert set(ours) == set(base_reference)          # every trained tensor, no more
  for name, (scale, wd) in base_reference.items():
    assert ours[name][0] == pytest.approx(scale, rel=1e-12), name
    assert ours[name][1] == wd, name
  # Spot checks of the rule itself (26 layers for base).
  assert ours["head.fc.weight"][0] == 1.0
  assert ours["backbone.norm.weight"] == (pytest.approx(0.7), WD)   # '.norm' is decayed
  assert ours["backbone.patch_embed.projection.weight"][0] == pytest.approx(0.7 ** 25)
  assert ours["backbone.layers.2.downsample.reduction.weight"][0] == pytest.approx(0.7 ** 3)
  assert ours["backbone.layers.2.blocks.17.ln1.weight"] == (pytest.approx(0.7 ** 3), 0.0)


def _authors_reference(cfg):
  """MIXMIM.md's authors' rule, written from the text on PyTorch names."""
  depths, last = cfg.depths, sum(cfg.depths) + 1
  shapes = {k: v for k, v in torch_format.expected_torch_shapes(
      cfg, torch_format.MMPRETRAIN, "classifier",
      api.param_shapes(cfg, "classifier")).items()}
  out = {}
  for name, shape in shapes.items():
    parts = name.split(".")
    if parts[0] == "head" or name.startswith("backbone.norm."):
      lid = last - 1
    elif parts[1] == "patch_embed":
      lid = 0
    elif parts[3] == "downsample":
      lid = sum(depths[:int(parts[2]) + 1]) + 1
    else:
      lid = sum(depths[:int(parts[2])]) + int(parts[4]) + 1
    out[name] = (RATE ** (last - lid), WD if len(shape) > 1 else 0.0)
  return out


def test_authors_rule_for_base():
  ours, theirs = _ours(BASE, "authors"), _authors_reference(BASE)
  assert set(ours) == set(theirs)
  for name, (scale, wd) in theirs.items():
    assert ours[name][0] == pytest.approx(scale, rel=1e-12), name
    assert ours[name][1] == wd, name
  assert ours["head.fc.weight"][0] == pytest.approx(0.7)
  assert ours["backbone.layers.0.downsample.reduction.weight"][0] == pytest.approx(0.7 ** 22)
  assert ours["backbone.layers.0.blocks.0.attn.relative_position_bias_table"][1] == WD


def test_one_adamw_step_equals_torch_param_groups():
  """AdamW with a learning rate per layer moves every tensor exactly as torch
  AdamW with mmpretrain's param groups (per-group lr and weight decay), two steps."""
  model = ref.build_classifier(TINY)
  wrapper, _ = _mmpretrain_groups(model)
  # Trained tensors only: the from-scratch classifier's zero position table is a
  # frozen parameter there and computed here.
  named = {n: p for n, p in model.named_parameters() if p.requires_grad}
  sd0 = {k: v.detach().numpy().copy() for k, v in named.items()}
  params = torch_format.state_dict_to_flax(sd0, torch_format.MMPRETRAIN, TINY, "classifier")
  tx = optax.chain(
      optax.scale_by_adam(0.9, 0.999, 1e-8),
      optax.add_decayed_weights(WD, optim.weight_decay_mask(params, finetune=True)),
      optim.scale_by_schedules(jax.tree.map(
          lambda s: (lambda step: LR * s), layer_decay.lr_scales(params, TINY, RATE))))
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)
  rng = np.random.default_rng(0)
  for _ in range(2):
    grads_sd = {n: rng.standard_normal(p.shape).astype(np.float32) for n, p in named.items()}
    for n, p in named.items():
      p.grad = torch.from_numpy(grads_sd[n])
    wrapper.optimizer.step()
    grads = torch_format.state_dict_to_flax(grads_sd, torch_format.MMPRETRAIN, TINY,
                                            "classifier")
    updates, state = tx.update(jax.tree.map(jnp.asarray, grads), state, params)
    params = optax.apply_updates(params, updates)
  sd1 = {k: v.detach().numpy() for k, v in named.items()}
  theirs = torch_format.state_dict_to_flax(sd1, torch_format.MMPRETRAIN, TINY, "classifier")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.tree.map(np.asarray, params), theirs)
  # Adam's first steps move every entry by about lr * scale: the stem by 0.7**6
  # of the head's step, so the decay is really applied.
  start = torch_format.state_dict_to_flax(sd0, torch_format.MMPRETRAIN, TINY, "classifier")
  moved = lambda *path: np.abs(_at(theirs, path) - _at(start, path)).mean()  # noqa: E731
  ratio = moved("encoder", "patch_embed", "proj", "kernel") / moved("head", "kernel")
  assert ratio == pytest.approx(0.7 ** 6, rel=0.2)


def _at(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def test_unknown_rule_is_a_clear_error():
  with pytest.raises(ValueError, match="layer-decay rule"):
    layer_decay.layer_id(("head", "kernel"), TINY, "timm")


def test_each_layer_follows_the_recipes_schedule_per_param_group():
  """mmengine's schedulers act on every param group: warmup scales each group's
  lr, the cosine anneals each to the absolute eta_min 1e-6, so base's stem
  (peak 2e-3 x 0.7**25 = 2.7e-7) rises to 1e-6. Our per-layer schedules equal
  the groups' lr at every one of 30 steps of the recipe's schedule."""
  import reference_loop  # pylint: disable=import-outside-toplevel
  total, warmup = 30, 6
  model = ref.build_classifier(BASE)
  loop = reference_loop.ReferenceLoop(model, ref.FINETUNE_RECIPE, LR, epoch_length=3,
                                      warmup_epochs=2, epochs=10)
  names = [g["param_name"] for g in loop.optim_wrapper.optimizer.param_groups]
  scales = layer_decay.lr_scales(api.param_shapes(BASE, "classifier"), BASE, RATE)
  schedules = optim.group_schedules(scales, LR, total, warmup, 1e-6, 1e-6)
  paths = {key: path for path, key in torch_format.torch_names(BASE, "classifier").items()}
  stem = names.index("backbone.patch_embed.projection.weight")
  seen = []
  for step in range(total):
    theirs = loop.group_lrs()
    for name, lr in zip(names, theirs):
      f = schedules
      for p in paths[name]:
        f = f[p]
      assert float(f(step)) == pytest.approx(lr, rel=1e-5, abs=1e-12), (step, name)
    seen.append(theirs[stem])
    for scheduler in loop.schedulers:
      scheduler.step()
  assert max(seen[:warmup]) < 3e-7 and seen[-1] > 9e-7       # the stem's rise to eta_min
