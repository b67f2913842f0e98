"""mmpretrain's test pipeline on single images, outside the tf.data batches:
image files or uint8 arrays in, the model's test view out (short side to
img_size x 256/224 up to 224 px, to img_size above, bicubic; centre crop),
pixel for pixel what `labeled.eval_view` gives the evaluation (and
mmpretrain's ResizeEdge + CenterCrop). Also the names of a head's classes."""
from __future__ import annotations

import os

import numpy as np
from etils import epath

from mixmim_jax import data
from mixmim_jax.data import labeled
from mixmim_jax.data.imagenet_classes import IMAGENET_CLASSES

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def class_names(num_classes: int, labels_file: str | None = None,
                recorded=None) -> list[str]:
  """--labels FILE, else the names the checkpoint records, else ImageNet's for
  1000 classes, else "class i"."""
  if not labels_file and recorded:
    return list(recorded)
  if labels_file:
    names = [line.strip() for line in epath.Path(labels_file).read_text().splitlines()
             if line.strip()]
    if len(names) != num_classes:
      raise ValueError(f"{labels_file!r} has {len(names)} names for a {num_classes}-class head.")
    return names
  if num_classes == 1000:
    return list(IMAGENET_CLASSES)
  return [f"class {i}" for i in range(num_classes)]


def uint8_views(inputs, img_size: int) -> np.ndarray:
  """uint8 (N, S, S, 3): the evaluation transform of fine-tuning (mmpretrain's
  test pipeline, pixel for pixel) of image files or uint8 RGB / grey arrays."""
  from mixmim_jax.data.tf_cpu import tf  # pylint: disable=import-outside-toplevel
  cfg = data.labeled_config()
  cfg.image_size = img_size
  # The references' crop_pct: 224/256 up to 224 px, 1.0 above (the authors' rule).
  cfg.eval_resize = int(img_size / (224 / 256)) if img_size <= 224 else img_size
  out = []
  for item in inputs:
    if not isinstance(item, (str, os.PathLike)):
      out.append(labeled.eval_view(tf.constant(_pixels(item)), "pixels", cfg).numpy())
      continue
    if not epath.Path(item).is_file():
      raise FileNotFoundError(f"image {item!r} does not exist.")
    try:
      out.append(labeled.eval_view(tf.constant(os.fspath(item)), "path", cfg).numpy())
    except tf.errors.InvalidArgumentError as e:
      raise ValueError(f"{item!r} is not a JPEG, PNG, GIF or BMP image that can be "
                       "decoded.") from e
  return np.stack(out)


def _pixels(array) -> np.ndarray:
  array = np.asarray(array)
  if array.ndim == 2:
    array = array[..., None]
  if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (1, 3):
    raise ValueError(f"an image array must be uint8 pixels (H, W, 3) RGB or (H, W) grey; "
                     f"got {array.dtype} {array.shape}.")
  return array
