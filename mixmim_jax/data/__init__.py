"""The input pipelines (tf.data on the host CPU).

  info = data.describe(config.data)   # DatasetInfo(num_examples, source, where, num_classes)
  it = data.pretrain_batches(config.data, local_batch_size=..., seed=...,
                             process_index=..., process_count=..., start_step=...)
  next(it)["image"]                   # uint8 [B, S, S, 3], NHWC (the step normalises)
  it.skipped                          # corrupt images replaced so far

Sources (sources.py): any TFDS dataset, a tfds.ImageFolder-style folder, or the
Fashion-MNIST IDX files. Each process reads its own shard; batches are
contiguous and MixMIM's mixing partners are formed later, by the trainer,
inside each per-device group. Labelled batches and evaluation: labeled.py.
"""

from mixmim_jax.data.config import default_config, labeled_config
from mixmim_jax.data.pipeline import Batches, BrokenDataset, describe, pretrain_batches
from mixmim_jax.data.sources import DatasetInfo

__all__ = ["Batches", "BrokenDataset", "DatasetInfo", "default_config", "describe",
           "labeled_config", "pretrain_batches"]
