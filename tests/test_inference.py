"""mixmim_jax.inference_model against mmpretrain's own `inference_model` on the
same checkpoint (the real base classifier arch, random weights, real photos);
the pretraining model's reconstructions (which mmpretrain cannot give); inputs
as paths, lists and arrays; and `--model NAME` in predict, export, evaluate and
a fine-tune's init_from."""
from __future__ import annotations

import functools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
skimage_data = pytest.importorskip("skimage.data")

from mixmim_jax import export, inference, predict  # noqa: E402
from mixmim_jax.data.imagenet_classes import IMAGENET_CLASSES  # noqa: E402
from mixmim_jax.model import api
from mixmim_jax.model.arch import model_config  # noqa: E402
from mixmim_jax.tools import torch_reference as ref  # noqa: E402
from mixmim_jax.weights import adapt, downloads, hub, params_file
import hub_fixtures as hf  # noqa: E402
import torch_helpers as th  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BASE_CLS = "mixmim-base_mixmim-pre_8xb128-coslr-100e_in1k"
BASE_PRE = "mixmim_mixmim-base_16xb128-coslr-300e_in1k"
CLS, PRE = "test-tiny-cls_in1k", "test-tiny-pre_in1k"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  d = tmp_path_factory.mktemp("photos")
  jpg, png = str(d / "chelsea.jpg"), str(d / "astronaut.png")
  Image.fromarray(skimage_data.chelsea()).save(jpg, quality=95)
  Image.fromarray(skimage_data.astronaut()).save(png)
  return dict(jpg=jpg, png=png, dir=d)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
  """A cache holding the tiny models that mmpretrain built, as a download leaves
  it (fetched from a mirror folder), and registry entries naming them."""
  checkpoints = hf.mmpretrain_checkpoints(seed=1)
  root = tmp_path_factory.mktemp("tiny_hub")
  mirror = root / "mirror"
  mirror.mkdir()
  entries = {}
  for name, kind in ((CLS, "classifier"), (PRE, "pretrain")):
    file = hf.published_name(name, checkpoints[kind])
    (mirror / file).write_bytes(checkpoints[kind])
    entries[name] = hf.entry(name, kind, f"https://example.invalid/{file}")
  patch = pytest.MonkeyPatch()
  patch.setenv(hub.HOME_ENV, str(root / "cache"))
  patch.setenv(downloads.MIRROR_ENV, str(mirror))
  for name, e in entries.items():
    patch.setitem(hub.REGISTRY, name.lower(), e)
    hub.get_model(name, progress=False)
  patch.delenv(downloads.MIRROR_ENV)        # from here on everything comes from the cache
  yield entries
  patch.undo()


# ------------------------------------------------------------------ parity

@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
  """mmpretrain's own model for the name, random weights, saved with class
  names in meta.dataset_meta as mmengine saves a run's checkpoint."""
  ref.import_mmpretrain()
  import mmpretrain  # pylint: disable=import-outside-toplevel
  model = mmpretrain.get_model(BASE_CLS, pretrained=False)
  th.randomize_(model, 3, "row_col", model_config("base"))
  with torch.no_grad():       # logits std ~3: top scores ~0.1-0.5, neither flat nor one-hot
    model.head.fc.weight.mul_(3.0)
  classes = tuple(f"label {i:03d}" for i in range(1000))
  path = str(tmp_path_factory.mktemp("base") / "mixmim_base_random.pth")
  torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": {"classes": classes}}},
             path)
  return path, classes


