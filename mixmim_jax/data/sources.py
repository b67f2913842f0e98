"""Where examples come from: one process's shard of a split, for every trainer.

A source yields elements {"index": global int64 id, "payload": image data} (and
"label": int32 when labels are asked for):

- `epoch_stream(seed, epoch, start, stop)`: the training order of an epoch, at
  positions [start, stop); positions past the end wrap around to the start of
  the same order (the pipeline reads a little past the end for stand-ins). All
  processes hold the same number of examples (`num_local`), so they run the
  same number of steps per epoch.
- `ordered()`: every example of the process's part once, in a fixed order (for
  evaluation, where no example may be dropped: parts differ by at most one).

IDX (Fashion-MNIST) and folder sources allow random access: each epoch is a
stateless permutation of the whole shard, and `start` costs nothing. tfds
records are read in order: a fixed file order, then a buffer shuffle seeded by
(seed, epoch); `start` skips records before any image is decoded.
"""

import dataclasses
import math

import numpy as np
from etils import epath

from mixmim_jax.data import fashion_mnist
from mixmim_jax.data import seeds
from mixmim_jax.data.tf_cpu import tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_examples: int  # in the whole split, all processes together (after label_fraction)
  source: str
  where: str
  num_classes: int = 0   # 0 when unknown (unlabelled use)


def _equal_shard(ids, process_index, process_count):
  """Every process_count-th id from process_index; all shards the same size."""
  per_process = len(ids) // process_count
  return np.asarray(ids)[process_index:per_process * process_count:process_count]


def label_subset(labels, fraction):
  """Indices of the first ceil(fraction * n_c) examples of each class in a fixed order."""
  if fraction >= 1.0:
    return np.arange(len(labels))
  order = np.random.default_rng(0).permutation(len(labels))
  keep = []
  for c in np.unique(labels):
    members = order[labels[order] == c]
    keep.append(members[:max(1, math.ceil(fraction * len(members)))])
  return np.sort(np.concatenate(keep))


class _RandomAccess:
  """A shard held as a table: pixel arrays, file paths or encoded bytes."""

  def __init__(self, info, kind, table, ids, labels=None, names=None):
    self.info, self.kind, self.num_local = info, kind, len(ids)
    # Lists (paths, encoded bytes) are indexed in Python: a NumPy array of bytes
    # would pad them to one width and drop trailing zero bytes.
    shard = table[ids] if isinstance(table, np.ndarray) else [table[i] for i in ids]
    self._table = tf.constant(shard)
    self._ids = tf.constant(np.asarray(ids, np.int64))
    self._labels = None if labels is None else tf.constant(np.asarray(labels, np.int32)[ids])
    self._names = names

  def _lookup(self, i):
    out = {"index": tf.gather(self._ids, i), "payload": tf.gather(self._table, i)}
    if self._labels is not None:
      out["label"] = tf.gather(self._labels, i)
    return out

  def epoch_stream(self, seed, epoch, start, stop):
    n = self.num_local
    order = tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seeds.permutation_key(seed, epoch), alg=seeds.ALG)
    return tf.data.Dataset.range(start, stop).map(lambda pos: self._lookup(order[pos % n]))

  def ordered(self):
    return tf.data.Dataset.range(self.num_local).map(self._lookup)

  def local_ids(self):
    return self._ids.numpy()

  def example_name(self, index):
    if self._names is None:
      return f"{self.info.source} example {index}"
    return self._names[index]


def _folder_files(config, split):
  """(root, files, labels, class names): root/<class>/<image>, classes sorted by
  name and numbered in that order, as tfds.ImageFolder and torchvision do."""
  root = str(epath.Path(config.folder) / split) if config.folder else ""
  if not config.folder or not tf.io.gfile.isdir(root):
    raise FileNotFoundError(
        f"folder source: no directory {root!r} (data.folder={config.folder!r}, "
        f"split {split!r}); expected the layout folder/split/<class>/*.jpg.")
  classes = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(root)
                   if tf.io.gfile.isdir(str(epath.Path(root) / d.rstrip("/"))))
  files, labels = [], []
  for i, name in enumerate(classes):
    folder = epath.Path(root) / name
    found = sorted(f for f in tf.io.gfile.listdir(str(folder))
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    files += [str(folder / f) for f in found]
    labels += [i] * len(found)
  if not files:
    raise FileNotFoundError(
        f"folder source: no {'/'.join(IMAGE_EXTENSIONS)} files in {root!r}/<class>/.")
  return root, files, np.asarray(labels, np.int32), classes


def _read_or_empty(path):
  # An unreadable file becomes empty bytes, which fail to decode later and are
  # handled like any corrupt image.
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  except (OSError, tf.errors.OpError):
    return b""


def _tfds_builder(config):
  # tensorflow_datasets is imported where used: it takes seconds to load, and the
  # folder and Fashion-MNIST sources never need it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    return tfds.builder(config.name, data_dir=config.data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"tfds source: no TFDS dataset named data.name={config.name!r}.") from e


def _tfds_dataset(builder, config, split, shuffle_files, seed):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # The image stays encoded: decoding (and handling corrupt images) is ours.
  decoders = {config.image_key: tfds.decode.SkipDecoding()}
  read_config = tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=False)
  try:
    return builder.as_dataset(split=split, shuffle_files=shuffle_files, decoders=decoders,
                              read_config=read_config)
  except AssertionError as e:  # how tfds reports data that was never prepared
    raise FileNotFoundError(
        f"tfds source: {config.name!r} split {split!r} is not prepared under "
        f"data_dir {builder.data_dir!r} (data.data_dir={config.data_dir!r}).") from e


