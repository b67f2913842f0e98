"""Training batches for every trainer: shuffled, augmented, sharded, resumable.

Layout of the stream (all stateless, see seeds.py):
  epoch e (from the one `start_step` falls in)
    -> the shard's examples in the order of epoch e (sources.py)
    -> windows of 2B examples every B: batch k of the epoch owns examples
       [kB, kB+B) and may borrow [kB+B, kB+2B) as stand-ins
    -> per window: decode + augment the B owned examples in parallel; only if
       some fail (corrupt / unreadable file) are stand-ins decoded, in order,
       until the batch is full. So a corrupt image never changes the shape of a
       batch nor any other batch, and batch k is a function of (seed, e, k) alone:
       resuming at `start_step` only has to start the epoch's index stream at
       position kB, and the skipped images are never read.
    -> a few windows decoded concurrently, output in order (deterministic).
The trailing examples of an epoch that do not fill a batch are dropped.

This is the one corrupt-image policy of the project: an unreadable image is
replaced by a stand-in, named in the log once and counted; a window where fewer
than B of the 2B candidates decode stops the run with a sentence that says so.
MixMIM pairs image i with image S-1-i inside each per-device group; the trainer
forms those groups from the contiguous batches made here.
"""

import logging

import numpy as np

from mixmim_jax.data import augment
from mixmim_jax.data import config as config_lib
from mixmim_jax.data import seeds
from mixmim_jax.data import sources
from mixmim_jax.data.tf_cpu import tf

logger = logging.getLogger(__name__)


def describe(config, labels: bool = False) -> sources.DatasetInfo:
  """Size and location of the configured training split; raises if it cannot
  be found."""
  config_lib.validate(config)
  return sources.describe(config, config.split, labels)


def _autotune(n):
  return tf.data.AUTOTUNE if n == -1 else n


def _dataset(config, source, view_fn, batch_size, seed, start_step):
  """(batch, meta) pairs from `start_step` on; see the module docstring. A batch
  holds fewer than `batch_size` images only when its window ran out of readable
  candidates (Batches then stops with an error)."""
  b, steps = batch_size, source.num_local // batch_size
  first_epoch, first_step = divmod(start_step, steps)
  parallel = _autotune(config.num_parallel_calls)
  kind = source.kind

  def windows(epoch):
    k0 = tf.where(epoch == first_epoch, tf.constant(first_step, tf.int64), 0)
    stream = source.epoch_stream(seed, epoch, k0 * b, (steps + 1) * b)
    return tf.data.Dataset.zip(
        stream.window(2 * b, shift=b, drop_remainder=True),
        tf.data.Dataset.range(k0, steps),
        tf.data.Dataset.from_tensors(epoch).repeat())

  def view(slot, example, epoch):
    key = seeds.example_key(seed, epoch, example["index"], slot >= b)
    out = {"image": view_fn(example["payload"], key, kind, config), "slot": slot}
    if "label" in example:
      out["label"] = example["label"]
    return out

  def batch(window, k, epoch):
    examples = tf.data.Dataset.zip(window).enumerate()
    with_epoch = lambda slot, ex: view(slot, ex, epoch)  # noqa: E731
    owned = examples.take(b).map(with_epoch, num_parallel_calls=parallel, deterministic=True)
    # Sequential map: lazy, so stand-ins are decoded only when asked for.
    stand_ins = examples.skip(b).map(with_epoch)
    images = owned.concatenate(stand_ins).ignore_errors().take(b).batch(b)
    # A window with no readable image gives an empty batch rather than none, so
    # a broken dataset stops the run instead of searching it forever.
    empty = images.element_spec
    images = images.concatenate(tf.data.Dataset.from_tensors(
        {name: tf.zeros([0] + spec.shape.as_list()[1:], spec.dtype)
         for name, spec in empty.items()})).take(1)
    meta = {"step": epoch * steps + k,
            "candidates": window["index"].batch(2 * b).get_single_element()}
    return tf.data.Dataset.zip(images, tf.data.Dataset.from_tensors(meta))

  ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(windows)
  # Each batch already decodes its images in parallel; a second batch in flight
  # keeps the cores busy while the first waits for its slowest image.
  concurrent = 1 if config.num_parallel_calls == 1 else 2
  ds = ds.interleave(lambda *w: batch(*w), cycle_length=concurrent, block_length=1,
                     num_parallel_calls=concurrent, deterministic=True)
  ds = ds.prefetch(_autotune(config.prefetch))
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


