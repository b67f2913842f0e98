"""Labelled input for fine-tuning, linear probing and evaluation (tf.data).

  train = labeled.train_batches(cfg, local_batch_size=..., seed=..., process_index=...,
                                process_count=..., start_step=...)
  next(train)   # {"image": uint8 [B, S, S, 3], "label": int32 [B]}
  evaluation = labeled.eval_batches(cfg, local_batch_size=..., process_index=...,
                                    process_count=...)
  for batch in evaluation: ...   # + "mask": float32 [B], 0 on padding, "index": int32 [B]
  evaluation.unreadable          # names of examples that could not be decoded

Train view (mmpretrain's fine-tune pipeline): RandomResizedCrop (scale 0.08-1,
bicubic) + flip, RandAugment, RandomErasing, all on the 0-255 grid, then
normalization; batches come from the same pipeline as pretraining's
(pipeline.py: sharding, resume, stand-ins for unreadable images). Eval view:
the references' test view (see `eval_view`). Every evaluation example is read
exactly once across processes; the last batches are padded to a common count
and masked; an example that cannot be decoded is left out, named and counted.
"""
import math


from mixmim_jax.data import augment, pipeline, randaugment, seeds, sources
from mixmim_jax.data import config as config_lib
from mixmim_jax.data.tf_cpu import tf


def describe(config, split=None) -> sources.DatasetInfo:
  """Size (after `label_fraction` for the training split) and class count."""
  config_lib.validate(config)
  return sources.describe(config, split or config.split, labels=True)


# ----------------------------------------------------------------------- views

def train_view(payload, key, kind, config):
  """RandomResizedCrop + flip + RandAugment + RandomErasing, uint8 [S, S, 3]."""
  crop_key, flip_key, ra_key, erase_key = tf.unstack(
      tf.random.experimental.stateless_split(key, 4, alg=seeds.ALG))
  image = augment.crop_resize_flip(payload, crop_key, flip_key, kind, config)
  if config.randaugment or config.erase_prob > 0:
    image = tf.cast(image, tf.float32)     # they work on uint8 values held as float32
  if config.randaugment:
    fill = tuple(int(round(m)) for m in config.mean)
    image = randaugment.rand_augment(image, ra_key, config.randaugment_ops,
                                     config.randaugment_magnitude, config.randaugment_std,
                                     fill=fill)
  if config.erase_prob > 0:
    image = randaugment.random_erasing(image, erase_key, config.erase_prob,
                                       mean=tuple(config.mean), std=tuple(config.std))
  return augment.to_uint8_rgb(image)


def eval_view(payload, kind, config):
  """The references' test view: the short side resized to `eval_resize`, the
  long side to int(eval_resize x long / short) (truncated, as mmpretrain's
  ResizeEdge and torchvision's Resize do; bicubic, as Pillow), then the
  centre `image_size` crop (offsets rounded half to even, as both), uint8."""
  image = augment.read_payload(payload, kind)
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
  return augment.to_uint8_rgb(tf.ensure_shape(image, [s, s, None]))


# ------------------------------------------------------------------- datasets

def train_batches(config, **kwargs) -> pipeline.Batches:
  """Endless augmented {"image", "label"} batches of this process's shard of the
  training split (after `label_fraction`); keyword arguments as pipeline.batches."""
  return pipeline.batches(config, train_view, labels=True, **kwargs)


class EvalBatches:
  """Iterator over every example of an evaluation split once, in
  `num_batches` batches per process (the same count in every process)."""

  def __init__(self, dataset, num_batches, source):
    self.num_batches = num_batches
    self._it, self._source = iter(dataset), source
    self._seen: set[int] = set()
    self._left = num_batches

  def __iter__(self):
    return self

  def __next__(self):
    if self._left == 0:
      raise StopIteration
    self._left -= 1
    batch = {k: v.numpy() for k, v in next(self._it).items()}
    # The example's id in its split (-1 on padding): a fixed order that does
    # not depend on the batch size or the number of processes.
    batch["index"] = batch["index"].astype("int32")
    self._seen.update(batch["index"][batch["mask"] > 0].tolist())
    return batch

  @property
  def unreadable(self) -> list[str]:
    """Names of this process's examples that could not be decoded (complete once
    every batch has been read)."""
    return [self._source.example_name(int(i)) for i in self._source.local_ids()
            if int(i) not in self._seen]


def eval_batches(config, *, local_batch_size, process_index=0, process_count=1,
                 split=None) -> EvalBatches:
  """Every example of the eval split once: process p reads examples p, p+P, ...
  (or its tfds.even_splits part); all processes yield the same number of
  batches, padded with mask 0. Unreadable examples are left out (mask 0).
  `split=config.split` reads the training split (after `label_fraction`)
  the same way."""
  config_lib.validate(config)
  split = split or config.eval_split
  b = local_batch_size
  source = sources.open_source(config, split, process_index, process_count, seed=0,
                               labels=True, every_example=True)
  total = source.info.num_examples
  num_batches = math.ceil(math.ceil(total / process_count) / b)
  parallel = tf.data.AUTOTUNE if config.num_parallel_calls == -1 else config.num_parallel_calls
  kind = source.kind
  real = source.ordered().map(
      lambda ex: {"image": eval_view(ex["payload"], kind, config), "label": ex["label"],
                  "index": ex["index"], "mask": tf.constant(1.0)},
      num_parallel_calls=parallel, deterministic=True).ignore_errors()
  s = config.image_size
  pad = tf.data.Dataset.from_tensors({
      "image": tf.zeros([s, s, 3], tf.uint8), "label": tf.constant(0, tf.int32),
      "index": tf.constant(-1, tf.int64), "mask": tf.constant(0.0)}).repeat()
  ds = real.concatenate(pad).take(num_batches * b).batch(b).prefetch(2)
  options = tf.data.Options()
  options.deterministic = True
  return EvalBatches(ds.with_options(options), num_batches, source)
