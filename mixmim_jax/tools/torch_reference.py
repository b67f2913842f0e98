"""Builds mmpretrain 1.2.0's MixMIM (the PyTorch reference) for a ModelConfig,
from mmpretrain's own recipe files with the arch replaced.

Only parity tests, conversion tests and benchmarks import this module; it needs
torch, mmengine, mmcv-lite and mmpretrain (requirements-test.txt).
"""
from __future__ import annotations

import copy
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import types
import warnings

from mixmim_jax.model.arch import ModelConfig


class _Stub(types.ModuleType):
  """A module whose every attribute is another stub (classes, functions, modules)."""

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    child = _Stub(f"{self.__name__}.{name}")
    setattr(self, name, child)
    return child

  def __call__(self, *args, **kwargs):
    return self

  def __mro_entries__(self, bases):
    return (object,)


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  def find_spec(self, fullname, path=None, target=None):
    if fullname == "torchvision" or fullname.startswith("torchvision."):
      return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
    return None

  def create_module(self, spec):
    module = _Stub(spec.name)
    module.__path__ = []
    module.__version__ = "0.0.0"
    return module

  def exec_module(self, module):
    pass


def stub_torchvision() -> None:
  """mmpretrain imports torchvision at import time but MixMIM never calls it, and
  PyPI's torchvision does not load beside the CPU torch wheel: stand-ins will do."""
  try:
    import torchvision  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    return
  except Exception:  # pylint: disable=broad-except
    for name in list(sys.modules):
      if name == "torchvision" or name.startswith("torchvision."):
        del sys.modules[name]
  if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _StubFinder())


def import_mmpretrain():
  stub_torchvision()
  # mmengine logs every initialised tensor at INFO; keep test and benchmark output readable.
  from mmengine.logging import MMLogger  # pylint: disable=import-outside-toplevel
  MMLogger.get_current_instance().setLevel(logging.WARNING)
  warnings.filterwarnings("ignore", module="mmcv")
  warnings.filterwarnings("ignore", module="mmpretrain")
  warnings.filterwarnings("ignore", module="mmengine")
  import mmpretrain.models  # noqa: F401  pylint: disable=import-outside-toplevel
  from mmpretrain.registry import MODELS  # pylint: disable=import-outside-toplevel
  return MODELS


# mmpretrain's own MixMIM-B recipes, shipped inside the package (.mim/configs).
PRETRAIN_RECIPE = "mixmim/mixmim_mixmim-base_16xb128-coslr-300e_in1k.py"
FINETUNE_RECIPE = "mixmim/benchmarks/mixmim-base_8xb128-coslr-100e_in1k.py"


def recipe(name: str):
  """An mmpretrain recipe as an mmengine Config (its _base_ files resolved)."""
  import_mmpretrain()
  import mmpretrain  # pylint: disable=import-outside-toplevel
  from mmengine.config import Config  # pylint: disable=import-outside-toplevel
  return Config.fromfile(os.path.join(os.path.dirname(mmpretrain.__file__), ".mim", "configs",
                                      name))


def _arch(cfg: ModelConfig) -> dict:
  return dict(embed_dims=cfg.embed_dim, depths=list(cfg.depths), num_heads=list(cfg.num_heads))


def _backbone_fields(cfg: ModelConfig) -> dict:
  return dict(arch=_arch(cfg), img_size=cfg.img_size, patch_size=cfg.patch_size,
              window_size=list(cfg.window_sizes), mlp_ratio=cfg.mlp_ratio,
              drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate)


def _build(model_cfg, data_preprocessor=None):
  models = import_mmpretrain()
  if data_preprocessor is not None:     # as mmengine's Runner merges it into the model
    model_cfg.setdefault("data_preprocessor", data_preprocessor)
  model = models.build(model_cfg)
  model.init_weights()
  return model.eval()


def build_pretrain_model(cfg: ModelConfig, norm_pix: bool = True):
  """mmpretrain's `MixMIM` self-supervisor (backbone + neck + head) of the
  pretraining recipe, with `cfg`'s arch, initialised by its own init_weights()."""
  r = recipe(PRETRAIN_RECIPE)
  model = copy.deepcopy(r.model.to_dict())
  model["backbone"].pop("arch", None)
  model["backbone"].update(_backbone_fields(cfg))
  model["neck"].update(num_patches=cfg.num_mask_cells, encoder_stride=cfg.encoder_stride,
                       embed_dim=cfg.num_features, decoder_embed_dim=cfg.decoder_dim,
                       decoder_depth=cfg.decoder_depth, decoder_num_heads=cfg.decoder_heads,
                       mlp_ratio=cfg.mlp_ratio, norm_cfg=dict(type="LN", eps=cfg.decoder_ln_eps))
  model["head"]["norm_pix"] = norm_pix
  return _build(model, r.data_preprocessor.to_dict())


def build_classifier(cfg: ModelConfig, train_augments: bool = True):
  """mmpretrain's `ImageClassifier` of the fine-tuning recipe (its init_cfg, head
  and label-smoothing loss) with `cfg`'s arch and classes, initialised by its own
  init_weights(). Without `train_augments` its train step skips mixup/cutmix."""
  r = recipe(FINETUNE_RECIPE)
  model = copy.deepcopy(r.model.to_dict())
  model["backbone"].pop("init_cfg", None)      # "Pretrained" from an empty path
  model["backbone"].update(_backbone_fields(cfg))
  model["head"].update(num_classes=cfg.num_classes, in_channels=cfg.num_features)
  if not train_augments:
    model.pop("train_cfg", None)
  return _build(model, r.data_preprocessor.to_dict())
