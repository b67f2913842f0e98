"""Labelled input for fine-tuning, linear probing and evaluation (tf.data).

  train = labeled.train_batches(cfg, local_batch_size=..., seed=..., process_index=...,
                                process_count=..., start_step=...)
  next(train)   # {"image": float32 [B, S, S, 3] normalized, "label": int32 [B]}
  num_batches, it = labeled.eval_batches(cfg, local_batch_size=..., process_index=...,
                                         process_count=...)
  next(it)      # + "mask": float32 [B], 0 on padding

Train view (mmpretrain's fine-tune pipeline): RandomResizedCrop (scale 0.08-1,
bicubic) + flip, RandAugment, RandomErasing, all on the 0-255 grid, then
normalization. Eval view: resize the short side to `eval_resize` (bicubic),
centre crop `image_size`. Sources: Fashion-MNIST IDX images + label files,
a folder root/split/<class>/*.jpg (classes in sorted order, as
tfds.ImageFolder and torchvision number them), or a TFDS dataset's `label`.
Every evaluation example is read exactly once across processes; the last
batches are padded to a common count and masked.
"""
import dataclasses
import math
import os

import numpy as np

from mixmim_jax.data._tf import tf
from mixmim_jax.data import augment, config as config_lib, fashion_mnist, randaugment, seeds
from mixmim_jax.data import sources

_LABEL_PREFIX = {"train": "train", "test": "t10k"}


def default_config():
  """The fine-tune input of mmpretrain's MixMIM-B recipe on ImageNet-1k."""
  c = config_lib.default_config()
  c.crop_scale = (0.08, 1.0)
  c.eval_split = "validation"      # "test" for Fashion-MNIST, "val" for a folder
  c.label_key = "label"
  c.eval_resize = 256              # short side before the centre crop
  c.randaugment = True
  c.randaugment_ops = 2
  c.randaugment_magnitude = 9.0
  c.randaugment_std = 0.5
  c.erase_prob = 0.25
  # Keep this fraction of each class's training examples (a fixed, seed-free
  # choice, so runs with different seeds see the same labelled subset).
  c.label_fraction = 1.0
  return c


@dataclasses.dataclass
class _Table:
  kind: str                # "pixels", "path" or "encoded"
  payload: object          # array or list, one entry per example
  labels: np.ndarray       # int32
  num_classes: int
  where: str


def _labels_path(directory, split):
  name = f"{_LABEL_PREFIX[split]}-labels-idx1-ubyte"
  for path in (os.path.join(directory, name + ".gz"), os.path.join(directory, name)):
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f"Fashion-MNIST {split} labels {name}(.gz) not found in "
                          f"{directory!r}; install them with `{fashion_mnist.INSTALL_HINT}`.")


def _table(config, split) -> _Table:
  if config.source == "fashion_mnist":
    images = fashion_mnist.load_images(config.fashion_mnist_dir, split)
    labels = fashion_mnist.read_idx(_labels_path(config.fashion_mnist_dir, split))
    if labels.shape != (len(images),):
      raise ValueError(f"Fashion-MNIST {split}: {len(labels)} labels for {len(images)} images.")
    return _Table("pixels", images[..., None], labels.astype(np.int32), 10,
                  fashion_mnist.images_path(config.fashion_mnist_dir, split))
  if config.source == "folder":
    root = os.path.join(config.folder, split)
    if not config.folder or not tf.io.gfile.isdir(root):
      raise FileNotFoundError(f"folder source: no directory {root!r}; expected the layout "
                              "folder/split/<class>/*.jpg.")
    classes = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(root)
                     if tf.io.gfile.isdir(os.path.join(root, d.rstrip("/"))))
    files, labels = [], []
    for i, name in enumerate(classes):
      found = sorted(f for f in tf.io.gfile.listdir(os.path.join(root, name))
                     if f.lower().endswith(sources.IMAGE_EXTENSIONS))
      files += [os.path.join(root, name, f) for f in found]
      labels += [i] * len(found)
    if not files:
      raise FileNotFoundError(f"folder source: no images in {root!r}/<class>/.")
    return _Table("path", files, np.asarray(labels, np.int32), len(classes), root)
  raise ValueError(f"data.source={config.source!r} has no labelled table; "
                   "the tfds source is read as a stream.")


