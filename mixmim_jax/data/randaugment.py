"""RandAugment ("timm_increasing", 2 ops, magnitude 9, std 0.5) and RandomErasing
as tf.data ops on one uint8-valued float32 image [H, W, 3], stateless.

The same ops, ranges and probabilities as mmpretrain 1.2.0's RandAugment with
`policies='timm_increasing'` (which follows timm): two ops drawn with
replacement from 15; each op then runs with probability 0.5; its magnitude is
N(9, 0.5) clipped to [0, 10] and mapped linearly onto the op's range; signed
ops flip the sign with probability 0.5. Every op at a given magnitude gives
mmpretrain's pixels exactly (tests/test_finetune.py, against its transforms):
invert, posterize, solarize(-add) and brightness are mmcv's formulas in
TensorFlow; color, contrast and sharpness (mmcv's cv2 backend) and the warps
(rotate, shear, translate: cv2.warpAffine with mmcv's matrices, bicubic as
the recipe asks) are mmcv's own OpenCV calls; auto-contrast and equalize are
Pillow's ImageOps, whose numbers mmcv's equal.
"""
import functools
import math

import cv2
import numpy as np
from PIL import Image, ImageOps

from mixmim_jax.data import seeds
from mixmim_jax.data.tf_cpu import tf

# (name, magnitude at level 0, magnitude at level 10, signed)
OPS = (
    ("auto_contrast", None, None, False), ("equalize", None, None, False),
    ("invert", None, None, False), ("rotate", 0.0, 30.0, True),
    ("posterize", 4.0, 0.0, False), ("solarize", 256.0, 0.0, False),
    ("solarize_add", 0.0, 110.0, False), ("color", 0.0, 0.9, True),
    ("contrast", 0.0, 0.9, True), ("brightness", 0.0, 0.9, True),
    ("sharpness", 0.0, 0.9, True), ("shear_x", 0.0, 0.3, True),
    ("shear_y", 0.0, 0.3, True), ("translate_x", 0.0, 0.45, True),
    ("translate_y", 0.0, 0.45, True),
)
OP_NAMES = tuple(op[0] for op in OPS)


def _blend(img, other, factor):
  # mmcv's adjust_brightness: cv2.addWeighted in float32, clip, truncate.
  return tf.floor(tf.clip_by_value(other + factor * (img - other), 0.0, 255.0))


def _on_uint8(fn, img, *args):
  """`fn(uint8 image, *args)` -> uint8 image (a Pillow or OpenCV call), run from
  the graph on uint8 values held as float32 [H, W, 3]. Both libraries release
  the GIL, so tf.data's parallel calls run side by side."""
  def call(image, *values):
    return fn(image.astype(np.uint8), *values).astype(np.float32)
  out = tf.numpy_function(call, [img, *args], tf.float32, stateful=False)
  return tf.ensure_shape(out, img.shape)


def _pillow(op):
  """ImageOps.`op` on a uint8 array: per-channel lookup tables, the same numbers
  as mmcv's (mmpretrain's transforms call mmcv; tests/test_finetune.py compares
  them), at a third of the cost of the same table built from TensorFlow ops."""
  return lambda image: np.asarray(getattr(ImageOps, op)(Image.fromarray(image)))


def auto_contrast(img):
  return _on_uint8(_pillow("autocontrast"), img)


def equalize(img):
  return _on_uint8(_pillow("equalize"), img)


def posterize(img, bits):
  shift = 8 - tf.cast(tf.math.ceil(bits), tf.int32)
  v = tf.cast(img, tf.int32)
  return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(v, shift), shift), tf.float32)


