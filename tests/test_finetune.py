"""Fine-tuning: batch mixing, the loss against mmpretrain's, the tf.data
augmentations, weight loading and table resizing, the linear probe, every
fine-tune config compiled at a tiny size, and a short run of the trainer."""
from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixmim_jax import data
from mixmim_jax.data import labeled, randaugment, sources
from mixmim_jax.data.tf_cpu import tf
from mixmim_jax.model import api
from mixmim_jax.model.arch import model_config
from mixmim_jax.model.linear_probe import LinearProbe, fold_probe
from mixmim_jax.training import checkpointing, mixup, plan as plan_lib, sharding
from mixmim_jax.training.finetune_step import soft_cross_entropy
from mixmim_jax.training.steps import compile_steps
from mixmim_jax.weights import adapt, params_file
from train_fixtures import write_idx_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))
TINY_CFG = model_config(TINY, window_sizes=(4, 4, 2, 1), img_size=32, patch_size=2,
                        num_classes=10)




# ------------------------------------------------------------------ mixing

def test_mixup_is_one_convex_combination_with_matching_targets():
  x = jax.random.normal(jax.random.key(0), (8, 6, 6, 3))
  t = jax.nn.one_hot(jnp.arange(8), 8)
  mx, mt = mixup.mixup(jax.random.key(1), x, t, 0.8)
  mt = np.asarray(mt)
  own = np.diag(mt)                                      # lam, or 1 where perm[i] == i
  lam = own[own < 1][0]
  np.testing.assert_allclose(own[own < 1], lam, atol=1e-6)   # one lam for the batch
  off = mt - np.diag(own)
  partner = np.where(own < 1, off.argmax(1), np.arange(8))
  np.testing.assert_allclose(off.max(1)[own < 1], 1 - lam, atol=1e-6)
  np.testing.assert_allclose(mx, lam * x + (1 - lam) * x[partner], atol=1e-5)
  np.testing.assert_allclose(mt.sum(1), 1.0, atol=1e-6)


def test_cutmix_pasted_area_equals_target_weight():
  x = jnp.arange(8, dtype=jnp.float32)[:, None, None, None] * jnp.ones((8, 16, 16, 1))
  t = jax.nn.one_hot(jnp.arange(8), 8)
  cut = jax.jit(lambda k: mixup.cutmix(k, x, t, 1.0))
  for seed in range(5):
    mx, mt = cut(jax.random.key(seed))
    for i in range(8):
      own = float((mx[i] == i).mean())               # pixels still from image i
      assert float(mt[i, i]) == pytest.approx(own, abs=1e-6) or float(mt[i].max()) == 1


def test_random_batch_augment_uses_both_and_stays_on_each_device():
  x = jax.random.normal(jax.random.key(0), (16, 8, 8, 3))
  t = jax.nn.one_hot(jnp.arange(16), 16)
  kinds = set()
  mix = jax.jit(lambda k: mixup.mix_per_device(k, x, t, 4, 0.8, 1.0))
  for seed in range(8):
    mx, mt = mix(jax.random.key(seed))
    # Partners of image i come only from its own slice of 4 (its device's batch).
    nz = np.asarray(mt) > 0
    for i in range(16):
      assert set(np.nonzero(nz[i])[0] // 4) == {i // 4}
    changed = np.asarray(mx != x).reshape(16, -1).mean(1)
    kinds.add("mixup" if (changed > 0.99).any() else "cutmix")
  assert kinds == {"mixup", "cutmix"}


def test_smoothed_soft_cross_entropy_equals_mmpretrain_label_smooth_loss():
  torch = pytest.importorskip("torch")
  from mixmim_jax.tools import torch_reference as ref  # pylint: disable=import-outside-toplevel
  models = ref.import_mmpretrain()
  loss = models.build(dict(type="LabelSmoothLoss", label_smooth_val=0.1, mode="original",
                           num_classes=10))
  logits = np.random.default_rng(0).standard_normal((6, 10)).astype(np.float32)
  soft = np.random.default_rng(1).dirichlet(np.ones(10), 6).astype(np.float32)
  theirs = float(loss(torch.from_numpy(logits), torch.from_numpy(soft)))
  ours = float(soft_cross_entropy(jnp.asarray(logits), jnp.asarray(soft * 0.9 + 0.01)))
  assert ours == pytest.approx(theirs, rel=1e-6)


# ------------------------------------------------------------------ augmentations

def _photo():
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:32, :32]
  base = np.stack([xx * 6, yy * 5, (xx + yy) * 3], -1) + rng.integers(0, 40, (32, 32, 3))
  return np.clip(base, 10, 240).astype(np.float32)