def _subset(labels, fraction):
  """Indices of the first ceil(fraction * n_c) examples of each class in a fixed order."""
  if fraction >= 1.0:
    return np.arange(len(labels))
  order = np.random.default_rng(0).permutation(len(labels))
  keep = []
  for c in np.unique(labels):
    members = order[labels[order] == c]
    keep.append(members[:max(1, math.ceil(fraction * len(members)))])
  return np.sort(np.concatenate(keep))


def describe(config, split):
  """(num_examples, num_classes) of a split, after `label_fraction` for training."""
  if config.source == "tfds":
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    builder = tfds.builder(config.name, data_dir=config.data_dir or None)
    n = builder.info.splits[split].num_examples
    return n, builder.info.features[config.label_key].num_classes
  t = _table(config, split)
  n = len(_subset(t.labels, config.label_fraction)) if split == config.split else len(t.labels)
  return n, t.num_classes


# ----------------------------------------------------------------------- views

def _normalize(image, config):
  image = tf.broadcast_to(image, tf.concat([tf.shape(image)[:2], [3]], 0))
  return (image - tf.constant(config.mean, tf.float32)) / tf.constant(config.std, tf.float32)


def train_view(payload, key, kind, config):
  """RandomResizedCrop + flip + RandAugment + RandomErasing, normalized [S, S, 3]."""
  crop_key, flip_key, ra_key, erase_key = tf.unstack(
      tf.random.experimental.stateless_split(key, 4, alg=seeds.ALG))
  scale, ratio = tuple(config.crop_scale), tuple(config.crop_ratio)
  if kind == "pixels":
    crop = augment.random_crop(payload, crop_key, scale, ratio)
  else:
    encoded = tf.io.read_file(payload) if kind == "path" else payload
    crop = augment.decode_and_random_crop(encoded, crop_key, scale, ratio, False)
  image = augment.resize(crop, config.image_size, config.image_size)
  image = tf.broadcast_to(image, [config.image_size, config.image_size, 3])
  if config.hflip:
    flip = tf.random.stateless_uniform([], flip_key, alg=seeds.ALG) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
  if config.randaugment:
    fill = tuple(int(round(m)) for m in config.mean)
    image = randaugment.rand_augment(image, ra_key, config.randaugment_ops,
                                     config.randaugment_magnitude, config.randaugment_std,
                                     fill=fill)
  if config.erase_prob > 0:
    image = randaugment.random_erasing(image, erase_key, config.erase_prob,
                                       mean=tuple(config.mean), std=tuple(config.std))
  return _normalize(image, config)


def eval_view(payload, kind, config):
  """The references' test view: the short side resized to `eval_resize`, the
  long side to int(eval_resize x long / short) (truncated, as mmpretrain's
  ResizeEdge and torchvision's Resize do; bicubic, as Pillow), then the
  centre `image_size` crop (offsets rounded half to even, as both), normalized."""
  if kind == "pixels":
    image = payload
  else:
    image = augment.decode(tf.io.read_file(payload) if kind == "path" else payload)
  h, w = tf.cast(tf.shape(image)[0], tf.float64), tf.cast(tf.shape(image)[1], tf.float64)
  edge = tf.constant(config.eval_resize, tf.float64)
  new_h = tf.where(w < h, tf.floor(edge * h / w), edge)
  new_w = tf.where(w < h, edge, tf.floor(edge * w / h))
  image = augment.resize(image, tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32))
  s = config.image_size
  top = tf.cast(tf.round((new_h - s) / 2), tf.int32)
  left = tf.cast(tf.round((new_w - s) / 2), tf.int32)
  image = image[tf.maximum(top, 0):tf.maximum(top, 0) + s,
                tf.maximum(left, 0):tf.maximum(left, 0) + s]
  return _normalize(tf.ensure_shape(image, [s, s, None]), config)


# ------------------------------------------------------------------- datasets

