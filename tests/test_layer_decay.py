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
from mixmim_jax.training import layer_decay, optim, recipes
from mixmim_jax.weights import torch_format
import torch_helpers as th  # noqa: E402

BASE = model_config("base", num_classes=1000)
TINY = model_config(dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)),
                    window_sizes=(8, 8, 4, 2), img_size=64, num_classes=10)
# Ours: the fine-tuning recipe's defaults (the reference's: its recipe file).
OURS = recipes.finetune_defaults().optim
LR, WD, RATE = 2e-3, OURS.weight_decay, OURS.layer_decay


def _mmpretrain_groups(model):
  """{param name: (lr scale, weight decay)} from mmpretrain's constructor,
  given the fine-tuning recipe's own optim_wrapper (at lr LR)."""
  from mmengine.optim import build_optim_wrapper  # pylint: disable=import-outside-toplevel
  from mmengine.registry import init_default_scope  # pylint: disable=import-outside-toplevel
  import mmpretrain.engine  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  init_default_scope("mmpretrain")
  cfg = ref.recipe(ref.FINETUNE_RECIPE).optim_wrapper.to_dict()
  cfg["optimizer"]["lr"] = LR
  wrapper = build_optim_wrapper(model, cfg)
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
  AdamW with mmpretrain's param groups (per-group lr and weight decay), two
  steps, in float64: measured 4.4e-16 at most (weights ~0.02-1), bound 10x."""
  model = ref.build_classifier(TINY).double()
  wrapper, _ = _mmpretrain_groups(model)
  # Trained tensors only: the from-scratch classifier's zero position table is a
  # frozen parameter there and computed here.
  named = {n: p for n, p in model.named_parameters() if p.requires_grad}
  sd0 = {k: v.detach().numpy().copy() for k, v in named.items()}
  to_flax = lambda sd: th.exact_layout(lambda d: torch_format.state_dict_to_flax(  # noqa: E731
      d, torch_format.MMPRETRAIN, TINY, "classifier"), sd)
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    params = jax.tree.map(jnp.asarray, to_flax(sd0))
    tx = optax.chain(
        optax.scale_by_adam(OURS.b1, OURS.b2, OURS.eps),
        optax.add_decayed_weights(WD, optim.weight_decay_mask(params, finetune=True)),
        optim.scale_by_schedules(jax.tree.map(
            lambda s: (lambda step: LR * s), layer_decay.lr_scales(params, TINY, RATE))))
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(2):
      grads_sd = {n: rng.standard_normal(p.shape) for n, p in named.items()}
      for n, p in named.items():
        p.grad = torch.from_numpy(grads_sd[n])
      wrapper.optimizer.step()
      updates, state = update(jax.tree.map(jnp.asarray, to_flax(grads_sd)), state, params)
      params = optax.apply_updates(params, updates)
    params = jax.tree.map(np.asarray, params)
  theirs = to_flax({k: v.detach().numpy() for k, v in named.items()})
  err = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params,
                                         theirs)))
  print(f"largest parameter difference {err:.3g}")
  assert err <= 4.4e-15, err
  # Adam's first steps move every entry by about lr * scale: the stem by 0.7**6
  # of the head's step, so the decay is really applied.
  start = to_flax(sd0)
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
  """mmengine's schedulers (the recipe's) act on every param group: warmup
  scales each group's lr, the cosine anneals each to the absolute eta_min
  1e-6, so base's stem (peak 2e-3 x 0.7**25 = 2.7e-7) rises to 1e-6. Our
  per-layer schedules, from our recipe's start factor and floor, equal the
  groups' lr at every one of 30 steps, in float64."""
  import reference_loop  # pylint: disable=import-outside-toplevel
  total, warmup = 30, 6
  model = ref.build_classifier(BASE)
  loop = reference_loop.ReferenceLoop(model, ref.FINETUNE_RECIPE, LR, epoch_length=3,
                                      warmup_epochs=2, epochs=10)
  names = [g["param_name"] for g in loop.optim_wrapper.optimizer.param_groups]
  scales = layer_decay.lr_scales(api.param_shapes(BASE, "classifier"), BASE, RATE)
  paths = {key: path for path, key in torch_format.torch_names(BASE, "classifier").items()}
  stem = names.index("backbone.patch_embed.projection.weight")
  theirs = []
  for _ in range(total):
    theirs.append(loop.group_lrs())
    for scheduler in loop.schedulers:
      scheduler.step()
  theirs = np.asarray(theirs)                                   # (steps, groups)
  with jax.enable_x64(True):
    schedules = optim.group_schedules(scales, LR, total, warmup, OURS.warmup_start_factor,
                                      OURS.end_lr)
    steps = jnp.arange(total)
    ours = np.stack([np.asarray(jax.vmap(_at(schedules, paths[name]))(steps))
                     for name in names], axis=1)
  # float64: measured 2.0e-15 relative at most (mmengine's per-step factors); bound 10x.
  print(f"largest relative lr difference {np.max(np.abs(ours / theirs - 1)):.3g}")
  np.testing.assert_allclose(ours, theirs, rtol=2e-14, atol=0)
  seen = theirs[:, stem]
  assert max(seen[:warmup]) < 3e-7 and seen[-1] > 9e-7       # the stem's rise to eta_min
