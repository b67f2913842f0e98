"""The representation the probes (knn.py, fewshot.py) score: the encoder's
final-stage tokens after its last norm, mean-pooled (the linear probe's
features), L2-normalised.

  fn = feature_fn(model_cfg, mesh, mean, std)   # jitted once, apart from the step
  split = compute(fn, encoder_params, data_config, batch_size, mesh)
  split.features    # (batches, global batch, D), each batch split over the batch axes

Every process reads its own examples (labeled.eval_batches: each example
once, padded and masked), and each batch's features stay on the devices that
computed them: a split is its batches stacked along a new leading axis, which
moves no data. What leaves the devices is small: labels and ids (few-shot
selection), a few rows (the few-shot training set) and summed counts.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mixmim_jax.data import labeled
from mixmim_jax.model import pixels
from mixmim_jax.model.arch import ModelConfig
from mixmim_jax.model.encoder import MixMIMEncoder
from mixmim_jax.training import sharding


@dataclasses.dataclass
class Features:
  """A split's features where they were computed, with labels, example ids
  (-1 on padding) and the mask (0 on padding and undecodable images)."""
  features: jax.Array        # float32 (batches, B, D), unit rows, split on axis 1
  labels: jax.Array          # int32 (batches, B)
  index: jax.Array           # int32 (batches, B)
  mask: jax.Array            # float32 (batches, B)
  count: int                 # real examples
  num_classes: int
  unreadable: list[str] = dataclasses.field(default_factory=list)


def stacked_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Batches stacked on axis 0, each split over the batch axes on axis 1."""
  return NamedSharding(mesh, P(None, sharding.BATCH_AXES, *([None] * (ndim - 2))))


def batch_devices(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES]))


def pooled(cfg: ModelConfig, encoder_params, images, mean, std) -> jax.Array:
  """(B, D) float32 unit vectors: mean of the final-norm tokens, L2-normalised
  (with torch's F.normalize floor, as DINO's kNN)."""
  tokens = MixMIMEncoder(cfg).apply({"params": encoder_params},
                                    pixels.normalize(images, mean, std))
  x = tokens.mean(axis=1).astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def feature_fn(cfg: ModelConfig, mesh: Mesh, mean, std, params_shardings=None):
  """jit(encoder params, uint8 images (B, S, S, 3)) -> (B, D) features, split
  like the batch. Params in `params_shardings` (the train state's encoder
  shardings, so an FSDP run needs no copy), else replicated. A program of its
  own: the train step's compiled program is not touched."""
  batch = sharding.batch_sharding(mesh)
  params_sh = sharding.replicated(mesh) if params_shardings is None else params_shardings
  fn = functools.partial(pooled, cfg, mean=tuple(mean), std=tuple(std))
  return jax.jit(sharding.under_activation_rules(fn, mesh),
                 in_shardings=(params_sh, batch), out_shardings=batch)


@functools.lru_cache(maxsize=None)      # jit's cache then holds one program per shape
def _stacker(mesh: Mesh, ndim: int):
  return jax.jit(jnp.stack, out_shardings=stacked_sharding(mesh, ndim))


def _stack(arrays: list[jax.Array], mesh: Mesh) -> jax.Array:
  return _stacker(mesh, arrays[0].ndim + 1)(arrays)


def compute(fn, encoder_params, data_config, batch_size: int, mesh: Mesh,
            split: str | None = None) -> Features:
  """Features of every example of `split` (default data_config.split, after its
  label_fraction) once, `batch_size` images per global batch."""
  if batch_size % (batch_devices(mesh) * jax.process_count()):
    raise ValueError(f"probe batch_size={batch_size} does not split over the "
                     f"{batch_devices(mesh)} batch devices of {jax.process_count()} "
                     "process(es); use a multiple of their product.")
  split = split or data_config.split
  info = labeled.describe(data_config, split)
  batches = labeled.eval_batches(
      data_config, local_batch_size=batch_size // jax.process_count(),
      process_index=jax.process_index(), process_count=jax.process_count(), split=split)
  spec = sharding.batch_sharding(mesh)
  columns: dict[str, list[jax.Array]] = {"features": [], "label": [], "index": [], "mask": []}
  for batch in batches:
    columns["features"].append(fn(encoder_params,
                                  jax.make_array_from_process_local_data(spec, batch["image"])))
    for key in ("label", "index", "mask"):
      columns[key].append(jax.make_array_from_process_local_data(spec, batch[key]))
  stacked = {k: _stack(v, mesh) for k, v in columns.items()}
  count = int(round(float(replicated_value(jnp.sum, mesh, stacked["mask"]))))
  return Features(stacked["features"], stacked["label"], stacked["index"], stacked["mask"],
                  count, info.num_classes, batches.unreadable)


