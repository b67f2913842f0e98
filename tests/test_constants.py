"""Every recipe constant and law against the references' own objects.

Each value on the reference side is read from mmpretrain's and mmengine's
config files and classes (the recipes under mmpretrain/.mim/configs/mixmim/,
constructor defaults, the transforms and batch augments themselves), never
typed in here; ours from recipes.py, data/config.py and the modules that use
them. Laws with randomness (RandAugment's magnitudes and signs, Mixup, CutMix
and its lam correction) are compared on shared draws: the reference's random
calls are replaced by the values our code drew. The authors' code
(Sense-X/MixMIM) is on no package index: where a constant is theirs, it is
read from what of theirs torch defines (their decoder's nn.LayerNorm), and
test_authors.py checks the rest against a checkout.

Also here: the reference builders (tools/torch_reference.py) read only the
sizes of a ModelConfig, so no value of ours can make the reference agree.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mixmim_jax import data  # noqa: E402
from mixmim_jax.data import randaugment  # noqa: E402
from mixmim_jax.data.tf_cpu import tf  # noqa: E402
from mixmim_jax.model import api, arch, encoder, init_schemes  # noqa: E402
from mixmim_jax.model.arch import ModelConfig  # noqa: E402
from mixmim_jax.tools import torch_reference as ref  # noqa: E402
from mixmim_jax.training import mixup, optim, recipes  # noqa: E402
from mixmim_jax.weights import torch_format  # noqa: E402
from test_parity import tiny_config  # noqa: E402

MODULES = None


def _mm():
  """mmpretrain's registries and modules, imported once."""
  global MODULES  # pylint: disable=global-statement
  if MODULES is None:
    ref.import_mmpretrain()
    import mmpretrain.datasets.transforms as transforms  # pylint: disable=import-outside-toplevel
    from mmpretrain.datasets.transforms import auto_augment  # pylint: disable=import-outside-toplevel
    from mmpretrain.models import backbones, necks, selfsup  # pylint: disable=import-outside-toplevel
    from mmpretrain.models.utils import batch_augments  # pylint: disable=import-outside-toplevel
    from mmpretrain.registry import TRANSFORMS  # pylint: disable=import-outside-toplevel
    MODULES = dict(transforms=transforms, auto_augment=auto_augment, backbones=backbones,
                   necks=necks, selfsup=selfsup, batch_augments=batch_augments,
                   TRANSFORMS=TRANSFORMS)
  return MODULES


def _default(cls, name):
  """A constructor argument's default, as the class declares it."""
  return inspect.signature(cls.__init__).parameters[name].default


def _step(pipeline, kind):
  steps = [s for s in pipeline if s["type"] == kind]
  assert len(steps) == 1, (kind, pipeline)
  return steps[0]


# --------------------------------------------------------------------------
# The reference is built from its recipes: no value of ours reaches it.

# A different, valid value for every ModelConfig field that is not a size.
POISON = dict(in_chans=1, drop_rate=0.3, attn_drop_rate=0.2, drop_path_rate=0.4,
              pos_embed="col_row", decoder_ln_eps=0.123, decoder_pos_embed="col_row",
              init="authors", dtype="bfloat16", remat=True, scan_blocks=False)
# A different value for every size field (they must reach it).
RESIZE = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
              window_sizes=(4, 4, 4, 2), img_size=128, patch_size=2, mlp_ratio=2.0,
              num_classes=7, decoder_dim=32, decoder_depth=1, decoder_heads=4)


