"""predict.py on a real photo (scikit-image's cat) with a random 1000-class model,
and export -> load round trips giving identical logits."""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mixmim_jax import export, inference
from mixmim_jax.data import test_view
from mixmim_jax.data.imagenet_classes import IMAGENET_CLASSES
from mixmim_jax.model import api, pixels
from mixmim_jax.model.arch import model_config
from mixmim_jax.weights import params_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))
CFG = model_config(TINY, window_sizes=(4, 4, 2, 1), img_size=32, patch_size=2,
                   num_classes=1000)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  skimage_data = pytest.importorskip("skimage.data")
  from PIL import Image  # pylint: disable=import-outside-toplevel
  d = tmp_path_factory.mktemp("predict")
  photo = str(d / "chelsea.jpg")
  Image.fromarray(skimage_data.chelsea()).save(photo, quality=95)
  grey = str(d / "camera.png")
  Image.fromarray(skimage_data.camera()).save(grey)
  params = api.init_params(CFG, "classifier", 0)
  model = str(d / "model.msgpack")
  params_file.save_params(model, CFG, "classifier", params)
  return dict(photo=photo, grey=grey, model=model, params=params, dir=d)


def test_top5_on_a_real_photo(files):
  model = inference.load(files["model"])
  rows = inference.top_k(model, [files["photo"], files["grey"]])
  assert len(rows) == 2 and all(len(r) == 5 for r in rows)
  for r in rows:
    probs = [p for _, _, p in r]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    assert all(name == IMAGENET_CLASSES[i] for i, name, _ in r)
  # The same numbers as the model applied to the eval transform by hand.
  raw = test_view.uint8_views([files["photo"]], CFG.img_size)
  assert raw.shape == (1, 32, 32, 3) and raw.dtype == np.uint8 and raw.max() > 100
  images = np.asarray(pixels.normalize(raw, test_view.IMAGENET_MEAN, test_view.IMAGENET_STD))
  np.testing.assert_allclose(images, (raw - np.array(test_view.IMAGENET_MEAN))
                             / np.array(test_view.IMAGENET_STD), rtol=1e-6, atol=1e-6)
  probs = np.asarray(jax.nn.softmax(api.classify(CFG, files["params"], images)))[0]
  assert rows[0][0][0] == int(np.argmax(probs))
  assert rows[0][0][2] == pytest.approx(float(probs.max()), rel=1e-6)


def test_cli_prints_five_imagenet_classes(files):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "mixmim_jax.predict", "--checkpoint",
                        files["model"], files["photo"]], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=120, check=True).stdout.splitlines()
  assert out[0] == files["photo"] and len(out) == 6
  for line in out[1:]:
    score, name = line.strip().split("  ", 1)
    assert 0 < float(score) < 1 and name in IMAGENET_CLASSES
  bad = subprocess.run([sys.executable, "-m", "mixmim_jax.predict", "--checkpoint",
                        files["model"], str(files["dir"] / "missing.jpg")],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
  assert bad.returncode == 1 and "does not exist" in bad.stderr


def test_export_load_round_trip_gives_identical_logits(files, tmp_path):
  x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
  before = np.asarray(api.classify(CFG, files["params"], x))
  out = str(tmp_path / "exported.msgpack")
  written = export.export(files["model"], out)
  loaded = inference.load(out)
  assert loaded.kind == "classifier" and loaded.config == CFG == written.config
  np.testing.assert_array_equal(np.asarray(inference.logits(loaded, x)), before)
  # A pretraining checkpoint exports its encoder only (the decoder is dropped).
  pre_cfg = CFG.replace(num_classes=0, decoder_dim=32, decoder_depth=1, decoder_heads=2)
  pre = api.init_params(pre_cfg, "pretrain", 1)
  params_file.save_params(str(tmp_path / "pre.msgpack"), pre_cfg, "pretrain", pre)
  enc = export.export(str(tmp_path / "pre.msgpack"), str(tmp_path / "enc.msgpack"))
  assert enc.kind == "encoder" and set(enc.params) == {"encoder"}
  feats = inference.logits(inference.load(str(tmp_path / "enc.msgpack")), x)
  np.testing.assert_array_equal(
      np.asarray(feats), np.asarray(api.classify(pre_cfg, {"encoder": pre["encoder"]}, x)))


def test_an_encoder_file_cannot_predict(files, tmp_path):
  path = str(tmp_path / "enc.msgpack")
  params_file.save_params(path, CFG.replace(num_classes=0), "encoder",
                        {"encoder": files["params"]["encoder"]})
  with pytest.raises(ValueError, match="without a classifier head"):
    inference.top_k(inference.load(path), [files["photo"]])
