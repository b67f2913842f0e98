"""Builds mmpretrain 1.2.0's MixMIM (the PyTorch reference) from mmpretrain's
own recipe files and module defaults, with only the sizes of a ModelConfig
(SIZE_FIELDS) put in.

Only parity tests, conversion tests and benchmarks import this module; it needs
torch, mmengine, mmcv-lite and mmpretrain (requirements-test.txt).
"""
from __future__ import annotations

import copy
import functools
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


@functools.lru_cache(maxsize=None)
def recipe(name: str):
  """An mmpretrain recipe as an mmengine Config (its _base_ files resolved);
  read once, so take copies (`to_dict()`, `copy.deepcopy`) before changing it."""
  import_mmpretrain()
  import mmpretrain  # pylint: disable=import-outside-toplevel
  from mmengine.config import Config  # pylint: disable=import-outside-toplevel
  return Config.fromfile(os.path.join(os.path.dirname(mmpretrain.__file__), ".mim", "configs",
                                      name))


# The only values of a ModelConfig the reference is built with: the shape of
# the model a test or benchmark chose (a tiny one, or base). Every other value
# (LayerNorm eps, drop rates, the decoder's norm, mask ratio, norm-pix, init)
# comes from mmpretrain's recipe files and its modules' defaults, so a wrong
# constant on our side can never make the reference wrong the same way
# (tests/test_constants.py fails if any other field reaches the builders).
# mlp_ratio and patch_size fix tensor shapes too; that ours equal the
# recipe's is tests/test_constants.py's to check.
SIZE_FIELDS = ("embed_dim", "depths", "num_heads", "window_sizes", "img_size", "patch_size",
               "mlp_ratio", "num_classes", "decoder_dim", "decoder_depth", "decoder_heads")


def sizes(cfg: ModelConfig) -> dict:
  """The SIZE_FIELDS of `cfg`: all the reference builders read of it."""
  return {f: getattr(cfg, f) for f in SIZE_FIELDS}


def _backbone_sizes(s: dict) -> dict:
  return dict(arch=dict(embed_dims=s["embed_dim"], depths=list(s["depths"]),
                        num_heads=list(s["num_heads"])),
              img_size=s["img_size"], patch_size=s["patch_size"],
              window_size=list(s["window_sizes"]), mlp_ratio=s["mlp_ratio"])


def _num_features(s: dict) -> int:
  return s["embed_dim"] * 2 ** (len(s["depths"]) - 1)


def _build(model_cfg, data_preprocessor, seed):
  """Built and initialised from torch's generator seeded with `seed` (the
  caller's global torch RNG is left as it was): the same weights every run."""
  models = import_mmpretrain()
  import torch  # pylint: disable=import-outside-toplevel
  model_cfg.setdefault("data_preprocessor", data_preprocessor)   # as mmengine's Runner does
  with torch.random.fork_rng(devices=[]):
    torch.manual_seed(seed)
    model = models.build(model_cfg)
    model.init_weights()
  return model.eval()


def pretrain_model_dict(cfg: ModelConfig, norm_pix: bool | None = None) -> dict:
  """The model dict build_pretrain_model hands mmpretrain's builder."""
  s = sizes(cfg)
  model = copy.deepcopy(recipe(PRETRAIN_RECIPE).model.to_dict())
  model["backbone"].pop("arch", None)
  model["backbone"].update(_backbone_sizes(s))
  # The recipe's neck spells out what follows from the backbone's shape.
  stride = s["patch_size"] * 2 ** (len(s["depths"]) - 1)     # the encoder's output stride
  model["neck"].update(num_patches=(s["img_size"] // stride) ** 2, encoder_stride=stride,
                       embed_dim=_num_features(s), decoder_embed_dim=s["decoder_dim"],
                       decoder_depth=s["decoder_depth"], decoder_num_heads=s["decoder_heads"],
                       mlp_ratio=s["mlp_ratio"])
  if norm_pix is not None:
    model["head"]["norm_pix"] = norm_pix
  return model


def build_pretrain_model(cfg: ModelConfig, norm_pix: bool | None = None, seed: int = 0):
  """mmpretrain's `MixMIM` self-supervisor (backbone + neck + head) of the
  pretraining recipe, with `cfg`'s sizes (nothing else of it), initialised by
  its own init_weights() from `seed`. `norm_pix` overrides the recipe's head
  (a benchmark's choice)."""
  return _build(pretrain_model_dict(cfg, norm_pix),
                recipe(PRETRAIN_RECIPE).data_preprocessor.to_dict(), seed)


def classifier_model_dict(cfg: ModelConfig, train_augments: bool = True,
                          drop_path_rate: float | None = None) -> dict:
  """The model dict build_classifier hands mmpretrain's builder."""
  s = sizes(cfg)
  model = copy.deepcopy(recipe(FINETUNE_RECIPE).model.to_dict())
  model["backbone"].pop("init_cfg", None)      # "Pretrained" from an empty path
  model["backbone"].pop("arch", None)
  model["backbone"].update(_backbone_sizes(s))
  if drop_path_rate is not None:
    model["backbone"]["drop_path_rate"] = drop_path_rate
  model["head"].update(num_classes=s["num_classes"], in_channels=_num_features(s))
  if not train_augments:
    model.pop("train_cfg", None)
  return model


def build_classifier(cfg: ModelConfig, train_augments: bool = True,
                     drop_path_rate: float | None = None, seed: int = 0):
  """mmpretrain's `ImageClassifier` of the fine-tuning recipe (its init_cfg, head
  and label-smoothing loss) with `cfg`'s sizes and classes (nothing else of it),
  initialised by its own init_weights() from `seed`. A test may turn off what
  is random in training: mixup/cutmix (`train_augments=False`) and drop path
  (`drop_path_rate=0`)."""
  return _build(classifier_model_dict(cfg, train_augments, drop_path_rate),
                recipe(FINETUNE_RECIPE).data_preprocessor.to_dict(), seed)


def authors_decoder_ln_eps() -> float:
  """The authors' decoder LayerNorm eps: their models_mixmim.py builds it with
  `norm_layer=nn.LayerNorm` and no eps, i.e. torch's default."""
  import inspect  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  return inspect.signature(torch.nn.LayerNorm).parameters["eps"].default


def use_authors_decoder_norms(model) -> None:
  """Give an mmpretrain pretraining model the authors' decoder LayerNorms (eps
  from `authors_decoder_ln_eps`), the one way their decoder computes otherwise
  than mmpretrain's."""
  import torch  # pylint: disable=import-outside-toplevel
  eps = authors_decoder_ln_eps()
  for module in model.neck.modules():
    if isinstance(module, torch.nn.LayerNorm):
      module.eps = eps