class BrokenDataset(ValueError):
  """Too many images of a batch's window could not be read or decoded."""


class Batches:
  """Iterator of {"image": uint8 [B, S, S, 3]} (and "label": int32 [B] for
  labelled sources). `skipped` counts replaced images, `skipped_files` the
  distinct files among them."""

  def __init__(self, dataset, source, batch_size, start_step):
    self._it = iter(dataset)
    self._source, self._b = source, batch_size
    self._next_step = start_step
    self._skipped = 0
    self._warned = set()

  @property
  def skipped(self) -> int:
    """Corrupt or unreadable images met (and replaced) so far in this process."""
    return self._skipped

  @property
  def skipped_files(self) -> int:
    """How many distinct examples those were."""
    return len(self._warned)

  def __iter__(self):
    return self

  def __next__(self):
    images, meta = next(self._it)
    step = int(meta["step"])
    candidates = meta["candidates"].numpy()
    slots = images.pop("slot").numpy()
    if step != self._next_step or len(slots) < self._b:
      bad = sorted(set(range(len(candidates))) - set(slots.tolist()))[:3]
      names = ", ".join(self._source.example_name(int(candidates[i])) for i in bad)
      raise BrokenDataset(
          f"input batch {self._next_step}: only {len(slots)} of its {2 * self._b} candidate "
          f"images could be read and decoded (e.g. not {names}); the dataset at "
          f"{self._source.info.where} looks broken.")
    self._next_step += 1
    # Candidates are tried in order, so every slot before the last one used
    # that did not make it into the batch failed.
    failed = sorted(set(range(int(slots.max()) + 1)) - set(slots.tolist()))
    if failed:
      self._report(failed, candidates, step)
    return {k: v.numpy() for k, v in images.items()}

  def _report(self, failed, candidates, step):
    self._skipped += len(failed)
    for slot in failed:
      name = self._source.example_name(int(candidates[slot]))
      if name not in self._warned:
        self._warned.add(name)
        logger.warning("Skipping an image that cannot be read or decoded: %s "
                       "(first met in input batch %d).", name, step)


def batches(config, view_fn, *, local_batch_size: int, seed: int, process_index: int = 0,
            process_count: int = 1, start_step: int = 0, labels: bool = False) -> Batches:
  """Endless batches of this process's shard of the training split, each image
  made by `view_fn(payload, key, kind, config)`, from batch `start_step` on.

  The same (config, seed, process_index, process_count) always gives the same
  batches bit for bit; `start_step=k` gives what a fresh iterator gives from its
  k-th batch on.
  """
  config_lib.validate(config)
  if local_batch_size <= 0:
    raise ValueError(f"local_batch_size={local_batch_size}; expected a positive number.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} with process_count={process_count}; "
                     "expected 0 <= process_index < process_count.")
  if start_step < 0:
    raise ValueError(f"start_step={start_step}; expected >= 0.")
  source = sources.open_source(config, config.split, process_index, process_count, seed,
                               labels=labels)
  if source.num_local < local_batch_size:
    raise ValueError(
        f"{source.info.where} gives each of {process_count} processes {source.num_local} "
        f"examples, fewer than local_batch_size={local_batch_size}.")
  dataset = _dataset(config, source, view_fn, local_batch_size, seed, start_step)
  return Batches(dataset, source, local_batch_size, start_step)


def pretrain_batches(config, **kwargs) -> Batches:
  """Pretraining batches ({"image"}): RandomResizedCrop + flip (augment.pretrain_view);
  keyword arguments as `batches`."""
  return batches(config, augment.pretrain_view, **kwargs)