@functools.lru_cache(maxsize=None)
def _on_every_host(fn, mesh: Mesh):
  return jax.jit(fn, out_shardings=sharding.replicated(mesh))


def replicated_value(fn, mesh: Mesh, *args) -> np.ndarray:
  """fn(*args) computed where the arrays are, its (small) result on every host."""
  return np.asarray(_on_every_host(fn, mesh)(*args).addressable_data(0))


def from_arrays(features, labels, mask, mesh: Mesh, batch_size: int, num_classes: int,
                index=None) -> Features:
  """Features of this process's rows given as NumPy arrays (tests, tools):
  rows i, i+P, ... of a split belong to process i, as eval_batches reads
  them, padded to whole batches with mask 0. `features` are used as given."""
  p, count = jax.process_count(), len(features)
  index = np.arange(count) if index is None else np.asarray(index)
  local = batch_size // p
  mine = np.arange(jax.process_index(), count, p)
  most = -(-count // p)                        # process 0 holds the most rows
  num_batches = max(1, -(-most // local))
  rows = num_batches * local

  def padded(a, fill):
    a = np.asarray(a)[mine]
    out = np.full((rows,) + a.shape[1:], fill, a.dtype)
    out[:len(a)] = a
    return out.reshape((num_batches, local) + a.shape[1:])

  spec = sharding.batch_sharding(mesh)
  local_cols = dict(features=padded(np.asarray(features, np.float32), 0.0),
                    label=padded(np.asarray(labels, np.int32), 0),
                    index=padded(index.astype(np.int32), -1),
                    mask=padded(np.asarray(mask, np.float32), 0.0))
  stacked = {k: _stack([jax.make_array_from_process_local_data(spec, v[b])
                        for b in range(num_batches)], mesh)
             for k, v in local_cols.items()}
  return Features(stacked["features"], stacked["label"], stacked["index"], stacked["mask"],
                  int(np.asarray(mask).sum()), num_classes)


def host_columns(split: Features) -> dict[str, np.ndarray]:
  """Labels, ids and mask of the whole split on every host, flat in the
  stacked layout (small: a few bytes per example; the features stay put)."""
  return {k: np.asarray(multihost_utils.process_allgather(getattr(split, k), tiled=True)
                        ).reshape(-1)
          for k in ("labels", "index", "mask")}


def take_rows(split: Features, positions: np.ndarray, mesh: Mesh) -> np.ndarray:
  """The feature rows at flat `positions` of the stacked layout, on every host:
  each device contributes the rows it holds and a sum collects them."""
  global_batch = split.features.shape[1]
  per_device = global_batch // batch_devices(mesh)
  positions = np.asarray(positions, np.int64)
  batch_of, row = positions // global_batch, positions % global_batch
  device_of, local_row = row // per_device, row % per_device

  rep = sharding.replicated(mesh)
  args = [jax.device_put(np.asarray(a, np.int32), rep) for a in (batch_of, device_of, local_row)]
  return np.asarray(_row_taker(mesh)(split.features, *args).addressable_data(0))


def _gather_rows(local, batch_of, device_of, row):
  mine = (device_of == jax.lax.axis_index(sharding.BATCH_AXES))[:, None]
  return jax.lax.psum(jnp.where(mine, local[batch_of, row], 0.0), sharding.BATCH_AXES)


@functools.lru_cache(maxsize=None)
def _row_taker(mesh: Mesh):
  return jax.jit(jax.shard_map(
      _gather_rows, mesh=mesh, in_specs=(P(None, sharding.BATCH_AXES, None), P(), P(), P()),
      out_specs=P()))
