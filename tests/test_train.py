"""The sharded train step, resume, configs and the trainer's errors (8 fake devices)."""
from __future__ import annotations

import glob
import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixmim_jax import cli
from mixmim_jax.model.decoder import MixMIMPretrainModel
from mixmim_jax.tools import hlo_stats
from mixmim_jax.trainers import pretrain
from mixmim_jax.training import checkpointing, loop, plan as plan_lib, sharding
from mixmim_jax.training.steps import compile_steps
import train_fixtures as tf_

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tf_.write_idx_images(str(tmp_path_factory.mktemp("fmnist")))


def _step_on(devices, mesh_cfg, config, images):
  mesh = sharding.make_mesh(mesh_cfg, devices)
  plan = plan_lib.make_plan(config, num_examples=1000, num_devices=len(devices))
  fns = compile_steps(plan, config, mesh)
  state = fns.init(jax.random.key(0))
  batch = jax.device_put(images, fns.batch_sharding)
  state, metrics = fns.step(state, batch, jax.random.key(1))
  return jax.device_get(state.params), jax.device_get(metrics), fns, plan


# One config for the sharded-equals-single-device tests: stacks of 2 blocks run
# as scans, groups of 4; the single-device step is compiled once for all.
SCANNED = {"model.depths": (1, 1, 2, 2), "model.decoder_depth": 2}


def _scanned_config(data_dir):
  return tf_.tiny_config(data_dir, group_size=4, batch_size=32, **SCANNED)


@pytest.fixture(scope="module")
def scanned_single_device(data_dir):
  """(images, params and metrics after one step on one device)."""
  config = _scanned_config(data_dir)
  images = np.random.default_rng(2).standard_normal((32, 32, 32, 3)).astype(np.float32)
  config.mesh.update(dict(data=1, fsdp=1, model=1))
  params, metrics, _, plan = _step_on(jax.devices()[:1], config.mesh, config, images)
  assert plan.num_groups == 8
  return images, params, metrics


