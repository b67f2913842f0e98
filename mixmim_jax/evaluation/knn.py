"""Weighted k-nearest-neighbour classification of features (DINO's
`knn_classifier`, eval_knn.py): cosine similarity of unit features, the k most
similar memory examples vote for their class with weight exp(sim / T), and a
query is right at top-1 / top-5 when its class is among the 1 / 5 classes with
the most votes (ties: the lower class index first).

The memory never gathers on one host. Each device holds its slice of the
memory (features.Features: batches stacked, each split over the batch axes)
and the queries go through one chunk (an evaluation batch) at a time:

  1. every device gets the whole chunk of queries (an all-gather of the chunk),
  2. scores them against its own memory and keeps its k best (similarity, label),
  3. sends each device the candidates of that device's own queries (all-to-all:
     k per query from every device),
  4. which keeps the k best of those, votes, and counts hits; a sum adds the
     counts of all devices.

The k best of the union of per-device k-best lists are the k best overall, so
this is the single-host classifier exactly (up to equal similarities).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from mixmim_jax.evaluation.features import Features, batch_devices
from mixmim_jax.training import sharding


def _per_device(memory_f, memory_l, memory_m, query_f, query_l, query_m, *, k: int,
                temperature: float, num_classes: int, devices: int):
  axes = sharding.BATCH_AXES
  dim = memory_f.shape[-1]
  memory_f = memory_f.reshape(-1, dim)
  memory_l = memory_l.reshape(-1)
  valid = memory_m.reshape(-1) > 0
  short = max(0, k - memory_f.shape[0])       # a device holding fewer than k rows
  top_n = min(5, num_classes)

  def chunk(totals, query):
    q, labels, mask = query                    # this device's queries of the chunk
    everyone = jax.lax.all_gather(q, axes, tiled=True)           # (devices x b, D)
    sims = jnp.where(valid[None], everyone @ memory_f.T, -jnp.inf)
    sims = jnp.pad(sims, ((0, 0), (0, short)), constant_values=-jnp.inf)
    cand_l = jnp.pad(memory_l, (0, short))
    best, where = jax.lax.top_k(sims, k)
    best_l = cand_l[where]
    # Candidates of device j's queries go to device j: (devices, b, k), axis 0
    # then names the device they came from.
    best = jax.lax.all_to_all(best.reshape(devices, -1, k), axes, 0, 0)
    best_l = jax.lax.all_to_all(best_l.reshape(devices, -1, k), axes, 0, 0)
    best = best.transpose(1, 0, 2).reshape(q.shape[0], devices * k)
    best_l = best_l.transpose(1, 0, 2).reshape(q.shape[0], devices * k)
    sims_k, pick = jax.lax.top_k(best, k)
    labels_k = jnp.take_along_axis(best_l, pick, axis=1)
    weights = jnp.exp(sims_k / temperature)   # exp(-inf) = 0: padding never votes
    votes = jnp.einsum("qkc,qk->qc", jax.nn.one_hot(labels_k, num_classes), weights)
    _, ranked = jax.lax.top_k(votes, top_n)
    hits = ranked == labels[:, None]
    return totals + jnp.stack([(hits[:, 0] * mask).sum(),
                               (hits.any(axis=1) * mask).sum(), mask.sum()]), None

  start = jax.lax.pcast(jnp.zeros(3, jnp.float32), axes, to="varying")   # per-device counts
  totals, _ = jax.lax.scan(chunk, start, (query_f, query_l, query_m))
  return jax.lax.psum(totals, axes)


@functools.lru_cache(maxsize=None)      # one program per mesh and setting, not per call
def counts_fn(mesh: Mesh, k: int, temperature: float, num_classes: int):
  """jit(memory features, labels, mask, query features, labels, mask) ->
  [top-1 hits, top-5 hits, queries], the same on every device."""
  batch = sharding.BATCH_AXES
  stacked3, stacked2 = P(None, batch, None), P(None, batch)

  def fn(*args):
    return _per_device(*args, k=k, temperature=temperature, num_classes=num_classes,
                       devices=batch_devices(mesh))
  return jax.jit(jax.shard_map(
      fn, mesh=mesh, in_specs=(stacked3, stacked2, stacked2) * 2, out_specs=P()))


def knn_accuracy(memory: Features, queries: Features, mesh: Mesh, k: int = 20,
                 temperature: float = 0.07, num_classes: int | None = None) -> dict:
  """{"top1", "top5"} (fractions) and "count" (queries scored)."""
  num_classes = num_classes or max(memory.num_classes, queries.num_classes)
  if not num_classes:
    raise ValueError("kNN needs the number of classes; the memory's split reports none.")
  if memory.count < k:
    raise ValueError(f"kNN with k={k} needs at least {k} memory examples; the memory "
                     f"holds {memory.count}.")
  fn = counts_fn(mesh, k, float(temperature), num_classes)
  top1, top5, n = (float(x) for x in jnp.asarray(fn(
      memory.features, memory.labels, memory.mask,
      queries.features, queries.labels, queries.mask).addressable_data(0)))
  return dict(top1=top1 / max(n, 1.0), top5=top5 / max(n, 1.0), count=int(round(n)))
