"""The evaluation batch against the references' test pipelines on real photos
(scikit-image's, written as JPEG and PNG files of several shapes): mmpretrain's
own test pipeline from its fine-tuning recipe (LoadImageFromFile, ResizeEdge,
CenterCrop, PackInputs, then its data preprocessor), and the authors' 384-px
evaluation (PIL decoding, Resize(384) + CenterCrop(384): the same steps with
mmpretrain's modules, since torchvision's Resize on a PIL image truncates the
long side and resizes with PIL's bicubic just like ResizeEdge's pillow backend).
Equal before normalisation, up to float rounding of the preprocessor's
normalise-and-back (the resize is Pillow's own in both; with TensorFlow's
resize it was up to 1 grey level, in 0.23 % and 0.10 % of the values).
"""
from __future__ import annotations

import copy
import importlib.util
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
skimage_data = pytest.importorskip("skimage.data")

from PIL import Image  # noqa: E402

from mixmim_jax.data import labeled  # noqa: E402
from mixmim_jax.tools import torch_reference as ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(arg=""):
  spec = importlib.util.spec_from_file_location("base_finetune",
                                                os.path.join(ROOT, "configs", "base_finetune.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
  """root/val/<class>/<file>: photos as JPEG (decoded by libjpeg in both) and
  PNG, landscape, portrait, square, grey and smaller than the crop (upscaled)."""
  root = tmp_path_factory.mktemp("photos")
  photos = {
      "astronaut.jpg": skimage_data.astronaut(),                      # 512 x 512
      "chelsea.jpg": skimage_data.chelsea(),                          # 300 x 451
      "chelsea_portrait.jpg": np.ascontiguousarray(np.rot90(skimage_data.chelsea())),
      "coffee.png": skimage_data.coffee(),                            # 400 x 600
      "camera_grey.jpg": skimage_data.camera(),                       # grey 512 x 512
      "coffee_small.jpg": np.asarray(Image.fromarray(skimage_data.coffee()).resize((151, 97))),
  }
  for i, (name, pixels) in enumerate(sorted(photos.items())):
    folder = root / "val" / f"class_{i}"
    folder.mkdir(parents=True)
    Image.fromarray(pixels).save(folder / name, quality=93)
  # scikit-image's own JPEG files, as they are.
  for i, name in enumerate(("rocket.jpg", "hubble_deep_field.jpg")):
    folder = root / "val" / f"class_{len(photos) + i}"
    folder.mkdir(parents=True)
    shutil.copy(os.path.join(os.path.dirname(skimage_data.__file__), name), folder / name)
  files = sorted(str(p) for p in (root / "val").glob("*/*"))
  assert len(files) == 8
  return str(root), files


def _ours(root, config):
  c = copy.deepcopy(config.data)
  c.source, c.folder, c.eval_split, c.num_parallel_calls = "folder", root, "val", 1
  batches = labeled.eval_batches(c, local_batch_size=8)
  batch = next(batches)
  assert batches.num_batches == 1 and batch["mask"].all()
  assert batch["image"].dtype == np.uint8       # the device normalises (pixels.py)
  return batch["image"].astype(np.float32)


def _theirs(files, config, test_pipeline):
  ref.import_mmpretrain()
  from mmcv.transforms import Compose  # pylint: disable=import-outside-toplevel
  from mmpretrain.registry import MODELS, TRANSFORMS  # pylint: disable=import-outside-toplevel
  pipeline = Compose([TRANSFORMS.build(t) for t in test_pipeline])
  packed = [pipeline(dict(img_path=f)) for f in files]
  preprocessor = MODELS.build(dict(type="ClsDataPreprocessor", mean=list(config.data.mean),
                                   std=list(config.data.std), to_rgb=True))
  out = preprocessor(dict(inputs=[p["inputs"] for p in packed],
                          data_samples=[p["data_samples"] for p in packed]), False)
  inputs = out["inputs"].numpy().transpose(0, 2, 3, 1)
  return inputs * np.asarray(config.data.std) + np.asarray(config.data.mean)


def _compare(ours, theirs, what):
  assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
  diff = np.abs(ours - theirs)
  print(f"\n{what}: max |ours - reference| {diff.max():.3f} grey levels, "
        f"{100 * (diff > 0.5).mean():.2f} % of values differ")
  assert diff.max() <= 1e-3, what


def test_eval_batch_equals_mmpretrain_test_pipeline(photo_folder):
  root, files = photo_folder
  config = _config()
  recipe = ref.recipe(ref.FINETUNE_RECIPE)
  steps = [t["type"] for t in recipe.test_pipeline]
  assert steps == ["LoadImageFromFile", "ResizeEdge", "CenterCrop", "PackInputs"]
  assert (recipe.test_pipeline[1]["scale"], recipe.test_pipeline[2]["crop_size"]) == (
      config.data.eval_resize, config.data.image_size)
  _compare(_ours(root, config), _theirs(files, config, recipe.test_pipeline),
           "mmpretrain 256 -> 224")


def test_eval_batch_equals_the_authors_384_evaluation(photo_folder):
  root, files = photo_folder
  config = _config("384")
  pipeline = copy.deepcopy(ref.recipe(ref.FINETUNE_RECIPE).test_pipeline)
  pipeline[0]["imdecode_backend"] = "pillow"            # torchvision's ImageFolder loader
  pipeline[1]["scale"] = pipeline[2]["crop_size"] = 384   # crop_pct 1.0 above 224 px
  assert (config.data.eval_resize, config.data.image_size) == (384, 384)
  _compare(_ours(root, config), _theirs(files, config, pipeline), "authors 384 -> 384")
