"""Whole training loops against the reference's (tests/reference_loop.py): the
project's real compiled steps (the ones `main` and `finetune` run: shardings,
donation, AdamW, the weight-decay split, layer decay, warmup + cosine) and
mmpretrain's model with mmengine's optimizer wrapper and schedulers built from
mmpretrain's own recipes, from the same weights on the same batches (and, in
pretraining, the same masks), for 30 steps: 2 warmup epochs and 8 cosine
epochs of 3 steps.

Both run in float64 (torch `.double()`, JAX under `jax.enable_x64`; the
reference's data preprocessor normalises in double too), from fixed seeds
(the reference's init included), so every run gives the same numbers and the
only difference left is the order of float64 roundings. Asserted at 10x the
largest value measured here (LOSS_NOISE, PARAM_NOISE): every step's loss, and
every parameter after 30 steps (max|ours - reference| over the largest
distance the reference moved that tensor).

The step is compiled for a 2-device mesh with the model axis split, so the
batch stays whole: the reference draws one mask for the whole batch.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mixmim_jax.tools import torch_reference as ref  # noqa: E402
from mixmim_jax.training import recipes, sharding  # noqa: E402
from mixmim_jax.training.plan import make_plan  # noqa: E402
from mixmim_jax.training.steps import compile_steps  # noqa: E402
from mixmim_jax.weights import torch_format
import torch_helpers as th  # noqa: E402
from reference_loop import ReferenceLoop  # noqa: E402
from test_parity import TINY, coarse_mask  # noqa: E402

BATCH, EPOCH_LENGTH, WARMUP_EPOCHS, EPOCHS = 8, 3, 2, 10
STEPS = EPOCH_LENGTH * EPOCHS
LR = 1e-3        # larger than the recipe's lr at batch 8, so 30 steps move the loss
MESH = dict(data=1, fsdp=1, model=2)


def _shared(config, **model):
  config.model.update(dict(embed_dim=TINY["arch"]["embed_dim"], depths=TINY["arch"]["depths"],
                           num_heads=TINY["arch"]["num_heads"],
                           window_sizes=TINY["window_sizes"], **model))
  config.data.image_size = TINY["img_size"]
  config.batch_size = BATCH
  config.num_epochs, config.warmup_epochs = float(EPOCHS), float(WARMUP_EPOCHS)
  config.optim.base_lr = LR * 256 / BATCH
  config.mesh.update(MESH)
  return config


def _rgb_batches(seed, size):
  rng = np.random.default_rng(seed)
  for _ in range(STEPS):
    yield rng.integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8)


def _as_reference_inputs(images):
  """What LoadImageFromFile + PackInputs + the recipes' default_collate hand the
  data preprocessor: BGR, (B, C, H, W), uint8."""
  return torch.from_numpy(np.ascontiguousarray(images[..., ::-1].transpose(0, 3, 1, 2)))


# Measured here (2-core Intel Xeon, float64): the largest relative loss
# difference over the 30 steps (pretraining 7.8e-16, fine-tuning 9.1e-16) and
# the largest parameter difference after them, relative to the distance the
# reference moved that tensor (2.5e-12 and 4.6e-12: Adam's normalisation
# amplifies the roundings of small gradients). Runs repeat these exactly.
LOSS_NOISE = {"pretraining": 7.8e-16, "fine-tuning": 9.1e-16}
PARAM_NOISE = {"pretraining": 2.5e-12, "fine-tuning": 4.6e-12}


def _param_errors(ours, reference_model, start, cfg, kind):
  """{parameter: max|ours - reference| / max|reference - start|} after training."""
  theirs = th.exact_layout(lambda sd: torch_format.state_dict_to_flax(
      sd, torch_format.MMPRETRAIN, cfg, kind), th.numpy_state_dict(reference_model))
  ours = jax.tree.map(lambda a: np.asarray(a, np.float64), jax.device_get(ours))

  def error(a, b, s):
    moved = np.abs(b - s).max()
    assert moved > 0, "a tensor the reference never moved: the test proves nothing for it"
    return float(np.abs(a - b).max() / moved)

  errors = jax.tree.map(error, ours, theirs, start)
  return {jax.tree_util.keystr(path): e for path, e in
          jax.tree_util.tree_leaves_with_path(errors)}


def _check(name, ours, theirs, param_errors):
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  rel = np.abs(ours - theirs) / np.abs(theirs)
  worst = max(param_errors, key=param_errors.get)
  print(f"\n{name}: loss {theirs[0]:.10f} -> {theirs[-1]:.10f} (reference) / "
        f"{ours[0]:.10f} -> {ours[-1]:.10f} (ours); largest relative loss difference "
        f"{rel.max():.2e} (step {rel.argmax() + 1}); largest parameter difference after "
        f"{STEPS} steps {param_errors[worst]:.2e} of its movement, at {worst} "
        f"({len(param_errors)} tensors)")
  assert theirs[-1] < 0.9 * theirs[0], "the reference did not learn: the test proves nothing"
  assert rel.max() <= 10 * LOSS_NOISE[name], rel
  assert param_errors[worst] <= 10 * PARAM_NOISE[name], (worst, param_errors[worst])


def _float64(params):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)


def test_pretraining_loop_matches_mmpretrain():
  config = _shared(recipes.pretrain_defaults(), decoder_dim=TINY["decoder_dim"],
                   decoder_depth=TINY["decoder_depth"], decoder_heads=TINY["decoder_heads"])
  plan = make_plan(config, num_examples=EPOCH_LENGTH * BATCH, num_devices=2)
  assert (plan.total_steps, plan.warmup_steps, plan.num_groups) == (STEPS, 6, 1)
  model = ref.build_pretrain_model(plan.model, seed=0)
  th.share_tables_(model, plan.model)
  start = torch_format.state_dict_to_flax(th.numpy_state_dict(model), torch_format.MMPRETRAIN,
                                          plan.model, "pretrain")
  reference = ReferenceLoop(model.double(), ref.PRETRAIN_RECIPE, LR, EPOCH_LENGTH,
                            WARMUP_EPOCHS, EPOCHS)
  ours, theirs = [], []
  with jax.enable_x64(True):
    fns = compile_steps(plan, config, sharding.make_mesh(config.mesh, jax.devices()[:2]))
    state = fns.from_params(_float64(start))
    key = jax.random.key(0)      # replay: nothing in the step draws from it
    for step, images in enumerate(_rgb_batches(1, plan.model.img_size)):
      mask = coarse_mask(plan.model, 100 + step)
      with th.fixed_mask(mask):
        theirs.append(reference.step(_as_reference_inputs(images), None))
      batch = jax.device_put(images, fns.batch_sharding)   # uint8: the step normalises
      state, metrics = fns.replay_step(state, batch, key, jnp.asarray(mask)[None, None])
      ours.append(float(metrics["loss"]))
    assert metrics["loss"].dtype == jnp.float64
    params = jax.device_get(state.params)
  _check("pretraining", ours, theirs,
         _param_errors(params, model, start, plan.model, "pretrain"))


def test_finetuning_loop_matches_mmpretrain():
  """Mixup/cutmix and drop path off (random in both); label smoothing 0.1 and
  layer decay 0.7 as the recipe."""
  from mmpretrain.structures import DataSample  # pylint: disable=import-outside-toplevel
  config = _shared(recipes.finetune_defaults(), drop_path_rate=0.0)
  config.num_classes = TINY["num_classes"]
  config.mixup_alpha = config.cutmix_alpha = 0.0
  config.eval_batch_size = BATCH
  plan = make_plan(config, num_examples=EPOCH_LENGTH * BATCH, num_devices=2)
  assert (plan.total_steps, plan.warmup_steps) == (STEPS, 6)
  # mmpretrain's classifier built from scratch keeps its position table at zero
  # (only a loaded pretrained backbone fills it); take its weights as they are.
  plan = dataclasses.replace(plan, model=plan.model.replace(pos_embed="none"))
  model = ref.build_classifier(plan.model, train_augments=False, drop_path_rate=0.0, seed=0)
  start = torch_format.state_dict_to_flax(th.numpy_state_dict(model), torch_format.MMPRETRAIN,
                                          plan.model, "classifier")
  reference = ReferenceLoop(model.double(), ref.FINETUNE_RECIPE, LR, EPOCH_LENGTH,
                            WARMUP_EPOCHS, EPOCHS)
  rng = np.random.default_rng(2)
  ours, theirs = [], []
  with jax.enable_x64(True):
    fns = compile_steps(plan, config, sharding.make_mesh(config.mesh, jax.devices()[:2]))
    state = fns.from_params(_float64(start), {})
    for noise in _rgb_batches(3, plan.model.img_size):
      # A learnable task: each class has its own brightness.
      labels = rng.integers(0, config.num_classes, BATCH)
      images = (noise // 4 + 20 * labels[:, None, None, None]).astype(np.uint8)
      samples = [DataSample().set_gt_label(int(y)) for y in labels]
      theirs.append(reference.step(_as_reference_inputs(images), samples))
      batch = jax.device_put(images, fns.batch_sharding)   # uint8: the step normalises
      state, metrics = fns.step(state, batch, jax.device_put(labels.astype(np.int32),
                                                             fns.batch_sharding),
                                jax.random.key(0))
      ours.append(float(metrics["loss"]))
    assert metrics["loss"].dtype == jnp.float64
    params = jax.device_get(state.params)
  _check("fine-tuning", ours, theirs,
         _param_errors(params, model, start, plan.model, "classifier"))