ENHANCEMENTS = ("color", "contrast", "sharpness")
# PIL.ImageFilter.SMOOTH, as mmcv's adjust_sharpness.
_SMOOTH = np.array([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13


def _cv2_enhance(img, magnitude, kind):
  """mmcv's adjust_color / adjust_contrast / adjust_sharpness (its cv2 backend,
  mmpretrain's) on an RGB image: the grey image is cv2's, rounded to uint8; the
  factor 1 + magnitude is formed in double, as mmpretrain forms it in Python."""
  factor = 1.0 + float(magnitude)
  if kind == "color":      # blended in uint8: cv2 rounds
    grey = np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=-1)
    return cv2.addWeighted(img, factor, grey, 1 - factor, 0)
  if kind == "contrast":   # towards the grey image's mean, rounded half to even
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    other = np.full(img.shape, round(np.sum(grey) / grey.size), np.float32)
  else:                    # towards the 3x3-smoothed image (reflect-101 border)
    other = cv2.filter2D(img, -1, _SMOOTH).astype(np.float32)
  out = cv2.addWeighted(img.astype(np.float32), factor, other, 1 - factor, 0)
  return np.clip(out, 0, 255).astype(np.uint8)


def enhance(img, kind, magnitude):
  """One of the ENHANCEMENTS at `magnitude` (the factor is 1 + magnitude) as mmcv
  does it, on uint8 values held as float32."""
  if kind not in ENHANCEMENTS:
    raise ValueError(f"enhancement kind {kind!r}; expected one of {ENHANCEMENTS}.")
  return _on_uint8(functools.partial(_cv2_enhance, kind=kind), img,
                   tf.cast(magnitude, tf.float32))


WARPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def _warp_matrix(kind, magnitude, height, width):
  """The 2x3 matrix mmcv hands to cv2.warpAffine (source -> destination)."""
  if kind == "rotate":   # mmcv.imrotate: degrees clockwise about the centre
    return cv2.getRotationMatrix2D(((width - 1) * 0.5, (height - 1) * 0.5), -magnitude, 1.0)
  if kind == "shear_x":  # mmcv.imshear, as float32
    return np.float32([[1, magnitude, 0], [0, 1, 0]])
  if kind == "shear_y":
    return np.float32([[1, 0, 0], [magnitude, 1, 0]])
  if kind == "translate_x":  # mmpretrain's Translate: a fraction of the side
    return np.float32([[1, 0, magnitude * width], [0, 1, 0]])
  return np.float32([[1, 0, 0], [0, 1, magnitude * height]])


def _cv2_warp(img, magnitude, kind, fill):
  h, w = img.shape[:2]
  return cv2.warpAffine(img, _warp_matrix(kind, float(magnitude), h, w), (w, h),
                        flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=tuple(float(v) for v in fill))


def warp(img, kind, magnitude, fill):
  """One of the WARPS at `magnitude` as mmcv does it (cv2.warpAffine, bicubic,
  outside pixels the per-channel `fill`), on uint8 values held as float32."""
  if kind not in WARPS:
    raise ValueError(f"warp kind {kind!r}; expected one of {WARPS}.")
  return _on_uint8(functools.partial(_cv2_warp, kind=kind, fill=tuple(fill)), img,
                   tf.cast(magnitude, tf.float32))


def apply_op(index, img, magnitude, fill):
  """Op number `index` of OPS with its (already signed) magnitude."""
  m = magnitude
  branches = [
      lambda: auto_contrast(img),
      lambda: equalize(img),
      lambda: 255.0 - img,
      lambda: warp(img, "rotate", m, fill),
      lambda: posterize(img, m),
      lambda: tf.where(img < m, img, 255.0 - img),
      lambda: tf.where(img < 128.0, tf.minimum(img + m, 255.0), img),
      lambda: enhance(img, "color", m),
      lambda: enhance(img, "contrast", m),
      lambda: _blend(img, tf.zeros_like(img), 1.0 + m),
      lambda: enhance(img, "sharpness", m),
      lambda: warp(img, "shear_x", m, fill),
      lambda: warp(img, "shear_y", m, fill),
      lambda: warp(img, "translate_x", m, fill),
      lambda: warp(img, "translate_y", m, fill),
  ]
  return tf.switch_case(tf.cast(index, tf.int32), branches)


def op_magnitude(index, level, sign_u):
  """Magnitude of op `index` at `level` in [0, 10]; negative when sign_u < 0.5."""
  lo = tf.constant([op[1] or 0.0 for op in OPS])
  hi = tf.constant([op[2] or 0.0 for op in OPS])
  signed = tf.constant([op[3] for op in OPS])
  value = level / 10.0 * (tf.gather(hi, index) - tf.gather(lo, index)) + tf.gather(lo, index)
  return tf.where(tf.gather(signed, index) & (sign_u < 0.5), -value, value)


def rand_augment(img, key, num_ops=2, magnitude=9.0, magnitude_std=0.5, prob=0.5,
                 fill=(124, 116, 104)):
  """`num_ops` ops drawn with replacement, each applied with probability `prob`.
  `fill` (the recipe's rounded mean) pads the warps."""
  keys = tf.random.experimental.stateless_split(key, num_ops, alg=seeds.ALG)
  for k in range(num_ops):
    pick_key, u_key, level_key = tf.unstack(
        tf.random.experimental.stateless_split(keys[k], 3, alg=seeds.ALG))
    index = tf.random.stateless_uniform([], pick_key, 0, len(OPS), tf.int32, alg=seeds.ALG)
    run_u, sign_u = tf.unstack(tf.random.stateless_uniform([2], u_key, alg=seeds.ALG))
    level = magnitude
    if magnitude_std > 0:
      level = tf.clip_by_value(
          magnitude + magnitude_std * tf.random.stateless_normal([], level_key, alg=seeds.ALG),
          0.0, 10.0)
    m = op_magnitude(index, level, sign_u)
    img = tf.cond(run_u < prob, lambda i=img, j=index, mm=m: apply_op(j, i, mm, fill),
                  lambda i=img: i)
  return img


def random_erasing(img, key, prob=0.25, min_area=0.02, max_area=1 / 3,
                   aspect=(0.3, 1 / 0.3), mean=(123.675, 116.28, 103.53),
                   std=(58.395, 57.12, 57.375)):
  """mmpretrain's RandomErasing(mode='rand'): with probability `prob` one box of
  area fraction U(min, max) and log-uniform aspect is filled with N(mean, std)
  noise per pixel, truncated to integers and clipped to 0..255."""
  keys = tf.unstack(tf.random.experimental.stateless_split(key, 3, alg=seeds.ALG))
  u = tf.random.stateless_uniform([5], keys[0], dtype=tf.float64, alg=seeds.ALG)
  h, w = tf.shape(img)[0], tf.shape(img)[1]
  hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
  ratio = tf.exp(math.log(aspect[0]) + u[1] * (math.log(aspect[1]) - math.log(aspect[0])))
  area = hf * wf * (min_area + u[2] * (max_area - min_area))
  eh = tf.minimum(tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32), h)
  ew = tf.minimum(tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32), w)
  top = tf.cast(tf.floor(u[3] * tf.cast(h - eh, tf.float64)), tf.int32)
  left = tf.cast(tf.floor(u[4] * tf.cast(w - ew, tf.float64)), tf.int32)

  def erased():
    # Noise for the box only (2-33 % of the image), padded into place.
    noise = tf.random.stateless_normal(tf.stack([eh, ew, tf.shape(img)[2]]), keys[1],
                                       alg=seeds.ALG)
    noise = tf.clip_by_value(tf.cast(tf.cast(noise * tf.constant(std, tf.float32)
                                             + tf.constant(mean, tf.float32), tf.int32),
                                     tf.float32), 0.0, 255.0)
    around = [[top, h - top - eh], [left, w - left - ew], [0, 0]]
    box = tf.pad(tf.ones_like(noise, tf.bool), around)
    return tf.where(box, tf.pad(noise, around), img)

  return tf.cond(u[0] < prob, erased, lambda: img)
