"""Where examples come from: one process's shard, as a stream in epoch order.

Each source holds `num_local` examples (the same count in every process, so all
processes run the same number of steps per epoch) and yields, for an epoch, the
elements {"index": global int64 id, "payload": image data} at epoch positions
[start, stop); positions past the end wrap around to the start of the same epoch
order (the pipeline reads a little past the end for stand-in images).

- IDX (Fashion-MNIST) and folder sources allow random access: each epoch is a
  stateless permutation of the whole shard, and `start` costs nothing.
- tfds records are read in order: a fixed file order, then a buffer shuffle seeded
  by (seed, epoch); `start` skips records before any image is decoded.
"""

import dataclasses
import os

import numpy as np

from mixmim_jax.data._tf import tf
from mixmim_jax.data import fashion_mnist
from mixmim_jax.data import seeds

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_examples: int  # in the whole split, all processes together
  source: str
  where: str


def _shard(count, process_index, process_count):
  """Global ids of this process: every process_count-th, all shards equal size."""
  per_process = count // process_count
  return np.arange(process_index, per_process * process_count, process_count, dtype=np.int64)


class _RandomAccess:
  """A shard held as a table: pixel arrays, file paths or encoded bytes."""

  def __init__(self, info, kind, table, ids, names=None):
    self.info, self.kind, self.num_local = info, kind, len(ids)
    self._table = tf.constant(table)
    self._ids = tf.constant(ids)
    self._names = names

  def epoch_stream(self, seed, epoch, start, stop):
    n = self.num_local
    order = tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seeds.permutation_key(seed, epoch), alg=seeds.ALG)

    def lookup(position):
      i = order[position % n]
      return {"index": tf.gather(self._ids, i), "payload": tf.gather(self._table, i)}

    return tf.data.Dataset.range(start, stop).map(lookup)

  def example_name(self, index):
    if self._names is None:
      return f"{self.info.source} example {index}"
    return self._names[index]


def _folder_files(config):
  root = os.path.join(config.folder, config.split)
  if not config.folder or not tf.io.gfile.isdir(root):
    raise FileNotFoundError(
        f"folder source: no directory {root!r} (data.folder={config.folder!r}, "
        f"data.split={config.split!r}); expected the layout folder/split/label/*.jpg.")
  files = []
  for label in sorted(tf.io.gfile.listdir(root)):
    label_dir = os.path.join(root, label.rstrip("/"))
    if not tf.io.gfile.isdir(label_dir):
      continue
    files += [os.path.join(label_dir, f) for f in sorted(tf.io.gfile.listdir(label_dir))
              if f.lower().endswith(IMAGE_EXTENSIONS)]
  if not files:
    raise FileNotFoundError(
        f"folder source: no {'/'.join(IMAGE_EXTENSIONS)} files in {root!r}/<label>/.")
  return root, files


def _read_or_empty(path):
  # An unreadable file becomes empty bytes, which fail to decode later and are
  # skipped and counted like any corrupt image.
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  except (OSError, tf.errors.OpError):
    return b""


def _describe_folder(config):
  root, files = _folder_files(config)
  return DatasetInfo(len(files), "folder", root), files


def _open_folder(config, process_index, process_count):
  info, files = _describe_folder(config)
  ids = _shard(len(files), process_index, process_count)
  if config.cache:
    table, kind = [_read_or_empty(files[i]) for i in ids], "encoded"
  else:
    table, kind = [files[i] for i in ids], "path"
  return _RandomAccess(info, kind, table, ids, names=files)


def _describe_fashion_mnist(config):
  path = fashion_mnist.images_path(config.fashion_mnist_dir, config.split)
  return DatasetInfo(fashion_mnist.read_idx_shape(path)[0], "fashion_mnist", path)


def _open_fashion_mnist(config, process_index, process_count):
  info = _describe_fashion_mnist(config)
  ids = _shard(info.num_examples, process_index, process_count)
  # 60k x 28 x 28 bytes: always in memory, so `cache` has nothing to add here.
  images = fashion_mnist.load_images(config.fashion_mnist_dir, config.split)
  return _RandomAccess(info, "pixels", images[ids][..., None], ids)


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

  # The image stays encoded: decoding (and skipping corrupt images) is ours.
  decoders = {config.image_key: tfds.decode.SkipDecoding()}
  read_config = tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=False)
  try:
    return builder.as_dataset(split=split, shuffle_files=shuffle_files, decoders=decoders,
                              read_config=read_config)
  except AssertionError as e:  # how tfds reports data that was never prepared
    raise FileNotFoundError(
        f"tfds source: {config.name!r} split {config.split!r} is not prepared under "
        f"data_dir {builder.data_dir!r} (data.data_dir={config.data_dir!r}).") from e


def _describe_tfds(config):
  builder = _tfds_builder(config)
  try:
    count = builder.info.splits[config.split].num_examples
  except KeyError:
    # No split metadata: unprepared data (raises with the path) or mocked data in
    # tests, which has records but no counts.
    ds = _tfds_dataset(builder, config, config.split, False, None)
    count = int(ds.reduce(np.int64(0), lambda n, _: n + 1))
  return DatasetInfo(count, "tfds", f"{config.name}/{config.split} in {builder.data_dir}"), builder


class _Tfds:
  """One process's tfds.even_splits part, read sequentially."""

  kind = "encoded"

  def __init__(self, config, process_index, process_count, seed):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    self.info, builder = _describe_tfds(config)
    self.num_local = self.info.num_examples // process_count
    split = tfds.even_splits(config.split, process_count, drop_remainder=True)[process_index]
    # A fixed file order (one seeded shuffle, the same every epoch) keeps the
    # enumeration below a stable example id across epochs and restarts.
    records = _tfds_dataset(builder, config, split, True, seed)
    key = config.image_key
    self._records = records.enumerate(process_index * self.num_local).map(
        lambda i, ex: {"index": i, "payload": ex[key]})
    if config.cache:
      self._records = self._records.cache()
    self._buffer = max(1, min(config.shuffle_buffer, self.num_local))
    self._where = self.info.where

  def epoch_stream(self, seed, epoch, start, stop):
    order = self._records.shuffle(self._buffer, seed=seeds.shuffle_seed(seed, epoch),
                                  reshuffle_each_iteration=False)
    # repeat(2): positions past the end wrap to this epoch's order again.
    return order.repeat(2).skip(start).take(stop - start)

  def example_name(self, index):
    return f"{self._where} example #{index}"


def describe(config) -> DatasetInfo:
  """Size and location of the configured split; raises if it cannot be found."""
  if config.source == "tfds":
    return _describe_tfds(config)[0]
  if config.source == "folder":
    return _describe_folder(config)[0]
  return _describe_fashion_mnist(config)


def open_source(config, process_index, process_count, seed):
  """This process's shard of the configured dataset."""
  if config.source == "tfds":
    return _Tfds(config, process_index, process_count, seed)
  if config.source == "folder":
    return _open_folder(config, process_index, process_count)
  return _open_fashion_mnist(config, process_index, process_count)