def _mmpretrain_auto_augment():
  """mmpretrain's RandAugment transforms (its auto_augment module)."""
  from mixmim_jax.tools import torch_reference  # pylint: disable=import-outside-toplevel
  torch_reference.import_mmpretrain()
  from mmpretrain.datasets.transforms import auto_augment  # pylint: disable=import-outside-toplevel
  return auto_augment


def test_point_ops_match_mmpretrain():
  """AutoContrast, Equalize and Posterize equal mmpretrain's transforms (mmcv's
  functions) on a photo, a low-contrast crop of it and a flat image."""
  auto_augment = _mmpretrain_auto_augment()
  photo = pytest.importorskip("skimage.data").astronaut()
  images = [_photo().astype(np.uint8), np.ascontiguousarray(photo[:200, :150]),
            (photo[:64, :64] // 4 + 60).astype(np.uint8), np.full((20, 30, 3), 77, np.uint8)]
  cases = [(randaugment.auto_contrast, auto_augment.AutoContrast(prob=1.0)),
           (randaugment.equalize, auto_augment.Equalize(prob=1.0)),
           (lambda x: randaugment.posterize(x, 2.4), auto_augment.Posterize(bits=3, prob=1.0))]
  for img in images:
    for ours, theirs in cases:
      expected = theirs.transform({"img": img.copy()})["img"].astype(np.float32)
      np.testing.assert_array_equal(ours(tf.constant(img, tf.float32)).numpy(), expected)


@pytest.mark.parametrize("kind, magnitude", [
    ("rotate", 17.3), ("rotate", -24.0), ("shear_x", 0.21), ("shear_y", -0.13),
    ("translate_x", 0.31), ("translate_y", -0.27)])
def test_warps_give_mmpretrains_pixels(kind, magnitude):
  """Rotate, shear and translate at a given magnitude equal mmpretrain's own
  transforms (mmcv's cv2.warpAffine, bicubic, the recipe's pad value) to the
  bit, on a photo that is not square."""
  auto_augment = _mmpretrain_auto_augment()
  photo = np.ascontiguousarray(pytest.importorskip("skimage.data").astronaut()[100:164, 150:198])
  fill = (124, 116, 104)
  common = dict(prob=1.0, random_negative_prob=0.0, pad_val=fill, interpolation="bicubic")
  if kind == "rotate":
    theirs = auto_augment.Rotate(angle=magnitude, **common)
  else:
    cls = auto_augment.Shear if kind.startswith("shear") else auto_augment.Translate
    direction = "horizontal" if kind.endswith("_x") else "vertical"
    theirs = cls(magnitude=magnitude, direction=direction, **common)
  expected = theirs.transform({"img": photo.copy()})["img"]
  ours = randaugment.apply_op(randaugment.OP_NAMES.index(kind), tf.constant(photo, tf.float32),
                              tf.constant(magnitude, tf.float32), fill).numpy()
  assert np.abs(ours - photo).mean() > 5                 # it moved the image
  np.testing.assert_array_equal(ours, expected.astype(np.float32))


@pytest.mark.parametrize("kind, magnitude", [
    ("invert", 0.0), ("solarize", 128.0), ("solarize_add", 60.0), ("color", 0.375),
    ("color", -0.6875), ("contrast", 0.375), ("contrast", -0.6875), ("brightness", 0.375),
    ("brightness", -0.6875), ("sharpness", 0.375), ("sharpness", -0.6875)])
def test_photometric_ops_give_mmpretrains_pixels(kind, magnitude):
  """The other RandAugment ops at a given magnitude equal mmpretrain's own
  transforms to the bit (mmcv's cv2 backend: its grey image, its rounding in
  cv2.addWeighted). mmpretrain works on BGR images, as its loader reads them."""
  auto_augment = _mmpretrain_auto_augment()
  photo = np.ascontiguousarray(pytest.importorskip("skimage.data").coffee()[:120, :90])
  signed = dict(magnitude=magnitude, prob=1.0, random_negative_prob=0.0)
  theirs = {"invert": lambda: auto_augment.Invert(prob=1.0),
            "solarize": lambda: auto_augment.Solarize(thr=magnitude, prob=1.0),
            "solarize_add": lambda: auto_augment.SolarizeAdd(magnitude=magnitude, prob=1.0),
            "color": lambda: auto_augment.ColorTransform(**signed),
            "contrast": lambda: auto_augment.Contrast(**signed),
            "brightness": lambda: auto_augment.Brightness(**signed),
            "sharpness": lambda: auto_augment.Sharpness(**signed)}[kind]()
  bgr = np.ascontiguousarray(photo[..., ::-1])
  expected = theirs.transform({"img": bgr})["img"][..., ::-1].astype(np.float32)
  ours = randaugment.apply_op(randaugment.OP_NAMES.index(kind), tf.constant(photo, tf.float32),
                              tf.constant(magnitude, tf.float32), (124, 116, 104)).numpy()
  assert np.abs(ours - photo).mean() > 0.5                 # it changed the image
  np.testing.assert_array_equal(ours, expected)


def test_every_op_changes_the_image_and_stays_on_the_grid():
  img = tf.constant(_photo())
  for i, name in enumerate(randaugment.OP_NAMES):
    lo, hi = randaugment.OPS[i][1:3]
    m = 0.5 * ((lo or 0) + (hi or 0)) if name != "posterize" else 2.0
    out = randaugment.apply_op(i, img, tf.constant(float(m)), (124, 116, 104)).numpy()
    assert out.shape == (32, 32, 3) and out.min() >= 0 and out.max() <= 255, name
    assert np.array_equal(out, np.round(out)), name
    assert np.abs(out - img.numpy()).mean() > 0.5, name


def test_train_augmentations_run_inside_tf_data_and_change_images():
  cfg = data.labeled_config()
  cfg.image_size = 32
  images = np.stack([_photo().astype(np.uint8)] * 16)
  keys = tf.random.experimental.stateless_split(tf.constant([0, 7], tf.int64), 16)
  ds = tf.data.Dataset.from_tensor_slices((images, keys)).map(
      lambda im, k: labeled.train_view(im, k, "pixels", cfg))
  out = np.stack(list(ds.as_numpy_iterator()))
  plain = np.stack([_photo()] * 16)
  assert out.shape == (16, 32, 32, 3) and out.dtype == np.uint8
  assert np.abs(out.astype(np.float32) - plain).mean() > 10
  assert len({o.tobytes() for o in out}) == 16            # every view differs
  # Erasing alone, p = 1: one box of 2-33 % of the image is noise.
  erased = randaugment.random_erasing(tf.constant(_photo()), tf.constant([1, 2], tf.int64),
                                      prob=1.0).numpy()
  frac = (erased != _photo()).any(-1).mean()
  assert 0.015 < frac < 0.34


def test_erasing_fills_one_box_with_the_recipes_noise():
  """RandomErasing (p = 1): the changed pixels form one box of 2-33 % of the
  image, filled with N(mean, std) per channel truncated to integers and
  clipped to 0..255; the rest is untouched. The noise against mmpretrain's
  own RandomErasing of the recipe (its BGR fill reversed), pooled over boxes
  until each channel's sample (>= 20000 values a side) tells a 5 % std error.
  -1 marks the original pixels."""
  torch = pytest.importorskip("torch")  # noqa: F841
  from mixmim_jax.tools import torch_reference as ref  # pylint: disable=import-outside-toplevel
  ref.import_mmpretrain()
  from mmpretrain.registry import TRANSFORMS  # pylint: disable=import-outside-toplevel
  recipe = [t for t in ref.recipe(ref.FINETUNE_RECIPE).train_pipeline
            if t["type"] == "RandomErasing"][0]
  theirs_transform = TRANSFORMS.build(dict(recipe, erase_prob=1.0))
  cfg = data.labeled_config()
  mean, std = tuple(cfg.mean), tuple(cfg.std)
  ours, theirs = [], []
  seed = 0
  while min(len(ours), len(theirs)) < 20000:
    img = tf.fill([320, 256, 3], -1.0)
    out = randaugment.random_erasing(img, tf.constant([seed, 2], tf.int64), prob=1.0,
                                     mean=mean, std=std).numpy()
    changed = (out != -1.0).all(-1)
    assert ((out != -1.0).any(-1) == changed).all()        # whole pixels, all channels
    rows, cols = np.nonzero(changed)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert changed.sum() == box and 0.019 < box / changed.size < 0.34
    ours.extend(out[changed])
    # The reference on a uint8 image: a sentinel value it cannot draw twice in a row.
    np.random.seed(seed)
    marked = theirs_transform.transform({"img": np.full((320, 256, 3), 7, np.uint8)})["img"]
    differs = (marked != 7).any(-1)
    rows, cols = np.nonzero(differs)
    box_t = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    theirs.extend(marked[box_t].reshape(-1, 3)[:, ::-1].astype(np.float64))   # BGR -> RGB
    seed += 1
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert (ours == np.round(ours)).all() and ours.min() >= 0 and ours.max() <= 255
  n_o, n_t = len(ours), len(theirs)
  sigma = np.sqrt(1 / (2 * n_o) + 1 / (2 * n_t))
  assert 7 * sigma <= 0.05                               # can tell a 5 % std error
  ratio = ours.std(0) / theirs.std(0)
  assert np.all(np.abs(ratio - 1) <= 4 * sigma), (ratio, 4 * sigma)
  gap, tol = ours.mean(0) - theirs.mean(0), 5 * np.asarray(std) * np.sqrt(1 / n_o + 1 / n_t)
  assert np.all(np.abs(gap) <= tol), (gap, tol)


def test_label_fraction_keeps_ten_percent_of_each_class(tmp_path):
  _, labels = write_idx_split(str(tmp_path), "train", 400)
  keep = sources.label_subset(labels, 0.1)
  for c in range(10):
    n = int((labels == c).sum())
    assert int((labels[keep] == c).sum()) == max(1, int(np.ceil(0.1 * n)))


# ------------------------------------------------------------------ weights

def test_resizing_to_the_same_windows_keeps_the_output():
  params = api.init_params(TINY_CFG, "classifier", 0)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  same, report = adapt.adapt(TINY_CFG, params, TINY_CFG,
                                     jax.tree.map(np.zeros_like, params))
  assert not report["fresh"] and not report["resized"]
  np.testing.assert_array_equal(api.classify(TINY_CFG, params, x),
                                api.classify(TINY_CFG, same, x))
  table = np.random.default_rng(0).standard_normal((49, 2)).astype(np.float32)
  np.testing.assert_allclose(adapt.resize_relative_bias_table(table, 4), table)
  # A real resize (identity matrix rows sum to one: a constant table stays constant).
  np.testing.assert_allclose(adapt.bicubic_matrix(7, 13).sum(1), 1.0, atol=1e-12)


def test_bicubic_resize_equals_torch_interpolate():
  torch = pytest.importorskip("torch")
  table = np.random.default_rng(0).standard_normal((27 * 27, 3)).astype(np.float32)
  ours = adapt.resize_relative_bias_table(table, 24)
  grid = torch.from_numpy(table.reshape(27, 27, 3).transpose(2, 0, 1))[None]
  theirs = torch.nn.functional.interpolate(grid, size=(47, 47), mode="bicubic",
                                           align_corners=False)[0].numpy()
  np.testing.assert_allclose(ours, theirs.transpose(1, 2, 0).reshape(-1, 3), atol=1e-5)


def test_init_from_pretraining_workdir_and_params_file(tmp_path):
  pre_cfg = TINY_CFG.replace(num_classes=0, decoder_dim=32, decoder_depth=1, decoder_heads=2,
                             pos_embed="col_row")
  pre = api.init_params(pre_cfg, "pretrain", 3)
  ckpt = checkpointing.Checkpointer(str(tmp_path / "pre" / "checkpoints"), 1, False)
  import json  # pylint: disable=import-outside-toplevel
  ckpt.save(7, dict(step=jnp.int32(7), params=pre, opt_state={}),
            dict(model_config=json.loads(pre_cfg.to_json())), force=True)
  ckpt.close()
  params_file.save_params(str(tmp_path / "pre.msgpack"), pre_cfg, "pretrain", pre)
  # Target: other windows in stage 0 (4 -> 8 at 32 px is clamped to 16 tokens... use 2).
  dst = TINY_CFG.replace(window_sizes=(2, 4, 2, 1))
  fresh = api.init_params(dst, "classifier", 0)
  for source in (str(tmp_path / "pre"), str(tmp_path / "pre.msgpack")):
    params, cfg = adapt.initial_params(source, -1, dst, fresh)
    assert cfg.pos_embed == "col_row"                   # the checkpoint's table layout
    assert "decoder" not in params
    np.testing.assert_array_equal(params["head"]["kernel"], fresh["head"]["kernel"])
    np.testing.assert_array_equal(params["encoder"]["norm"]["scale"],
                                  pre["encoder"]["norm"]["scale"])
    table = params["encoder"]["layers_0"]["blocks_0"]["attn"]["relative_position_bias_table"]
    assert table.shape == (9, 1)
    np.testing.assert_allclose(table, adapt.resize_relative_bias_table(
        np.asarray(pre["encoder"]["layers_0"]["blocks_0"]["attn"]
                   ["relative_position_bias_table"]), 2))
  with pytest.raises(ValueError, match="embed_dim"):
    adapt.adapt(pre_cfg.replace(embed_dim=32), {}, dst, fresh)


def test_folded_probe_equals_probe_in_eval_mode():
  model = LinearProbe(TINY_CFG)
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  v = jax.jit(model.init)(jax.random.key(1), x)
  _, new = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      v, x * 3 + 1)
  stats = new["batch_stats"]
  assert float(jnp.abs(stats["feature_norm"]["mean"]).max()) > 0     # stats were updated
  probe = jax.jit(model.apply)({"params": v["params"], "batch_stats": stats}, x)
  plain = api.classify(TINY_CFG, fold_probe(v["params"], stats), x)
  np.testing.assert_allclose(plain, probe, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ configs and trainer

def _load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


FT_CONFIGS = sorted(f for f in os.listdir(os.path.join(ROOT, "configs"))
                    if f.endswith(".py") and _load(f).get_config().trainer == "finetune")


def _tiny(c, data_dir):
  c.arch = "base"
  c.model.update(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                 window_sizes=(4, 4, 2, 1), patch_size=2)
  c.num_classes = 10
  c.data.update(source="fashion_mnist", fashion_mnist_dir=data_dir, split="train",
                eval_split="test", image_size=32, eval_resize=32, num_parallel_calls=2,
                label_fraction=1.0)
  c.batch_size, c.eval_batch_size = 16, 16
  c.mesh.fsdp = min(c.mesh.fsdp, 2)
  return c


def test_every_finetune_config_builds_a_step(tmp_path):
  assert {"base_finetune.py", "large_finetune.py", "huge_finetune.py", "base_linprobe.py",
          "fashion_mnist_finetune.py", "fashion_mnist_linprobe.py"} <= set(FT_CONFIGS)
  mesh_devices = jax.device_count()
  for name in FT_CONFIGS:
    c = _tiny(_load(name).get_config(), str(tmp_path))
    plan = plan_lib.make_plan(c, 96, mesh_devices)
    fns = compile_steps(plan, c, sharding.make_mesh(c.mesh))
    images = jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.float32, sharding=fns.batch_sharding)
    labels = jax.ShapeDtypeStruct((16,), jnp.int32, sharding=fns.batch_sharding)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         fns.abstract_state, fns.state_shardings)
    lowered = fns.step.lower(state, images, labels, jax.random.key(0))
    assert "while" not in name and lowered.as_text()
  c384 = _load("base_finetune.py").get_config("384")
  assert plan_lib.build_model_config(c384).effective_windows == (16, 16, 24, 12)