@pytest.mark.slow_base
def test_inference_model_equals_mmpretrains_on_the_base_classifier(base_checkpoint, photos):
  import mmpretrain  # pylint: disable=import-outside-toplevel
  path, classes = base_checkpoint
  files = [photos["jpg"], photos["png"]]
  theirs = [mmpretrain.inference_model(BASE_CLS, f, pretrained=path, device="cpu") for f in files]
  ours = inference.inference_model(BASE_CLS, files, pretrained=path)
  assert isinstance(ours, list) and len(ours) == 2
  for f, a, b in zip(files, ours, theirs):
    assert set(a) == set(b) == {"pred_scores", "pred_label", "pred_score", "pred_class"}
    diff = np.abs(a["pred_scores"] - b["pred_scores"]).max()
    print(f"\n{os.path.basename(f)}: label {a['pred_label']} ({a['pred_class']}) score "
          f"{a['pred_score']:.4f}; mmpretrain {b['pred_label']} ({b['pred_class']}) "
          f"{b['pred_score']:.4f}; max |scores diff| {diff:.2e}")
    assert a["pred_scores"].shape == b["pred_scores"].shape == (1000,)
    assert a["pred_label"] == b["pred_label"] and a["pred_class"] == b["pred_class"]
    assert a["pred_class"] == classes[a["pred_label"]]          # the checkpoint's names
    assert diff <= 1e-4 and abs(a["pred_score"] - b["pred_score"]) <= 1e-4
    assert 0.02 < b["pred_score"] < 0.9       # neither flat nor one-hot
  # One input gives one dict, as mmpretrain's.
  one = inference.inference_model(BASE_CLS, files[0], pretrained=path)
  assert isinstance(one, dict) and one["pred_label"] == ours[0]["pred_label"]


def test_mmpretrain_has_no_inference_for_the_pretraining_model():
  ref.import_mmpretrain()
  import mmpretrain  # pylint: disable=import-outside-toplevel
  with pytest.raises(NotImplementedError):
    mmpretrain.inference_model(BASE_PRE, "any.jpg")
  assert hub.lookup(BASE_PRE).kind == "pretrain"    # ours: test_pretraining_model_* below


# ------------------------------------------------------------------ tiny models

def test_inputs_paths_lists_and_arrays(tiny_cache, photos):
  one = inference.inference_model(CLS, photos["png"])
  assert isinstance(one, dict) and one["pred_class"] == hf.FASHION[one["pred_label"]]
  assert one["pred_scores"].dtype == np.float32 and one["pred_scores"].sum() == pytest.approx(1)
  assert one["pred_score"] == pytest.approx(float(one["pred_scores"].max()))
  many = inference.inference_model(CLS, [photos["png"], photos["jpg"], photos["png"]],
                                   batch_size=2)
  assert len(many) == 3
  np.testing.assert_allclose(many[0]["pred_scores"], one["pred_scores"], atol=1e-6)
  np.testing.assert_allclose(many[2]["pred_scores"], one["pred_scores"], atol=1e-6)
  # A decoded RGB array is the same image as the (lossless) PNG file.
  pixels = skimage_data.astronaut()
  from_array = inference.inference_model(CLS, pixels)
  np.testing.assert_allclose(from_array["pred_scores"], one["pred_scores"], atol=1e-6)
  batch = inference.inference_model(CLS, np.stack([pixels, pixels]))
  assert isinstance(batch, list) and len(batch) == 2
  with pytest.raises(ValueError, match=r"uint8 pixels \(H, W, 3\) RGB or \(H, W\) grey; got "
                                       r"float64"):
    inference.inference_model(CLS, pixels / 255.0)