def _options(ds):
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def _tfds_stream(config, split, process_index, process_count, drop_remainder):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder(config.name, data_dir=config.data_dir or None)
  part = tfds.even_splits(split, process_count, drop_remainder=drop_remainder)[process_index]
  ds = builder.as_dataset(split=part, decoders={config.image_key: tfds.decode.SkipDecoding()})
  count = builder.info.splits[part].num_examples
  return ds.map(lambda ex: (ex[config.image_key], tf.cast(ex[config.label_key], tf.int32))), count


def train_batches(config, *, local_batch_size, seed, process_index=0, process_count=1,
                  start_step=0):
  """Endless augmented batches of this process's shard, from batch `start_step` on
  (epochs are stateless permutations, so resuming needs only the step)."""
  config_lib.validate(config)
  parallel = tf.data.AUTOTUNE if config.num_parallel_calls == -1 else config.num_parallel_calls
  b = local_batch_size
  if config.source == "tfds":
    ds, count = _tfds_stream(config, config.split, process_index, process_count, True)
    kind, steps = "encoded", count // b
    ds = ds.enumerate()
    epoch_of = lambda e: ds.shuffle(min(config.shuffle_buffer, count),  # noqa: E731
                                    seed=seeds.shuffle_seed(seed, e))
  else:
    t = _table(config, config.split)
    ids = _subset(t.labels, config.label_fraction)
    ids = ids[process_index:len(ids) // process_count * process_count:process_count]
    kind, steps = t.kind, len(ids) // b
    payload, labels = tf.constant(np.asarray(t.payload)[ids]), tf.constant(t.labels[ids])
    gids = tf.constant(ids.astype(np.int64))

    def epoch_of(e):
      order = tf.random.experimental.stateless_shuffle(
          tf.range(len(ids), dtype=tf.int64), seeds.permutation_key(seed, e), alg=seeds.ALG)
      return tf.data.Dataset.from_tensor_slices(order).map(
          lambda i: (tf.gather(gids, i), (tf.gather(payload, i), tf.gather(labels, i))))
  if steps < 1:
    raise ValueError(f"{config.source} {config.split}: too few examples per process for "
                     f"local_batch_size={b}.")
  first_epoch, first_step = divmod(start_step, steps)

  def epoch(e):
    skip = tf.where(e == first_epoch, tf.constant(first_step * b, tf.int64), 0)
    return epoch_of(e).take(steps * b).skip(skip).map(
        lambda i, ex: {"image": train_view(ex[0], seeds.example_key(seed, e, i, 0), kind, config),
                       "label": ex[1]}, num_parallel_calls=parallel, deterministic=True)

  ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch)
  # A corrupt image is dropped (and the batch filled from the next ones).
  ds = ds.ignore_errors().batch(b, drop_remainder=True).prefetch(2)
  return map(lambda x: {k: v.numpy() for k, v in x.items()}, iter(_options(ds)))


def eval_batches(config, *, local_batch_size, process_index=0, process_count=1, split=None):
  """(batches per process, iterator) over every example of the eval split once.

  Process p reads examples p, p+P, ... (or its tfds.even_splits part); all
  processes yield the same number of batches, padded with mask 0."""
  split = split or config.eval_split
  b = local_batch_size
  if config.source == "tfds":
    ds, _ = _tfds_stream(config, split, process_index, process_count, False)
    kind = "encoded"
    total = describe(config, split)[0]
  else:
    t = _table(config, split)
    total, kind = len(t.labels), t.kind
    ids = np.arange(process_index, total, process_count)
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(t.payload)[ids], t.labels[ids]))
  per_process = math.ceil(total / process_count)
  num_batches = math.ceil(per_process / b)
  parallel = tf.data.AUTOTUNE if config.num_parallel_calls == -1 else config.num_parallel_calls
  real = ds.map(lambda p, y: {"image": eval_view(p, kind, config), "label": y,
                              "mask": tf.constant(1.0)},
                num_parallel_calls=parallel, deterministic=True)
  pad = real.take(1).map(lambda ex: {"image": ex["image"], "label": ex["label"],
                                     "mask": tf.constant(0.0)}).repeat()
  ds = real.concatenate(pad).take(num_batches * b).batch(b).prefetch(2)
  return num_batches, map(lambda x: {k: v.numpy() for k, v in x.items()}, iter(_options(ds)))