def _describe_tfds(config, split, labels):
  builder = _tfds_builder(config)
  try:
    count = builder.info.splits[split].num_examples
  except KeyError:
    # No split metadata: unprepared data (raises with the path) or mocked data in
    # tests, which has records but no counts.
    ds = _tfds_dataset(builder, config, split, False, None)
    count = int(ds.reduce(np.int64(0), lambda n, _: n + 1))
  classes = 0
  if labels:
    feature = builder.info.features[config.label_key]
    classes = getattr(feature, "num_classes", 0)
  return DatasetInfo(count, "tfds", f"{config.name}/{split} in {builder.data_dir}",
                     classes), builder


class _Tfds:
  """One process's tfds.even_splits part, read sequentially."""

  kind = "encoded"

  def __init__(self, config, split, process_index, process_count, seed, labels, every_example):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    self.info, builder = _describe_tfds(config, split, labels)
    part = tfds.even_splits(split, process_count,
                            drop_remainder=not every_example)[process_index]
    if every_example:
      records = _tfds_dataset(builder, config, part, False, None)
      self.num_local = builder.info.splits[part].num_examples
      first = 0
    else:
      self.num_local = self.info.num_examples // process_count
      # A fixed file order (one seeded shuffle, the same every epoch) keeps the
      # enumeration below a stable example id across epochs and restarts.
      records = _tfds_dataset(builder, config, part, True, seed)
      first = process_index * self.num_local
    self._first = first
    image_key, label_key = config.image_key, config.get("label_key", "label")

    def element(i, ex):
      out = {"index": i, "payload": ex[image_key]}
      if labels:
        out["label"] = tf.cast(ex[label_key], tf.int32)
      return out

    self._records = records.enumerate(first).map(element)
    if config.cache:
      self._records = self._records.cache()
    self._buffer = max(1, min(config.shuffle_buffer, self.num_local))
    self._where = self.info.where

  def epoch_stream(self, seed, epoch, start, stop):
    order = self._records.shuffle(self._buffer, seed=seeds.shuffle_seed(seed, epoch),
                                  reshuffle_each_iteration=False)
    # repeat(2): positions past the end wrap to this epoch's order again.
    return order.repeat(2).skip(start).take(stop - start)

  def ordered(self):
    return self._records

  def local_ids(self):
    return np.arange(self._first, self._first + self.num_local)

  def example_name(self, index):
    return f"{self._where} example #{index}"


def _fashion_mnist(config, split, labels):
  images = fashion_mnist.load_images(config.fashion_mnist_dir, split)
  classes = fashion_mnist.load_labels(config.fashion_mnist_dir, split, len(images)) \
      if labels else None
  info = DatasetInfo(len(images), "fashion_mnist",
                     fashion_mnist.images_path(config.fashion_mnist_dir, split),
                     10 if labels else 0)
  return info, "pixels", images[..., None], classes, None


def _folder(config, split, labels):
  root, files, classes, names = _folder_files(config, split)
  info = DatasetInfo(len(files), "folder", root, len(names) if labels else 0)
  if config.cache:
    return info, "encoded", [_read_or_empty(f) for f in files], classes, files
  return info, "path", files, classes, files


def describe(config, split=None, labels=False) -> DatasetInfo:
  """Size (after `label_fraction` for labelled training) and location of a split
  of the configured source; raises if it cannot be found."""
  split = split or config.split
  if config.source == "tfds":
    return _describe_tfds(config, split, labels)[0]
  if config.source == "folder":
    root, files, classes, names = _folder_files(config, split)
    info = DatasetInfo(len(files), "folder", root, len(names) if labels else 0)
  else:
    path = fashion_mnist.images_path(config.fashion_mnist_dir, split)
    info = DatasetInfo(fashion_mnist.read_idx_shape(path)[0], "fashion_mnist", path,
                       10 if labels else 0)
    if labels:
      classes = fashion_mnist.load_labels(config.fashion_mnist_dir, split, info.num_examples)
  fraction = config.get("label_fraction", 1.0)
  if labels and fraction < 1.0 and split == config.split:
    info = dataclasses.replace(info, num_examples=len(label_subset(classes, fraction)))
  return info


def open_source(config, split, process_index, process_count, seed, *, labels=False,
                every_example=False):
  """This process's part of a split: equal-sized training shards, or with
  `every_example` (evaluation) every example exactly once across processes;
  either way with the training split's `label_fraction` applied when
  labelled (the representation probes read that subset once)."""
  if config.source == "tfds":
    return _Tfds(config, split, process_index, process_count, seed, labels, every_example)
  info, kind, table, classes, names = (_folder if config.source == "folder"
                                       else _fashion_mnist)(config, split, labels)
  ids = np.arange(info.num_examples)
  fraction = config.get("label_fraction", 1.0)
  if labels and fraction < 1.0 and split == config.split:
    ids = label_subset(classes, fraction)
    info = dataclasses.replace(info, num_examples=len(ids))
  if every_example:
    ids = ids[process_index::process_count]
  else:
    ids = _equal_shard(ids, process_index, process_count)
  return _RandomAccess(info, kind, table, ids, classes, names)
