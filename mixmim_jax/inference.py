"""mmpretrain's one-line inference, in JAX:

  import mixmim_jax as mm
  result = mm.inference_model("mixmim-base_mixmim-pre_8xb128-coslr-100e_in1k", "bird.jpg")
  result["pred_class"], result["pred_score"]

A classifier gives mmpretrain's keys: `pred_scores` (softmax over all classes),
`pred_label`, `pred_score` and `pred_class` (when class names are known: those
the checkpoint records, else ImageNet's for a 1000-class head). The
pretraining model, for which mmpretrain's `inference_model` has no answer,
gives the mixed input and both reconstructions of one or two images.

Inputs are the model's test view (data/test_view.py: pixel-equal to
mmpretrain's test pipeline): image files, or uint8 RGB arrays (H, W, 3) /
grey (H, W). mmpretrain reads arrays as BGR (OpenCV's order); these are RGB,
as PIL, scikit-image and TensorFlow give them.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from mixmim_jax.data import test_view
from mixmim_jax.data.test_view import IMAGENET_MEAN, IMAGENET_STD
from mixmim_jax.model import api, masking, objective, pixels
from mixmim_jax.training import metrics
from mixmim_jax.weights import hub, sources
from mixmim_jax.weights.params_file import ParamsFile


def load(model, pretrained=True) -> ParamsFile:
  """A ParamsFile from a name (with `pretrained` as hub.get_model takes it), a
  checkpoint path (anything sources.read reads) or a ParamsFile."""
  if isinstance(model, ParamsFile):
    loaded = model
  elif hub.entry_for(model) is not None:
    return hub.get_model(str(model), pretrained)
  else:
    loaded, _ = sources.read(os.fspath(model))
  if pretrained is not True:
    raise ValueError(f"pretrained={pretrained!r} goes with a model name; {model!r} is "
                     "a checkpoint already.")
  return loaded


def logits(model: ParamsFile, images) -> jax.Array:
  """Class logits (classifier files) or pooled features (encoder files), (B, .),
  of normalized images."""
  cfg = model.config if model.kind == "classifier" else model.config.replace(num_classes=0)
  return api.classify(cfg, model.params, images)


def top_k(model: ParamsFile, paths, k: int = 5, mean=IMAGENET_MEAN, std=IMAGENET_STD,
          labels_file: str | None = None):
  """Per image, the k most probable (index, name, probability), best first."""
  if model.kind != "classifier" or model.config.num_classes == 0:
    raise ValueError("this params file holds an encoder without a classifier head; "
                     "fine-tune it first (python -m mixmim_jax.finetune).")
  names = test_view.class_names(model.config.num_classes, labels_file, model.classes)
  images = pixels.normalize(test_view.uint8_views(paths, model.config.img_size), mean, std)
  probs = np.asarray(jax.nn.softmax(logits(model, images), axis=-1))
  k = min(k, probs.shape[1])
  best = np.argsort(-probs, axis=1, kind="stable")[:, :k]
  return [[(int(i), names[i], float(p[i])) for i in row] for row, p in zip(best, probs)]


def _as_list(inputs) -> tuple[list, bool]:
  """(items, whether `inputs` was one image)."""
  if isinstance(inputs, (str, os.PathLike)):
    return [os.fspath(inputs)], True
  if isinstance(inputs, (np.ndarray, jax.Array)):
    array = np.asarray(inputs)
    if array.ndim in (2, 3):
      return [array], True
    if array.ndim == 4:
      return list(array), False
    raise ValueError(f"an image array is (H, W, 3), (H, W) or a batch (N, H, W, 3); got "
                     f"shape {array.shape}.")
  items = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else np.asarray(x)
           for x in inputs]
  if not items:
    raise ValueError("no images given.")
  return items, False


def _stem(item, i: int) -> str:
  return epath.Path(item).stem if isinstance(item, str) else f"image_{i}"


def inference_model(model, inputs, pretrained=True, *, classes=None,
                    show_dir: str | None = None, batch_size: int = 8, seed: int = 0,
                    mask_ratio: float = 0.5, mean=IMAGENET_MEAN,
                    std=IMAGENET_STD):
  """mmpretrain's inference_model for a classifier (a dict per image: a dict
  for one input, a list for several), or `reconstruct` for a pretraining model.

  model: a name (mixmim_jax.list_models()), a params file / .pth / workdir, or
  a ParamsFile. pretrained: True (the published weights), False, or a local
  .pth / .msgpack PATH (names only). classes: names to use instead of the
  recorded ones. show_dir: write a PNG per image there."""
  loaded = load(model, pretrained)
  items, single = _as_list(inputs)
  if loaded.kind == "pretrain":
    return reconstruct(loaded, items, show_dir=show_dir, seed=seed, mask_ratio=mask_ratio,
                       mean=mean, std=std)
  if loaded.kind != "classifier" or loaded.config.num_classes == 0:
    raise ValueError("this model is an encoder without a classifier head; fine-tune it "
                     "first (python -m mixmim_jax.finetune).")
  crops = test_view.uint8_views(items, loaded.config.img_size)
  scores = _softmax_scores(loaded, crops, batch_size, mean, std)
  names = classes or loaded.classes or (test_view.class_names(1000)
                                        if loaded.config.num_classes == 1000 else None)
  if names is not None and len(names) != loaded.config.num_classes:
    raise ValueError(f"{len(names)} class names for a {loaded.config.num_classes}-class head.")
  results = []
  for i, p in enumerate(scores):
    label = int(np.argmax(p))
    result: dict[str, Any] = dict(pred_scores=p, pred_label=label, pred_score=float(p[label]))
    if names is not None:
      result["pred_class"] = names[label]
    if show_dir:
      title = f"{result.get('pred_class', f'class {label}').split(',')[0]}: {p[label]:.3f}"
      result["png"] = str(epath.Path(show_dir) / f"{_stem(items[i], i)}.png")
      metrics.save_pairs_png(result["png"], [[crops[i]]], [title])
    results.append(result)
  return results[0] if single else results


def _softmax_scores(loaded: ParamsFile, crops: np.ndarray, batch_size: int, mean,
                    std) -> np.ndarray:
  """Softmax over the logits (as mmpretrain's head), in fixed-size batches so
  that any number of images compiles one program."""
  n = len(crops)
  size = max(1, min(batch_size, n))
  out = []
  for start in range(0, n, size):
    chunk = crops[start:start + size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), 0)])
    images = pixels.normalize(jnp.asarray(padded), mean, std)
    scores = logits(loaded, images).astype(jnp.float32)
    out.append(np.asarray(jax.nn.softmax(scores, axis=-1))[:len(chunk)])
  return np.concatenate(out)


def reconstruct(loaded: ParamsFile, items, *, show_dir: str | None = None, seed: int = 0,
                mask_ratio: float = 0.5, mean=IMAGENET_MEAN,
                std=IMAGENET_STD) -> dict:
  """MixMIM's own task on one or two images: a mask of exactly floor(cells x
  mask_ratio) cells drawn from `seed`, image a's masked cells filled with b's
  (one image is its own partner, as the middle image of an odd batch), the
  encoder on the mixed pair and the decoder rebuilding both. Returns uint8
  arrays (N, S, S, 3) `images`, `mixed` (what the encoder saw for each),
  `reconstructions`, the `mask` (grid, grid) and the norm-pix `loss`; with
  `show_dir`, a PNG laid out like the training pictures."""
  if len(items) not in (1, 2):
    raise ValueError(f"the pretraining model shows one or two images at a time (a mixed "
                     f"pair); got {len(items)}.")
  cfg, p = loaded.config, loaded.config.encoder_stride
  crops = test_view.uint8_views(items, cfg.img_size)
  pair = np.concatenate([crops, crops]) if len(items) == 1 else crops
  images = pixels.normalize(jnp.asarray(pair), mean, std)
  mask = api.draw_mask(jax.random.key(seed), cfg, 1, mask_ratio)
  out = api.pretrain_forward(cfg, loaded.params, images, mask)
  # Undo the per-patch standardisation with the true patches' statistics, as
  # the training pictures (visualize.py) and MAE's demos do.
  raw = objective.patchify(images, p)
  pred = (out["prediction"] * jnp.sqrt(raw.var(-1, keepdims=True, ddof=1) + 1e-6)
          + raw.mean(-1, keepdims=True))
  recon = objective.unpatchify(pred, p, cfg.in_chans)
  pixel_mask = masking.upsample_mask(mask, cfg.mask_grid, p).reshape(1, cfg.img_size,
                                                                      cfg.img_size, 1)
  mixed = images * (1 - pixel_mask) + jnp.flip(images, 0) * pixel_mask
  n = len(items)
  recon = metrics.denormalize(np.asarray(recon), mean, std)
  result = dict(images=pair[:n], mixed=metrics.denormalize(np.asarray(mixed), mean, std)[:n],
                reconstructions=recon[:n],
                mask=np.asarray(mask).reshape(cfg.mask_grid, cfg.mask_grid).astype(np.int32),
                loss=float(out["loss"]))
  if show_dir:
    name = "_".join(_stem(items[i], i) for i in range(n))
    result["png"] = str(epath.Path(show_dir) / f"{name}_mixmim.png")
    metrics.save_pairs_png(result["png"],
                           [[pair[0], pair[1], result["mixed"][0], recon[0], recon[1]]],
                           ["image a", "image b", "mixed", "recon a", "recon b"])
  return result
