"""Few-shot linear classification of features: big_vision's `fewshot_lsr`
(big_vision/evaluators/fewshot_lsr.py), closed-form ridge regression.

For each seed and shot count n: n training examples of each class are drawn
(a seeded permutation of each class's examples, as big_vision draws them),
their features are standardised with the training set's mean and standard
deviation (+1e-5), a constant feature of 100 is appended (a bias that the
ridge penalty barely touches), and the weights solve

    min_W |X W - Y|^2 + l2 |W|^2,   Y = 2 * one_hot(label) - 1 (targets in {-1, 1}),

in closed form: W = (X^T X + l2 I)^-1 X^T Y, or X^T (X X^T + l2 I)^-1 Y when
there are fewer examples than dimensions (the same W). A test image is
predicted as the argmax of its scores.

Where it runs: the training examples (at most n x classes rows) are brought to
every host and solved there in float64, identically on each; the test split's
features stay on their devices, where the scores and the summed hit counts
are computed. Examples are drawn by their id in the split, never by where
they sit, so the draw is the same on one device or many hosts.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mixmim_jax.evaluation import features as features_lib
from mixmim_jax.evaluation.features import Features
from mixmim_jax.training import sharding

BIAS_CONSTANT = 100.0          # big_vision's
STD_FLOOR = 1e-5


def draw(labels: np.ndarray, ids: np.ndarray, num_classes: int, shots: int,
         seed: int) -> list[np.ndarray]:
  """Per class, the positions of its first `shots` examples in a permutation
  seeded by `seed` (big_vision: default_rng(seed).permutation of each class's
  examples in the split's order; here the order is the examples' ids)."""
  rng = np.random.default_rng(seed)
  picked = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    members = members[np.argsort(ids[members], kind="stable")]
    picked.append(rng.permutation(members)[:shots])
  return picked


def solve(x: np.ndarray, y: np.ndarray, num_classes: int, l2_reg: float):
  """(A, b) with scores = features @ A + b: the ridge solution on standardised
  features with the bias feature, folded back to the raw features."""
  x = np.asarray(x, np.float64)
  mean = x.mean(axis=0)
  std = x.std(axis=0) + STD_FLOOR
  z = np.concatenate([(x - mean) / std, np.full((len(x), 1), BIAS_CONSTANT)], axis=1)
  targets = 2.0 * np.eye(num_classes)[y] - 1.0
  n, d = z.shape
  if n >= d:
    w = np.linalg.solve(z.T @ z + l2_reg * np.eye(d), z.T @ targets)
  else:
    w = z.T @ np.linalg.solve(z @ z.T + l2_reg * np.eye(n), targets)
  a = w[:-1] / std[:, None]
  b = BIAS_CONSTANT * w[-1] - (mean / std) @ w[:-1]
  return a.astype(np.float32), b.astype(np.float32)


def _hits(test_f, test_l, test_m, a, b):
  predicted = jnp.argmax(test_f @ a + b, axis=-1)
  return jnp.sum((predicted == test_l) * test_m)


@functools.lru_cache(maxsize=None)
def _hits_fn(mesh: Mesh):
  return jax.jit(_hits, out_shardings=sharding.replicated(mesh))


def fewshot_accuracy(train: Features, test: Features, mesh: Mesh, shots=(1, 5, 10, 25),
                     seeds=(0, 1, 2), l2_reg: float = 2.0 ** 10,
                     num_classes: int | None = None) -> dict[int, list[float]]:
  """{shots: [top-1 on the test split for each seed]}."""
  num_classes = num_classes or max(train.num_classes, test.num_classes)
  if not num_classes:
    raise ValueError("few-shot needs the number of classes; the split reports none.")
  host = features_lib.host_columns(train)
  real = host["mask"] > 0
  labels = np.where(real, host["labels"], -1)
  most = max(shots)
  draws = {s: draw(labels, host["index"], num_classes, most, s) for s in seeds}
  # Every row any seed needs, brought over once.
  wanted = np.unique(np.concatenate([np.concatenate(d) for d in draws.values()]))
  rows = dict(zip(wanted.tolist(), features_lib.take_rows(train, wanted, mesh)))
  rep = sharding.replicated(mesh)
  out: dict[int, list[float]] = {n: [] for n in shots}
  for seed in seeds:
    for n in shots:
      chosen = np.concatenate([members[:n] for members in draws[seed]])
      x = np.stack([rows[int(i)] for i in chosen])
      a, b = solve(x, labels[chosen], num_classes, l2_reg)
      hits = _hits_fn(mesh)(test.features, test.labels, test.mask,
                            jax.device_put(a, rep), jax.device_put(b, rep))
      out[n].append(float(np.asarray(hits.addressable_data(0))) / max(test.count, 1))
  return out