def test_reference_builders_read_only_sizes(monkeypatch):
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  assert set(POISON) == fields - set(ref.SIZE_FIELDS), \
      "a new ModelConfig field: add it to POISON (a value) or to ref.SIZE_FIELDS (a size)"
  assert set(RESIZE) == set(ref.SIZE_FIELDS)
  cfg = tiny_config()
  clean = (ref.pretrain_model_dict(cfg), ref.classifier_model_dict(cfg))
  for name, value in POISON.items():
    poisoned = cfg.replace(**{name: value})
    assert (ref.pretrain_model_dict(poisoned),
            ref.classifier_model_dict(poisoned)) == clean, f"{name} reaches the reference"
  for name, value in RESIZE.items():
    resized = cfg.replace(**{name: value})
    assert ref.pretrain_model_dict(resized) != clean[0] or name == "num_classes", name
    assert ref.classifier_model_dict(resized) != clean[1] or name.startswith("decoder"), name
  # The builders hand mmpretrain exactly these dicts (and its recipe's preprocessor).
  built = []
  monkeypatch.setattr(ref, "_build", lambda *args: built.append(args))
  everything = cfg.replace(**POISON)
  ref.build_pretrain_model(everything)
  ref.build_classifier(everything)
  assert [b[0] for b in built] == list(clean)
  assert built[0][1] == ref.recipe(ref.PRETRAIN_RECIPE).data_preprocessor.to_dict()
  assert built[1][1] == ref.recipe(ref.FINETUNE_RECIPE).data_preprocessor.to_dict()
  # What differs from the recipes' own model dicts is sizes only.
  for model, name in zip(clean, (ref.PRETRAIN_RECIPE, ref.FINETUNE_RECIPE)):
    recipe = ref.recipe(name).model.to_dict()
    changed = {f"{part}.{k}" for part in ("backbone", "neck", "head")
               for k in set(model.get(part, {})) | set(recipe.get(part, {}))
               if model.get(part, {}).get(k) != recipe.get(part, {}).get(k)}
    assert changed <= {"backbone.arch", "backbone.img_size", "backbone.patch_size",
                       "backbone.window_size", "backbone.mlp_ratio", "backbone.init_cfg",
                       "neck.num_patches", "neck.encoder_stride", "neck.embed_dim",
                       "neck.decoder_embed_dim", "neck.decoder_depth",
                       "neck.decoder_num_heads", "neck.mlp_ratio", "head.num_classes",
                       "head.in_channels"}, changed


# --------------------------------------------------------------------------
# Model: arch table, sizes, LayerNorm eps module by module.

def test_archs_and_model_defaults_are_mmpretrains():
  m = _mm()
  backbone = m["backbones"].MixMIMTransformer
  for name, ours in arch.ARCHS.items():
    theirs = backbone.arch_zoo[name]
    assert (ours["embed_dim"], list(ours["depths"]), list(ours["num_heads"])) == (
        theirs["embed_dims"], list(theirs["depths"]), list(theirs["num_heads"])), name
  cfg, fields = ModelConfig(), recipes.pretrain_defaults().model
  for ours_name, theirs_name in (("window_sizes", "window_size"), ("patch_size", "patch_size"),
                                 ("mlp_ratio", "mlp_ratio"), ("img_size", "img_size"),
                                 ("in_chans", "in_channels")):
    theirs = _default(backbone, theirs_name)
    assert getattr(cfg, ours_name) == (tuple(theirs) if isinstance(theirs, list) else theirs)
    if ours_name in fields:
      assert fields[ours_name] == getattr(cfg, ours_name), ours_name
  neck = m["necks"].MixMIMPretrainDecoder
  assert _default(neck, "mlp_ratio") == cfg.mlp_ratio


def _our_layer_norms(cfg, kind):
  """{torch module name: eps} of every LayerNorm our `kind` model builds."""
  found = {}

  def spy(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.LayerNorm) and context.method_name == "__call__":
      found[context.module.scope.path] = context.module.epsilon
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(spy):
    jax.eval_shape(lambda k: api.init_variables(cfg, kind, k), jax.random.key(0))
  names = torch_format.torch_names(cfg, kind)
  return {names[path + ("scale",)][:-len(".weight")]: eps for path, eps in found.items()}


