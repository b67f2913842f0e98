"""Builds mmpretrain 1.2.0's MixMIM (the PyTorch reference) for a ModelConfig.

Only parity tests, conversion tests and benchmarks import this module; it needs
torch, mmengine, mmcv-lite and mmpretrain (requirements-test.txt).
"""
from __future__ import annotations

import importlib.abc
import logging
import warnings
import importlib.machinery
import sys
import types

from mixmim_jax.arch import ModelConfig


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


def _stub_torchvision() -> None:
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
  _stub_torchvision()
  # mmengine logs every initialised tensor at INFO; keep test and benchmark output readable.
  from mmengine.logging import MMLogger  # pylint: disable=import-outside-toplevel
  MMLogger.get_current_instance().setLevel(logging.WARNING)
  warnings.filterwarnings("ignore", module="mmcv")
  warnings.filterwarnings("ignore", module="mmpretrain")
  warnings.filterwarnings("ignore", module="mmengine")
  import mmpretrain.models  # noqa: F401  pylint: disable=import-outside-toplevel
  from mmpretrain.registry import MODELS  # pylint: disable=import-outside-toplevel
  return MODELS


def _arch(cfg: ModelConfig) -> dict:
  return dict(embed_dims=cfg.embed_dim, depths=list(cfg.depths), num_heads=list(cfg.num_heads))


def build_pretrain_model(cfg: ModelConfig, norm_pix: bool = True):
  """mmpretrain's `MixMIM` self-supervisor (backbone + neck + head), initialised."""
  models = import_mmpretrain()
  model = models.build(dict(
      type="MixMIM",
      backbone=dict(type="MixMIMPretrainTransformer", arch=_arch(cfg), img_size=cfg.img_size,
                    patch_size=cfg.patch_size, window_size=list(cfg.window_sizes),
                    mlp_ratio=cfg.mlp_ratio, drop_rate=0.0, drop_path_rate=0.0,
                    mask_ratio=0.5),
      neck=dict(type="MixMIMPretrainDecoder", num_patches=cfg.num_mask_cells,
                encoder_stride=cfg.encoder_stride, embed_dim=cfg.num_features,
                decoder_embed_dim=cfg.decoder_dim, decoder_depth=cfg.decoder_depth,
                decoder_num_heads=cfg.decoder_heads, mlp_ratio=cfg.mlp_ratio,
                norm_cfg=dict(type="LN", eps=cfg.decoder_ln_eps)),
      head=dict(type="MixMIMPretrainHead", norm_pix=norm_pix,
                loss=dict(type="PixelReconstructionLoss", criterion="L2")),
  ))
  model.init_weights()
  return model.eval()


def build_classifier(cfg: ModelConfig):
  """mmpretrain's `ImageClassifier` with a MixMIMTransformer backbone, initialised."""
  models = import_mmpretrain()
  model = models.build(dict(
      type="ImageClassifier",
      backbone=dict(type="MixMIMTransformer", arch=_arch(cfg), img_size=cfg.img_size,
                    patch_size=cfg.patch_size, window_size=list(cfg.window_sizes),
                    mlp_ratio=cfg.mlp_ratio, drop_rate=0.0, drop_path_rate=0.0),
      head=dict(type="LinearClsHead", num_classes=cfg.num_classes,
                in_channels=cfg.num_features,
                loss=dict(type="CrossEntropyLoss")),
      init_cfg=[dict(type="TruncNormal", layer="Linear", std=0.02, bias=0.0),
                dict(type="Constant", layer="LayerNorm", val=1.0, bias=0.0)],
  ))
  model.init_weights()
  return model.eval()
