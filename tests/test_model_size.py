"""Model size against the published and the live reference numbers (MixMIM-B:
88.34 M backbone parameters, 16.35 GFLOPs at 224 px; 114.67 M with the decoder),
and the ModelConfig errors."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixmim_jax.model import api
from mixmim_jax.model.arch import model_config

BASE = model_config("base")
# Fixed sin-cos tables: mmpretrain registers them as (frozen) parameters and counts
# them; we compute them at trace time.
ABS_POS = 56 * 56 * 128
DEC_POS = 49 * 512


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def reference_count(model) -> int:
  return sum(p.numel() for p in model.parameters())


def test_base_classifier_parameter_count():
  torch = pytest.importorskip("torch")  # noqa: F841
  from mixmim_jax.tools import torch_reference as ref  # pylint: disable=import-outside-toplevel
  ours = count(api.param_shapes(BASE, "classifier")) + ABS_POS
  print(f"\nbase classifier: {ours:,} parameters ({ours / 1e6:.2f} M)")
  assert round(ours / 1e6, 2) == 88.34
  assert ours == reference_count(ref.build_classifier(BASE))


def test_base_pretrain_parameter_count():
  torch = pytest.importorskip("torch")  # noqa: F841
  from mixmim_jax.tools import torch_reference as ref  # pylint: disable=import-outside-toplevel
  ours = count(api.param_shapes(BASE, "pretrain")) + ABS_POS + DEC_POS
  print(f"\nbase pretraining model: {ours:,} parameters ({ours / 1e6:.2f} M)")
  assert round(ours / 1e6, 2) == 114.67
  assert ours == reference_count(ref.build_pretrain_model(BASE))


def test_base_classifier_flops():
  # Unrolled: XLA's cost analysis counts a scanned block stack's body once.
  cfg = dataclasses.replace(BASE, scan_blocks=False)
  shapes = api.param_shapes(cfg, "classifier")
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  compiled = jax.jit(lambda p, x: api.classify(cfg, p, x)).lower(shapes, images).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  flops = float(analysis["flops"])
  # The published 16.35 G counts a multiply-add once; XLA counts it as two flops.
  ratio = flops / (2 * 16.35e9)
  print(f"\nbase classifier at 224 px, batch 1: {flops / 1e9:.2f} GFLOP (XLA) = "
        f"{ratio:.4f} x 2 x 16.35 G")
  assert abs(ratio - 1) < 0.03


def test_config_errors():
  with pytest.raises(ValueError, match=r"image size 100 is not a multiple of 32"):
    model_config("base", img_size=100)
  with pytest.raises(ValueError, match=r"unknown arch 'tiny'; expected one of \['base', 'huge', "
                                       r"'large'\]"):
    model_config("tiny")
  # 256 px: stages at 64, 32, 16, 8 tokens; window 14 divides none of the first three.
  with pytest.raises(ValueError, match=r"stage 0: window 14 does not divide the stage "
                                       r"resolution 64 \(image size 256\)"):
    model_config("base", img_size=256)
  with pytest.raises(ValueError, match=r"stage 2: window 5 does not divide the stage "
                                       r"resolution 14"):
    model_config("base", window_sizes=(14, 14, 5, 7))
  # 384 px works with windows that divide 96, 48, 24, 12 (global at the last stage).
  cfg = model_config("base", img_size=384, window_sizes=(12, 12, 12, 12))
  assert cfg.effective_windows == (12, 12, 12, 12) and cfg.mask_grid == 12
  with pytest.raises(ValueError, match=r"unknown model config keys \['windows'\]"):
    model_config("base", windows=(7, 7, 7, 7))