@pytest.mark.parametrize("kind", ["pretrain", "classifier"])
def test_every_layer_norm_eps_is_the_references(kind):
  """Each LayerNorm of the recipe's model, by name, with the eps it computes with."""
  defaults = recipes.pretrain_defaults() if kind == "pretrain" else recipes.finetune_defaults()
  cfg = tiny_config().replace(**{k: v for k, v in defaults.model.items()
                                 if k == "decoder_ln_eps"})
  model = (ref.build_pretrain_model(cfg) if kind == "pretrain" else ref.build_classifier(cfg))
  theirs = {name: m.eps for name, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
  ours = _our_layer_norms(cfg, kind)
  assert ours == theirs
  assert len(ours) > 10
  if kind == "pretrain":
    # The default config and the converter's table agree with mmpretrain, and
    # with the authors' decoder (their nn.LayerNorm: torch's default eps).
    assert ModelConfig().decoder_ln_eps == theirs["neck.ln1"]
    assert torch_format.DECODER_LN_EPS == {torch_format.MMPRETRAIN: theirs["neck.ln1"],
                                           torch_format.OFFICIAL: ref.authors_decoder_ln_eps()}


def test_init_constants_are_the_recipes():
  """The classifier recipe's init_cfg (TruncNormal 0.02 on every Linear, bias 0;
  LayerNorm 1 and 0) and mmengine's truncation bounds (+-2, absolute: nothing
  is cut at std 0.02, so it is a plain normal)."""
  from mmengine.model.weight_init import TruncNormalInit  # pylint: disable=import-outside-toplevel
  init_cfg = {c["layer"]: c for c in ref.recipe(ref.FINETUNE_RECIPE).model.init_cfg}
  linear = init_cfg["Linear"]
  assert linear["type"] == "TruncNormal" and linear["bias"] == 0
  scheme = init_schemes.scheme("mmpretrain", classifier=True)
  assert scheme.encoder_linear == scheme.head == init_schemes.LinearInit("normal", linear["std"])
  assert (_default(TruncNormalInit, "a"), _default(TruncNormalInit, "b")) == (-2, 2)
  assert 2 / linear["std"] > 50                 # bounds at 100 std: never reached
  norm = init_cfg["LayerNorm"]
  assert (norm["type"], norm["val"], norm["bias"]) == ("Constant", 1.0, 0.0)
  ln = nn.LayerNorm()
  assert (ln.scale_init(jax.random.key(0), (1,)), ln.bias_init(jax.random.key(0), (1,))) == (1, 0)


# --------------------------------------------------------------------------
# Recipes: optimizer, schedule, masking, data.

def _scheduler_eta_min(cfg):
  """The floor mmengine's CosineAnnealingLR builds from a recipe entry."""
  from mmengine.registry import PARAM_SCHEDULERS  # pylint: disable=import-outside-toplevel
  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
  entry = {k: v for k, v in cfg.items() if k != "convert_to_iter_based"}
  return PARAM_SCHEDULERS.build(entry, default_args=dict(optimizer=opt)).eta_min


def _check_optimizer_and_schedule(c, recipe, gpus):
  opt = recipe.optim_wrapper.optimizer
  assert (opt.type, c.optim.name) == ("AdamW", "adamw")
  assert c.batch_size == gpus * recipe.train_dataloader.batch_size
  assert c.optim.base_lr * c.batch_size / 256 == pytest.approx(opt.lr, rel=1e-15)
  assert (c.optim.b1, c.optim.b2) == tuple(opt.betas)
  assert c.optim.eps == opt.get("eps", _default(torch.optim.AdamW, "eps"))
  assert c.optim.weight_decay == opt.weight_decay
  assert c.optim.grad_clip_norm == 0 and "clip_grad" not in recipe.optim_wrapper
  assert c.optim.wd_rule == "mmpretrain"
  warmup, cosine = recipe.param_scheduler
  assert (warmup.type, cosine.type) == ("LinearLR", "CosineAnnealingLR")
  assert c.optim.warmup_start_factor == warmup.start_factor
  assert warmup.get("end_factor", 1.0) == 1.0       # up to the full lr
  assert warmup.begin == 0 and c.warmup_epochs == warmup.end == cosine.begin
  assert c.num_epochs == cosine.end == recipe.train_cfg.max_epochs
  assert cosine.T_max == cosine.end - cosine.begin
  assert c.optim.end_lr == _scheduler_eta_min(cosine)
  assert warmup.by_epoch and cosine.by_epoch and warmup.convert_to_iter_based


def test_pretraining_recipe_constants():
  recipe, c = ref.recipe(ref.PRETRAIN_RECIPE), recipes.pretrain_defaults()
  _check_optimizer_and_schedule(c, recipe, gpus=16)     # "16xb128"
  assert c.batch_size == recipe.auto_scale_lr.base_batch_size
  assert c.optim.layer_decay == 1.0 and "constructor" not in recipe.optim_wrapper
  model = recipe.model
  assert c.mask_ratio == model.backbone.mask_ratio
  assert c.range_mask_ratio == _default(_mm()["selfsup"].MixMIMPretrainTransformer,
                                        "range_mask_ratio")
  assert c.norm_pix == model.head.norm_pix
  assert c.model.drop_path_rate == model.backbone.drop_path_rate
  assert c.model.drop_rate == model.backbone.drop_rate
  assert (c.model.decoder_dim, c.model.decoder_depth, c.model.decoder_heads) == (
      model.neck.decoder_embed_dim, model.neck.decoder_depth, model.neck.decoder_num_heads)
  assert c.model.decoder_ln_eps == _default(_mm()["necks"].MixMIMPretrainDecoder,
                                            "norm_cfg")["eps"]
  assert c.model.pos_embed == c.model.decoder_pos_embed == "row_col"    # mmpretrain's tables
  # The input.
  d, pre = c.data, recipe.data_preprocessor
  assert (list(d.mean), list(d.std), pre.to_rgb) == (pre.mean, pre.std, True)
  crop = _step(recipe.train_pipeline, "RandomResizedCrop")
  rrc = _mm()["transforms"].RandomResizedCrop
  assert d.image_size == crop.scale
  assert tuple(d.crop_scale) == tuple(crop.crop_ratio_range)
  assert tuple(d.crop_ratio) == tuple(crop.get("aspect_ratio_range",
                                               _default(rrc, "aspect_ratio_range")))
  assert (d.interpolation, crop.backend) == (crop.interpolation, "pillow")
  assert d.hflip and _step(recipe.train_pipeline, "RandomFlip").prob == 0.5


def test_finetuning_recipe_constants():
  recipe, c = ref.recipe(ref.FINETUNE_RECIPE), recipes.finetune_defaults()
  _check_optimizer_and_schedule(c, recipe, gpus=8)      # "8xb128"
  wrapper = recipe.optim_wrapper
  assert wrapper.constructor == "LearningRateDecayOptimWrapperConstructor"
  assert c.optim.layer_decay == wrapper.paramwise_cfg.layer_decay_rate
  assert c.optim.layer_decay_rule == "mmpretrain"
  model = recipe.model
  assert c.model.drop_path_rate == model.backbone.drop_path_rate
  assert c.model.drop_rate == model.backbone.drop_rate
  assert c.num_classes == model.head.num_classes
  loss = model.head.loss
  assert (loss.type, loss.mode) == ("LabelSmoothLoss", "original")
  assert c.label_smoothing == loss.label_smooth_val
  augments = {a["type"]: a for a in model.train_cfg.augments}
  assert set(augments) == {"Mixup", "CutMix"}
  assert "probs" not in model.train_cfg                  # one of the two, uniformly
  assert (c.mixup_alpha, c.cutmix_alpha) == (augments["Mixup"]["alpha"],
                                             augments["CutMix"]["alpha"])
  assert augments["CutMix"].get("correct_lam", True) and not augments["CutMix"].get(
      "cutmix_minmax")
  # The input: crop, RandAugment, erasing, the test view.
  d, pipeline = c.data, recipe.train_pipeline
  crop = _step(pipeline, "RandomResizedCrop")
  rrc = _mm()["transforms"].RandomResizedCrop
  assert d.image_size == crop.scale
  assert tuple(d.crop_scale) == tuple(crop.get("crop_ratio_range",
                                               _default(rrc, "crop_ratio_range")))
  assert tuple(d.crop_ratio) == tuple(crop.get("aspect_ratio_range",
                                               _default(rrc, "aspect_ratio_range")))
  assert d.interpolation == crop.interpolation
  assert d.hflip and _step(pipeline, "RandomFlip").prob == 0.5
  bgr_mean = recipe.data_preprocessor.mean[::-1]
  assert list(d.mean) == recipe.data_preprocessor.mean
  ra = _step(pipeline, "RandAugment")
  assert d.randaugment and ra.policies == "timm_increasing"
  assert (d.randaugment_ops, d.randaugment_magnitude, d.randaugment_std) == (
      ra.num_policies, ra.magnitude_level, ra.magnitude_std)
  assert ra.total_level == 10                            # our levels run 0..10
  # The warps' padding: the recipe's rounded BGR mean, as RGB.
  assert [round(m) for m in d.mean] == ra.hparams["pad_val"][::-1]
  assert ra.hparams["pad_val"] == [round(x) for x in bgr_mean]
  assert ra.hparams["interpolation"] == "bicubic"
  erase = _step(pipeline, "RandomErasing")
  erasing_cls = _mm()["transforms"].RandomErasing
  ours = inspect.signature(randaugment.random_erasing).parameters
  assert (d.erase_prob, erase.mode) == (erase.erase_prob, "rand")
  assert ours["min_area"].default == erase.min_area_ratio
  assert ours["max_area"].default == erase.max_area_ratio
  assert tuple(ours["aspect"].default) == pytest.approx(
      erase.get("aspect_range", _default(erasing_cls, "aspect_range")), rel=1e-15)
  # RGB mean and std, as the recipe's BGR fill_color / fill_std reversed.
  assert (list(d.mean), list(d.std)) == (erase.fill_color[::-1], erase.fill_std[::-1])
  test = recipe.test_pipeline
  resize, center = _step(test, "ResizeEdge"), _step(test, "CenterCrop")
  assert (d.eval_resize, resize.edge, resize.interpolation) == (resize.scale, "short", "bicubic")
  assert d.image_size == center.crop_size


# --------------------------------------------------------------------------
# RandAugment: the policy, each op's magnitude law and sign, on shared draws.

# mmpretrain's transform (and direction) for each of our op names.
_RA_NAMES = {("AutoContrast", None): "auto_contrast", ("Equalize", None): "equalize",
             ("Invert", None): "invert", ("Rotate", None): "rotate",
             ("Posterize", None): "posterize", ("Solarize", None): "solarize",
             ("SolarizeAdd", None): "solarize_add", ("ColorTransform", None): "color",
             ("Contrast", None): "contrast", ("Brightness", None): "brightness",
             ("Sharpness", None): "sharpness", ("Shear", "horizontal"): "shear_x",
             ("Shear", "vertical"): "shear_y", ("Translate", "horizontal"): "translate_x",
             ("Translate", "vertical"): "translate_y"}


def _their_randaugment(level, std=0.0):
  ra = _step(ref.recipe(ref.FINETUNE_RECIPE).train_pipeline, "RandAugment")
  return _mm()["auto_augment"].RandAugment(
      policies=ra.policies, num_policies=ra.num_policies, magnitude_level=level,
      magnitude_std=std, total_level=ra.total_level, hparams=ra.hparams)


@contextlib.contextmanager
def _numpy_draws(**values):
  """np.random.<name> returning the given values in turn (shared draws)."""
  saved = {name: getattr(np.random, name) for name in values}
  queues = {name: list(v) for name, v in values.items()}
  for name in values:
    setattr(np.random, name, lambda *a, _n=name, **k: queues[_n].pop(0))
  try:
    yield queues
  finally:
    for name, fn in saved.items():
      setattr(np.random, name, fn)


def test_randaugment_policy_is_mmpretrains_timm_increasing():
  """The same 15 ops in the same order, each with mmpretrain's magnitude
  range, sign rule and probability: the magnitude at a level and its sign
  for a shared uniform draw equal those of mmpretrain's transform."""
  policies = _mm()["auto_augment"].RANDAUG_POLICIES["timm_increasing"]
  names = [_RA_NAMES[(p["type"], p.get("direction"))] for p in policies]
  assert tuple(names) == randaugment.OP_NAMES
  prob = inspect.signature(randaugment.rand_augment).parameters["prob"].default
  img = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  for level in (0.0, 2.5, 9.0, 10.0):
    theirs = _their_randaugment(level)
    for index, (policy, transform) in enumerate(zip(theirs.policies, theirs.transforms)):
      name = randaugment.OP_NAMES[index]
      has_range = "magnitude_range" in policy
      assert has_range == (randaugment.OPS[index][1] is not None), name
      assert transform.prob == prob, name
      if not has_range:
        continue
      # Does the transform sign its magnitude? Run it with draws that would.
      signs = []
      transform.random_negative = lambda v, _s=signs: _s.append(v) or v
      transform.random_disable = lambda: False
      transform.transform({"img": img.copy()})
      del transform.random_negative, transform.random_disable
      assert bool(signs) == randaugment.OPS[index][3], name
      magnitude = transform.random_magnitude()
      for u in (0.0, 0.3, 0.4999, 0.5, 0.7):
        expected = magnitude
        if signs:
          with _numpy_draws(rand=[u]):
            expected = transform.random_negative(magnitude)
        ours = float(randaugment.op_magnitude(tf.constant(index), tf.constant(level),
                                              tf.constant(u)))
        assert ours == pytest.approx(expected, rel=1e-6, abs=1e-6), (name, level, u)


# --------------------------------------------------------------------------
# Mixup and CutMix (mmpretrain's batch augments) on shared draws.

@contextlib.contextmanager
def _recorded_jax_draws(monkeypatch):
  """Records what jax.random.beta / permutation / randint return (eagerly)."""
  drawn = {"beta": [], "permutation": [], "randint": []}
  for name in drawn:
    real = getattr(jax.random, name)

    def spy(*args, _real=real, _name=name, **kwargs):
      out = _real(*args, **kwargs)
      drawn[_name].append((np.asarray(out), args[1:], kwargs))
      return out
    monkeypatch.setattr(jax.random, name, spy)
  yield drawn


@contextlib.contextmanager
def _reference_draws(beta, perm, randint=()):
  """mmpretrain's np.random.beta / randint and torch.randperm return ours,
  recording the law it asks for (alpha, ranges)."""
  asked, ints = [], list(randint)
  saved = np.random.beta, np.random.randint, torch.randperm

  def fake_beta(a, b):
    asked.append(("beta", a, b))
    return float(beta)

  def fake_randint(lo, hi, size=None):
    asked.append(("randint", lo, hi))
    return ints.pop(0)

  np.random.beta, np.random.randint = fake_beta, fake_randint
  torch.randperm = lambda n: torch.from_numpy(np.asarray(perm, np.int64))
  try:
    yield asked
  finally:
    np.random.beta, np.random.randint, torch.randperm = saved


def test_mixup_equals_mmpretrains_on_shared_draws(monkeypatch):
  alpha = recipes.finetune_defaults().mixup_alpha
  theirs_cls = _mm()["batch_augments"].Mixup
  rng = np.random.default_rng(0)
  for seed in range(20):
    x = rng.standard_normal((6, 5, 7, 3)).astype(np.float32)
    t = np.eye(6, 10, dtype=np.float32)[rng.permutation(6)]
    with _recorded_jax_draws(monkeypatch) as drawn:
      mx, mt = mixup.mixup(jax.random.key(seed), jnp.asarray(x), jnp.asarray(t), alpha)
    (lam, lam_args, _), = drawn["beta"]
    (perm, _, _), = drawn["permutation"]
    with _reference_draws(lam, perm) as asked:
      tx, tt = theirs_cls(alpha=alpha).mix(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                                           torch.from_numpy(t))
    assert asked == [("beta", alpha, alpha)] and tuple(lam_args) == (alpha, alpha)
    np.testing.assert_allclose(mx, tx.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mt, tt.numpy(), rtol=1e-6, atol=1e-7)


def test_cutmix_box_and_lam_equal_mmpretrains_on_shared_draws(monkeypatch):
  """The box law (side int(size x sqrt(1 - lam)), centre uniform, clipped) and
  the lam correction to the box's area, on images that are not square."""
  alpha = recipes.finetune_defaults().cutmix_alpha
  theirs_cls = _mm()["batch_augments"].CutMix
  rng = np.random.default_rng(1)
  areas = []
  for seed in range(40):
    h, w = (13, 17) if seed % 2 else (16, 16)
    x = rng.standard_normal((4, h, w, 2)).astype(np.float32)
    t = np.eye(4, 5, dtype=np.float32)[rng.permutation(4)]
    with _recorded_jax_draws(monkeypatch) as drawn:
      mx, mt = mixup.cutmix(jax.random.key(seed), jnp.asarray(x), jnp.asarray(t), alpha)
    (lam, _, _), = drawn["beta"]
    (perm, _, _), = drawn["permutation"]
    centre = [int(v) for v, _, _ in drawn["randint"]]
    with _reference_draws(lam, perm, centre) as asked:
      tx, tt = theirs_cls(alpha=alpha).mix(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                                           torch.from_numpy(t))
    assert asked == [("beta", alpha, alpha), ("randint", 0, h), ("randint", 0, w)]
    np.testing.assert_array_equal(mx, tx.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(mt, tt.numpy(), rtol=1e-6, atol=1e-7)
    areas.append(float((np.asarray(mx) != x).any(-1).mean()))
  assert 0 < np.mean(areas) < 1                # boxes of many sizes were pasted


def test_one_of_mixup_and_cutmix_uniformly():
  """RandomBatchAugment with the recipe's two augments and no probs picks
  each with probability 1/2 (np.random.choice(2, p=None)); so do we."""
  train_cfg = ref.recipe(ref.FINETUNE_RECIPE).model.train_cfg
  theirs = _mm()["batch_augments"].RandomBatchAugment(augments=train_cfg.augments)
  assert theirs.probs is None and len(theirs.augments) == 2
  c = recipes.finetune_defaults()
  x = jnp.linspace(0.0, 1.0, 8 * 8 * 8).reshape(8, 8, 8, 1)
  t = jnp.eye(8)
  pick = jax.jit(jax.vmap(lambda k: mixup.random_batch_augment(
      k, x, t, c.mixup_alpha, c.cutmix_alpha)[0]))
  mixed = np.asarray(pick(jax.random.split(jax.random.key(0), 4000)))
  # Mixup changes every pixel of an image mixed with another; a CutMix box
  # (almost always) leaves some alone.
  changed = (mixed != np.asarray(x)[None]).reshape(4000, 8, -1).mean(-1).max(-1)
  share = float((changed == 1).mean())
  assert abs(share - 0.5) < 5 * 0.5 / np.sqrt(4000), share


# --------------------------------------------------------------------------
# Schedules: the recipes' schedulers, iteration by iteration, in float64.

@pytest.mark.parametrize("name", ["pretrain", "finetune"])
def test_schedule_equals_the_recipes_schedulers(name):
  """mmengine's LinearLR + CosineAnnealingLR built from the recipe's own
  param_scheduler (epochs converted to iterations, 3 per epoch), every
  iteration of the whole recipe, against optim.warmup_cosine with our
  recipe's start factor and floor."""
  from mmengine.registry import PARAM_SCHEDULERS  # pylint: disable=import-outside-toplevel
  recipe_name = ref.PRETRAIN_RECIPE if name == "pretrain" else ref.FINETUNE_RECIPE
  c = recipes.pretrain_defaults() if name == "pretrain" else recipes.finetune_defaults()
  recipe, epoch_length = ref.recipe(recipe_name), 3
  lr = recipe.optim_wrapper.optimizer.lr
  opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))], lr=lr)
  schedulers = [PARAM_SCHEDULERS.build(dict(s), default_args=dict(
      optimizer=opt, epoch_length=epoch_length)) for s in recipe.param_scheduler]
  total = int(c.num_epochs) * epoch_length
  theirs = []
  for _ in range(total):
    theirs.append(opt.param_groups[0]["lr"])
    for s in schedulers:
      s.step()
  with jax.enable_x64(True):
    schedule = optim.warmup_cosine(c.optim.base_lr * c.batch_size / 256, total,
                                   int(c.warmup_epochs) * epoch_length,
                                   c.optim.warmup_start_factor, c.optim.end_lr)
    ours = np.asarray(jax.vmap(schedule)(jnp.arange(total)))
  # mmengine multiplies the lr by a factor each iteration, we evaluate the
  # closed form: measured 9.6e-14 (pretraining, 900 iterations) and 1.3e-14
  # (fine-tuning) relative at most; bound 10x.
  np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
  assert ours[0] == pytest.approx(lr * c.optim.warmup_start_factor, rel=1e-12)
