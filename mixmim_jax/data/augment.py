"""Per-example augmentation: RandomResizedCrop, horizontal flip, normalization.

The crop follows torchvision / mmpretrain's RandomResizedCrop exactly in
distribution: area fraction uniform in `scale`, aspect ratio log-uniform in
`ratio`, sides rounded half-to-even like Python's round(), up to 10 attempts,
then a central crop clamped to the ratio range. mmpretrain resizes with Pillow's
bicubic into uint8; tf.image.resize(antialias=True) uses the same Keys kernel
(a=-0.5) widened for downscaling, and we round and clip to 0..255 to land on the
same uint8 grid before normalizing.
"""

import math

from mixmim_jax.data._tf import tf
from mixmim_jax.data import config as config_lib
from mixmim_jax.data import seeds

ATTEMPTS = 10


def crop_window_from_uniforms(u, height, width, scale, ratio):
  """The crop window given the attempts' uniform draws (a pure function).

  Args:
    u: [..., 4, A] floats in [0, 1): per attempt the area, log-ratio, top and
      left draws.
    height, width: [...] image sizes.
    scale, ratio: (lo, hi) of the area fraction and of width/height.
  Returns:
    (top, left, crop_height, crop_width), each int32 [...].
  """
  u = tf.cast(u, tf.float64)  # Python's math is double; so is ours.
  h = tf.cast(height, tf.float64)[..., None]
  w = tf.cast(width, tf.float64)[..., None]
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  target_area = h * w * (scale[0] + (scale[1] - scale[0]) * u[..., 0, :])
  aspect = tf.exp(log_lo + (log_hi - log_lo) * u[..., 1, :])
  cw = tf.round(tf.sqrt(target_area * aspect))
  ch = tf.round(tf.sqrt(target_area / aspect))
  fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  # randint(0, n + 1) == floor(u * (n + 1)) for u uniform in [0, 1).
  top = tf.floor(u[..., 2, :] * (h - ch + 1))
  left = tf.floor(u[..., 3, :] * (w - cw + 1))
  first = tf.one_hot(tf.argmax(tf.cast(fits, tf.int32), axis=-1), tf.shape(u)[-1],
                     dtype=tf.float64)
  pick = lambda v: tf.reduce_sum(v * first, axis=-1)  # noqa: E731
  h, w = h[..., 0], w[..., 0]
  # Central fallback: the whole image, narrowed to the nearest allowed ratio.
  in_ratio = w / h
  fw = tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w)
  fh = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
  ftop, fleft = tf.floor((h - fh) / 2), tf.floor((w - fw) / 2)
  ok = tf.reduce_any(fits, axis=-1)
  out = [tf.where(ok, pick(a), b) for a, b in ((top, ftop), (left, fleft), (ch, fh), (cw, fw))]
  return tuple(tf.cast(v, tf.int32) for v in out)


def sample_crop_window(key, height, width, scale, ratio, attempts=ATTEMPTS):
  """(top, left, crop_height, crop_width) for one image from a stateless key."""
  u = tf.random.stateless_uniform([4, attempts], key, dtype=tf.float32, alg=seeds.ALG)
  return crop_window_from_uniforms(u, height, width, scale, ratio)


def _decode_and_crop(encoded, key, scale, ratio, partial_jpeg):
  """Decodes an image file and crops it. A corrupt file raises here, and the
  pipeline drops and counts it.

  JPEGs are decoded with libjpeg's islow DCT (INTEGER_ACCURATE), as Pillow does,
  so whole-image decoding gives Pillow's pixels. `partial_jpeg` decodes only the
  crop instead: faster, but libjpeg then upsamples chroma without the columns
  beside the crop, and its edge columns differ by up to ~30 levels.
  """

  def jpeg():
    if not partial_jpeg:
      image = tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")
      return _crop(image, key, scale, ratio)
    shape = tf.image.extract_jpeg_shape(encoded)
    top, left, ch, cw = sample_crop_window(key, shape[0], shape[1], scale, ratio)
    return tf.image.decode_and_crop_jpeg(
        encoded, tf.stack([top, left, ch, cw]), channels=3, dct_method="INTEGER_ACCURATE")

  def other():  # PNG, GIF (first frame), BMP; grey and 16-bit become uint8 RGB
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return _crop(image, key, scale, ratio)

  return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def _crop(image, key, scale, ratio):
  shape = tf.shape(image)
  top, left, ch, cw = sample_crop_window(key, shape[0], shape[1], scale, ratio)
  return image[top:top + ch, left:left + cw]


def pretrain_view(payload, key, kind, cfg):
  """One augmented float32 [S, S, 3] view of an example.

  kind: "pixels" (uint8 [H, W, C] with C = 1 or 3), "encoded" (image file bytes)
  or "path" (a file to read first).
  """
  crop_key, flip_key = tf.unstack(
      tf.random.experimental.stateless_split(key, 2, alg=seeds.ALG))
  scale, ratio = tuple(cfg.crop_scale), tuple(cfg.crop_ratio)
  if kind == "pixels":
    crop = _crop(payload, crop_key, scale, ratio)
  else:
    encoded = tf.io.read_file(payload) if kind == "path" else payload
    crop = _decode_and_crop(encoded, crop_key, scale, ratio, cfg.partial_jpeg_decode)
  size = cfg.image_size
  image = tf.image.resize(crop, [size, size], method=config_lib.INTERPOLATIONS[cfg.interpolation],
                          antialias=True)
  image = tf.round(tf.clip_by_value(image, 0.0, 255.0))
  # Grey sources are resized on one channel and widened after: same numbers, a
  # third of the work.
  image = tf.broadcast_to(image, [size, size, 3])
  if cfg.hflip:
    flip = tf.random.stateless_uniform([], flip_key, alg=seeds.ALG) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
  mean = tf.constant(cfg.mean, tf.float32)
  std = tf.constant(cfg.std, tf.float32)
  return (image - mean) / std