def _assert_same_step(params, metrics, single):
  _, p1, m1 = single
  np.testing.assert_allclose(metrics["loss"], m1["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_model_axis_step_equals_single_device(data_dir, scanned_single_device):
  """data=4 x model=2 (the MLP and qkv kernels split) gives one device's step."""
  config = _scanned_config(data_dir)
  config.mesh.update(dict(data=4, fsdp=1, model=2))
  p8, m8, _, _ = _step_on(jax.devices(), config.mesh, config, scanned_single_device[0])
  _assert_same_step(p8, m8, scanned_single_device)


def test_data_parallel_step_moves_no_activations(data_dir):
  """Pairs are formed on each device: the compiled data-parallel step holds only
  gradient all-reduces, no all-to-all / collective-permute / all-gather."""
  config = tf_.tiny_config(data_dir, batch_size=16)
  config.mesh.update(dict(data=8, fsdp=1, model=1))
  mesh = sharding.make_mesh(config.mesh)
  plan = plan_lib.make_plan(config, num_examples=1000, num_devices=8)
  fns = compile_steps(plan, config, mesh)
  images = jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.float32, sharding=fns.batch_sharding)
  hlo = fns.step.lower(fns.abstract_state_sharded(), images, jax.random.key(0)).compile().as_text()
  for op in ("all-to-all", "collective-permute", "all-gather"):
    assert op not in hlo, f"{op} found in the data-parallel step"
  reduces = re.findall(r"all-reduce(?:-start)?\(", hlo)
  assert reduces, "no gradient all-reduce in the data-parallel step"
  # Only the gradients cross devices, in parameter form: the relative-position
  # tables' gradients too (not their (heads, N, N) expansions), plus a few
  # metric scalars.
  sent = hlo_stats.collective_stats(hlo)["all-reduce"].operand_bytes
  param_bytes = sum(x.size * 4 for x in jax.tree.leaves(fns.abstract_state.params))
  assert 0 <= sent - param_bytes < 256, (sent, param_bytes)


def test_resume_equals_uninterrupted(tmp_path, data_dir):
  """On the 8-device mesh: the restored state lands in the step's shardings."""
  config = tf_.tiny_config(data_dir, num_train_steps=4)
  config.mesh.update(dict(data=4, fsdp=2, model=1))
  full = pretrain.train(config, str(tmp_path / "full"))
  part = pretrain.train(config, str(tmp_path / "resumed"), stop_after=2)
  assert part["final_step"] == 2
  resumed = pretrain.train(config, str(tmp_path / "resumed"))
  assert resumed["final_step"] == 4
  assert {k: v for k, v in full["history"].items() if k > 2} == resumed["history"]
  assert {k: v for k, v in full["history"].items() if k <= 2} == part["history"]
  for a, b in zip(jax.tree.leaves(full["state"].params), jax.tree.leaves(resumed["state"].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _load_config_module(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _pretrain_configs():
  """Every configs/*.py for the pretraining trainer (the fine-tuning ones are
  compiled by tests/test_finetune.py)."""
  paths = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
  return [p for p in paths if _load_config_module(p).get_config().trainer == "pretrain"]


# The configs whose compute choices no other test compiles: float32 with remat
# (base) and bfloat16 with FSDP and remat (huge). large is huge without remat,
# and fashion_mnist is the float32 default every other test compiles.
COMPILED_CONFIGS = ("base_pretrain.py", "huge_pretrain.py")


@pytest.mark.parametrize("path", _pretrain_configs(), ids=os.path.basename)
def test_every_config_plans_and_compiles_one_step(path, data_dir):
  """Each shipped config loads and plans; those in COMPILED_CONFIGS also compile
  and run one step at a tiny size on 8 devices with their own dtype, remat and
  mesh choices (fsdp kept if it fits)."""
  config = _load_config_module(path).get_config()
  assert config.batch_size > 0 and config.data.image_size % 32 == 0
  tiny = tf_.tiny_config(data_dir)
  for key in ("model.embed_dim", "model.depths", "model.num_heads", "model.window_sizes",
              "model.patch_size", "model.decoder_dim", "model.decoder_depth",
              "model.decoder_heads", "data"):
    parent, _, leaf = key.rpartition(".")
    (config[parent] if parent else config)[leaf] = (tiny[parent] if parent else tiny)[leaf]
  config.batch_size, config.num_train_steps = 16, 1
  config.mesh.data = -1
  plan = plan_lib.make_plan(config, num_examples=1000, num_devices=8)
  assert plan.total_steps == 1
  if os.path.basename(path) in COMPILED_CONFIGS:
    images = np.random.default_rng(0).standard_normal((16, 32, 32, 3)).astype(np.float32)
    _, metrics, _, _ = _step_on(jax.devices(), config.mesh, config, images)
    assert np.isfinite(metrics["loss"])


@pytest.mark.parametrize("changes, message", [
    (dict(batch_size=20), "not divisible by the data-parallel size 8"),
    (dict(batch_size=24), "is odd"),
    (dict(**{"mesh.data": 3, "mesh.fsdp": -1}), "do not divide the device count"),
    (dict(**{"mesh.data": 2, "mesh.fsdp": 2}), "4 devices but 8 are available"),
    (dict(group_size=6, batch_size=64), "group_size=6"),
])
def test_plan_errors(changes, message, data_dir):
  config = tf_.tiny_config(data_dir, **changes)
  with pytest.raises(ValueError, match=re.escape(message)):
    plan_lib.make_plan(config, num_examples=1000, num_devices=8)


def test_image_size_error(data_dir):
  with pytest.raises(ValueError, match="image_size=48"):
    pretrain.train(tf_.tiny_config(data_dir, **{"data.image_size": 48}), "/tmp/unused-mixmim")


def test_missing_dataset_names_where_it_looked(tmp_path, data_dir):
  config = tf_.tiny_config(str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
    pretrain.train(config, str(tmp_path / "wd"))


def test_two_processes_agree_with_one(data_dir, tmp_path):
  """Two local processes (4 CPU devices each, gloo) train two steps and match one
  process with 8 devices: the same mesh, losses and parameters."""
  import json  # pylint: disable=import-outside-toplevel
  import socket  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  worker = os.path.join(REPO, "tests", "multiprocess_worker.py")
  import conftest  # pylint: disable=import-outside-toplevel
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=conftest.FAST_COMPILE,
             **conftest.SUBPROCESS_CACHE_ENV)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])

  def launch(pid, nproc, ndev):
    return subprocess.Popen([sys.executable, worker, str(pid), str(nproc), port, str(ndev),
                             data_dir], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)

  def result(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])

  pair = [launch(0, 2, 4), launch(1, 2, 4)]
  two = [result(p) for p in pair]
  one = result(launch(0, 1, 8))
  assert two[0] == two[1]
  np.testing.assert_allclose(two[0]["losses"], one["losses"], rtol=1e-5)
  np.testing.assert_allclose(two[0]["sums"], one["sums"], rtol=1e-4, atol=1e-5)


def test_unknown_config_key_is_named():
  config = os.path.join(REPO, "configs", "fashion_mnist_pretrain.py")
  with pytest.raises(cli.UserError, match=r"unknown config key 'optim\.lrr'.*base_lr"):
    cli.check_trainer_args([f"--config={config}", "--config.optim.lrr=1"])
  cli.check_trainer_args([f"--config={config}", "--config.optim.base_lr=1"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
  """A NaN batch at step 3 stops the run naming step 3; the step-2 checkpoint
  stays the latest and still restores."""
  from mixmim_jax import data  # pylint: disable=import-outside-toplevel
  from mixmim_jax.training import checkpointing
  real = data.pretrain_batches

  class Poisoned:
    def __init__(self, *args, **kwargs):
      self._it = real(*args, **kwargs)
      self._start = kwargs["start_step"]
      self.skipped = 0

    def __next__(self):
      batch = next(self._it)
      self._start += 1
      if self._start == 3:
        # uint8 cannot hold a NaN; a float batch is taken as normalised already.
        batch = dict(image=np.full(batch["image"].shape, np.nan, np.float32))
      return batch

  monkeypatch.setattr(data, "pretrain_batches", Poisoned)
  # The program of test_robustness.py's damaged-checkpoint test (6 steps).
  config = tf_.tiny_config(data_dir, num_train_steps=6)
  with pytest.raises(loop.NonFiniteLoss, match="at step 3"):
    pretrain.train(config, str(tmp_path))
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), keep=3)
  assert ckpt.latest_step() == 2


def test_gradient_accumulation_averages_micro_batches(data_dir):
  """grad_accum_steps=2 on 8 devices: the update uses the mean gradient of two
  micro-batches, micro-batch k holding the k-th half of every device's images,
  each with its own masks and dropout key, exactly as computed here by hand."""
  num_devices = 8
  import optax  # pylint: disable=import-outside-toplevel
  from mixmim_jax.model import masking  # pylint: disable=import-outside-toplevel
  from mixmim_jax.training import train_step
  config = tf_.tiny_config(data_dir, batch_size=32, grad_accum_steps=2)
  config.mesh.update(dict(data=num_devices, fsdp=1, model=1))
  images = np.random.default_rng(3).standard_normal((32, 32, 32, 3)).astype(np.float32)
  params, metrics, fns, plan = _step_on(jax.devices()[:num_devices], config.mesh, config, images)

  state = jax.device_get(fns.init(jax.random.key(0)))
  step_key = jax.random.fold_in(jax.random.key(1), 0)
  per_device, micro = 32 // num_devices, 32 // num_devices // 2
  loss_and_grad = jax.jit(jax.value_and_grad(train_step.loss_fn), static_argnums=(4, 5))
  losses, grads = [], []
  for k in range(2):
    batch = np.concatenate([images[j * per_device + k * micro:j * per_device + (k + 1) * micro]
                            for j in range(num_devices)])
    mask_key, dropout_key = jax.random.split(jax.random.fold_in(step_key, k))
    masks = masking.draw_coarse_masks(mask_key, plan.num_groups, plan.model.num_mask_cells,
                                      config.mask_ratio, config.range_mask_ratio)
    loss, grad = loss_and_grad(state.params, batch, masks, dropout_key, plan, config.norm_pix)
    losses.append(loss)
    grads.append(grad)

  @jax.jit          # one program for the reference update, not one per op and leaf
  def update(grads, opt_state, params):
    mean_grad = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
    updates, _ = fns.tx.update(mean_grad, opt_state, params)
    return optax.apply_updates(params, updates)

  expected = update(grads, state.opt_state, state.params)
  np.testing.assert_allclose(metrics["loss"], np.mean(losses), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_checkpointer_takes_a_relative_directory(tmp_path, monkeypatch):
  """`make run` passes a relative --workdir; orbax needs absolute local paths."""
  monkeypatch.chdir(tmp_path)
  ckpt = checkpointing.Checkpointer(os.path.join("runs", "checkpoints"), keep=1)
  state = {"w": jnp.arange(4.0)}
  assert ckpt.save(1, state, {"note": "relative"}, force=True)
  ckpt.wait()
  restored, meta = ckpt.restore(1, jax.eval_shape(lambda: state))
  ckpt.close()
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert meta == {"note": "relative"}
  assert ckpt.directory == str(tmp_path / "runs" / "checkpoints")



def test_fsdp_scanned_step_equals_single_device(data_dir, scanned_single_device):
  """Stacks of 2 blocks run as scans under data=4 x fsdp=2 and give the loss and
  params of one device, with the same mask groups. The step pins each scan's
  carry to the batch sharding (sharding.activation_rules: without it, XLA's
  propagation loses the batch split inside the loop under FSDP; AOT, large on
  v5p-32: 104 GiB per chip with 12 all-to-alls, against 21 GiB); the same model
  outside those rules has no constraint."""
  config = _scanned_config(data_dir)
  images = scanned_single_device[0]
  config.mesh.update(dict(data=4, fsdp=2, model=1))
  p8, m8, fns, plan = _step_on(jax.devices(), config.mesh, config, images)
  assert plan.num_groups == 8
  batch = jax.ShapeDtypeStruct((32, 32, 32, 3), jnp.float32, sharding=fns.batch_sharding)
  lowered = fns.step.lower(fns.abstract_state_sharded(), batch, jax.random.key(1)).as_text()
  # Encoder stages 2-3 and the decoder: one constraint per scan body, forward.
  pinned = re.findall(r'sharding_constraint [^<]*<@mesh, \[\{"data", "fsdp"\}', lowered)
  assert len(pinned) >= 3, "scan carries are not pinned to the batch sharding"
  model = MixMIMPretrainModel(plan.model)
  masks = jnp.zeros((plan.num_groups, plan.model.num_mask_cells))
  apply = jax.jit(model.apply).lower({"params": fns.abstract_state.params}, batch, masks)
  assert "sharding_constraint" not in apply.as_text()
  _assert_same_step(p8, m8, scanned_single_device)


@pytest.mark.parametrize("slice_, chips, group, masks", [
    ("v4-32", 16, 128, 16),      # 128 per chip: the reference's GPU batch exactly
    ("v5e-64", 64, 32, 64),      # 32 per chip: groups stay on their chip
    ("v4-8", 4, 128, 16),        # 512 per chip: four masks per chip, as 4 GPUs would
])
def test_mask_groups_follow_the_recipe_where_the_slice_allows(data_dir, slice_, chips, group,
                                                            masks):
  """base_pretrain's batch of 2048 on three slices: 128 images per mask wherever
  a chip holds a multiple of 128, else the chip's whole batch; the start-up line
  says which and how it differs from the reference."""
  config = tf_.tiny_config(data_dir, batch_size=2048, group_size=-1)
  config.mesh.update(dict(data=-1, fsdp=1, model=1))
  plan = plan_lib.make_plan(config, num_examples=2048 * 10, num_devices=chips)
  assert (plan.group_size, plan.num_groups) == (group, masks), slice_
  line = plan_lib.grouping_line(plan)
  assert line.startswith(f"mask groups: {group} images per mask, {masks} masks per step")
  if group == 128:
    assert "as the reference" in line
    # A smaller group the config sets is named as the reason, not the batch.
    config.group_size = 32
    line = plan_lib.grouping_line(plan_lib.make_plan(config, 2048 * 10, chips))
    assert "4x as many masks here (as config.group_size asks)" in line, line
  else:
    assert "4x as many masks here" in line and "32 is not a multiple of 128" in line
