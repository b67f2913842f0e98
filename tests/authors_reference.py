"""The authors' own code (Sense-X/MixMIM) as a live reference, when a checkout is at hand.

Their repository is on no package index and carries no licence that would let
this project ship a copy, so the tests that run it need a checkout named by
the environment variable MIXMIM_AUTHORS_REPO:

    git clone https://github.com/Sense-X/MixMIM /path/to/MixMIM
    MIXMIM_AUTHORS_REPO=/path/to/MixMIM make test

Without one they are skipped, saying so. Their code runs as published, on
timm 0.4.12 (requirements-test.txt's Makefile step installs it), with three
shims for today's libraries: a stand-in torchvision (timm imports it, nothing
here calls it), NumPy 2's missing `np.float` alias (their util/pos_embed.py),
and torch's removed `torch._six.inf` (their util/misc.py).
"""
from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import types

import numpy as np
import pytest

ENV = "MIXMIM_AUTHORS_REPO"


@contextlib.contextmanager
def _numpy_float_alias():
  had = hasattr(np, "float")
  np.float = np.float64   # pylint: disable=attribute-defined-outside-init
  try:
    yield
  finally:
    if not had:
      del np.float


def modules():
  """(models_mixmim, models_mixmim_ft, util.misc) of the checkout, or skip."""
  repo = os.environ.get(ENV)
  if not repo:
    pytest.skip(f"the authors' code is not available: set {ENV} to a checkout of "
                "https://github.com/Sense-X/MixMIM to run this test.")
  if not os.path.isfile(os.path.join(repo, "models_mixmim.py")):
    pytest.fail(f"{ENV}={repo!r} has no models_mixmim.py; expected a Sense-X/MixMIM checkout.")
  from mixmim_jax.tools import torch_reference  # pylint: disable=import-outside-toplevel
  torch_reference.stub_torchvision()      # before timm, which imports it
  pytest.importorskip("timm", reason="timm==0.4.12 runs the authors' code")
  sys.modules.setdefault("torch._six", types.SimpleNamespace(inf=math.inf))
  if repo not in sys.path:
    sys.path.insert(0, repo)
  return (importlib.import_module("models_mixmim"), importlib.import_module("models_mixmim_ft"),
          importlib.import_module("util.misc"))


def build(module, **kwargs):
  """An instance of the checkout's `MixMIM` class of `module` (its __init__
  computes the sin-cos tables with their NumPy code)."""
  with _numpy_float_alias():
    return module.MixMIM(**kwargs).eval()


def arch_kwargs(cfg) -> dict:
  """Their MixMIM constructor's arguments for one of our ModelConfigs."""
  return dict(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
              embed_dim=cfg.embed_dim, depths=list(cfg.depths), num_heads=list(cfg.num_heads),
              window_size=list(cfg.window_sizes), mlp_ratio=cfg.mlp_ratio)