def random_params(cfg, kind, seed=0):
  """Random weights of the right shapes without compiling an init."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32),
                      api.param_shapes(cfg, kind))


def test_class_names_recorded_else_imagenet_for_1000_classes(tiny_cache, photos, tmp_path):
  cfg = model_config(dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)),
                     window_sizes=(4, 4, 2, 1), img_size=32, patch_size=2, num_classes=1000)
  loaded = params_file.ParamsFile(cfg, "classifier", random_params(cfg, "classifier"))
  result = inference.inference_model(loaded, photos["jpg"])
  assert result["pred_class"] == IMAGENET_CLASSES[result["pred_label"]]
  # No names for another class count: no pred_class, as mmpretrain.
  ten = hub.get_model(CLS)._replace(classes=None)
  assert "pred_class" not in inference.inference_model(ten, photos["jpg"])
  # Names given to a saved file travel with it; names given to the call win.
  path = str(tmp_path / "named.msgpack")
  params_file.save_params(path, ten.config, "classifier", ten.params, classes=hf.FASHION[::-1])
  named = inference.inference_model(path, photos["jpg"])
  assert named["pred_class"] == hf.FASHION[::-1][named["pred_label"]]
  assert inference.load(path).classes == hf.FASHION[::-1]
  given = inference.inference_model(path, photos["jpg"], classes=list("abcdefghij"))
  assert given["pred_class"] == "abcdefghij"[given["pred_label"]]


def test_pretraining_model_gives_mixed_input_and_reconstructions(tiny_cache, photos, tmp_path):
  two = inference.inference_model(PRE, [photos["jpg"], photos["png"]], show_dir=str(tmp_path))
  s = hf.TINY_PRE.img_size
  for key in ("images", "mixed", "reconstructions"):
    assert two[key].shape == (2, s, s, 3) and two[key].dtype == np.uint8
  assert two["mask"].shape == (2, 2) and two["mask"].sum() == 2     # floor(4 x 0.5) cells
  assert np.isfinite(two["loss"]) and two["loss"] > 0
  # The mixed input: image a where the mask is 0, image b where it is 1.
  m = np.kron(two["mask"], np.ones((32, 32), int))[..., None].astype(bool)
  expected = np.where(m, two["images"][1], two["images"][0]).astype(int)
  assert np.abs(two["mixed"][0].astype(int) - expected).max() <= 1
  picture = Image.open(two["png"])
  assert picture.size[0] > 5 * s and os.path.dirname(two["png"]) == str(tmp_path)
  # One image is its own partner; another seed draws another mask.
  one = inference.inference_model(PRE, photos["jpg"], seed=1)
  assert one["reconstructions"].shape == (1, s, s, 3)
  assert np.abs(one["mixed"][0].astype(int) - one["images"][0].astype(int)).max() <= 1
  with pytest.raises(ValueError, match="one or two images at a time"):
    inference.inference_model(PRE, [photos["jpg"]] * 3)


def test_predict_cli_by_name(tiny_cache, photos, tmp_path, capsys):
  assert predict.main(["--list"]) == 0
  listing = capsys.readouterr().out
  assert BASE_CLS in listing and BASE_PRE in listing and "84.63" in listing
  assert "88.34 M" in listing and "114.67 M" in listing and "cache:" in listing
  assert predict.main(["--model", CLS, photos["jpg"], "--top", "3",
                       "--show-dir", str(tmp_path / "cls")]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0] == photos["jpg"] and len(out) == 5 and out[-1].startswith("pictures -> ")
  assert all(line.strip().split("  ", 1)[1] in hf.FASHION for line in out[1:4])
  assert (tmp_path / "cls" / "chelsea.png").is_file()
  assert predict.main(["--model", PRE, photos["jpg"], photos["png"],
                       "--show-dir", str(tmp_path / "pre")]) == 0
  out = capsys.readouterr().out
  assert "2 of 4 cells masked" in out and (tmp_path / "pre" / "chelsea_astronaut_mixmim.png"
                                          ).is_file()
  assert predict.main(["--model", BASE_CLS[:-2], photos["jpg"]]) == 1
  err = capsys.readouterr().err
  assert f"the closest are {BASE_CLS!r}" in err and "--list" in err


def test_export_evaluate_and_init_from_take_a_name(tiny_cache, tmp_path):
  out = str(tmp_path / "tiny.msgpack")
  assert export.main(["--model", CLS, "--out", out]) == 0
  written = params_file.load_params(out)
  assert written.kind == "classifier" and written.classes == hf.FASHION
  # evaluate --model: a name resolves, a near miss is one sentence, never both flags.
  config = os.path.join(REPO, "configs", "fashion_mnist_finetune.py")
  run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=""))  # nothing compiles
  near = run([sys.executable, "-m", "mixmim_jax.evaluate", f"--config={config}",
              f"--model={BASE_CLS[:-2]}"])
  assert near.returncode == 1 and f"the closest are {BASE_CLS!r}" in near.stdout + near.stderr
  both = run([sys.executable, "-m", "mixmim_jax.evaluate", f"--config={config}",
              f"--model={CLS}", "--checkpoint=x.msgpack"])
  assert both.returncode == 1 and "Exactly one of (checkpoint, model)" in both.stderr
  # A fine-tune starting from the pretraining model by name (config.init_from).
  dst = hf.TINY_PRE.replace(num_classes=10)
  fresh = random_params(dst, "classifier")
  params, _ = adapt.initial_params(PRE, -1, dst, fresh)
  source = hub.get_model(PRE)
  np.testing.assert_array_equal(
      params["encoder"]["patch_embed"]["proj"]["kernel"],
      source.params["encoder"]["patch_embed"]["proj"]["kernel"])
  np.testing.assert_array_equal(params["head"]["kernel"], fresh["head"]["kernel"])