@pytest.mark.parametrize("name", ["fashion_mnist_finetune.py", "fashion_mnist_linprobe.py"])
def test_trainer_runs_resumes_and_exports(tmp_path, name):
  from mixmim_jax.trainers import finetune  # pylint: disable=import-outside-toplevel
  write_idx_split(str(tmp_path), "train", 96)
  write_idx_split(str(tmp_path), "test", 21, seed=1)
  c = _tiny(_load(name).get_config(), str(tmp_path))
  c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps = 3, 1, 2
  c.checkpoint_async = False
  work = str(tmp_path / "run")
  first = finetune.finetune(c, work, stop_after=2)
  assert first["final_step"] == 2 and not first["evals"]
  second = finetune.finetune(c, work)
  assert second["final_step"] == 3 and second["evals"][3]["count"] == 21
  assert all(np.isfinite(v) for v in second["history"].values())
  exported = params_file.load_params(os.path.join(work, "final.msgpack"))
  assert exported.kind == "classifier" and "feature_norm" not in exported.params
  if c.task == "linprobe":   # the frozen encoder did not move
    start = api.init_params(exported.config, "linprobe", c.seed)
    np.testing.assert_array_equal(exported.params["encoder"]["norm"]["scale"],
                                  start["encoder"]["norm"]["scale"])
