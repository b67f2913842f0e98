"""Evaluation counts every image exactly once, across 8 fake devices and across
simulated hosts, and its accuracies equal a direct NumPy computation."""
from __future__ import annotations

import gzip
import os
import struct

import jax
import numpy as np
import pytest

from mixmim_jax.data import labeled
from mixmim_jax.data.tf_cpu import tf
from mixmim_jax.evaluation.accuracy import classifier_eval_fn, evaluate, evaluate_checkpoint
from mixmim_jax.model import api, pixels
from mixmim_jax.model.arch import model_config
from mixmim_jax.training import sharding
from mixmim_jax.training.recipes import finetune_defaults
from mixmim_jax.weights import params_file

N = 37                       # not a multiple of the global batch (16) nor of 8 devices
CFG = model_config(dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)),
                   window_sizes=(4, 4, 2, 1), img_size=32, patch_size=2, num_classes=10)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("fmnist"))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (N, 28, 28), dtype=np.uint8)      # all distinct
  labels = rng.integers(0, 10, N).astype(np.uint8)
  with gzip.open(os.path.join(d, "t10k-images-idx3-ubyte.gz"), "wb") as f:
    f.write(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", N, 28, 28) + images.tobytes())
  with gzip.open(os.path.join(d, "t10k-labels-idx1-ubyte.gz"), "wb") as f:
    f.write(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", N) + labels.tobytes())
  return d, images, labels


def _config(directory):
  c = finetune_defaults()
  c.data.update(source="fashion_mnist", fashion_mnist_dir=directory, eval_split="test",
                image_size=32, eval_resize=32, num_parallel_calls=1)
  c.eval_batch_size = 16
  return c


def test_every_image_scored_once_and_accuracy_matches_numpy(data_dir):
  directory, images, labels = data_dir
  c = _config(directory)
  mesh = sharding.make_mesh(c.mesh)
  assert mesh.devices.size == 8
  params = api.init_params(CFG, "classifier", 0)
  # Make the random model's predictions spread over classes (so top-1 is not 0 or 1).
  params["head"]["bias"] = params["head"]["bias"] + np.linspace(-0.02, 0.02, 10)
  result = evaluate(classifier_eval_fn(CFG, mesh, c.data), params, {}, c.data, c.eval_batch_size, mesh)
  assert result["count"] == N

  # Direct: the same eval view mapped over the raw images, one unpadded forward.
  views = np.stack([labeled.eval_view(tf.constant(im[..., None]), "pixels", c.data).numpy()
                    for im in images])
  logits = np.asarray(api.classify(CFG, params, pixels.normalize(views, c.data.mean, c.data.std)))
  top5 = np.argsort(-logits, axis=1)[:, :5]
  assert result["top1"] == pytest.approx(np.mean(top5[:, 0] == labels), abs=1e-9)
  assert result["top5"] == pytest.approx(np.mean((top5 == labels[:, None]).any(1)), abs=1e-9)
  nll = -jax.nn.log_softmax(logits)[np.arange(N), labels]
  assert result["loss"] == pytest.approx(float(np.mean(nll)), rel=1e-5)


@pytest.mark.parametrize("hosts", [1, 3, 5])
def test_hosts_read_disjoint_shards_with_equal_batch_counts(data_dir, hosts):
  directory, images, labels = data_dir
  c = _config(directory)
  seen, counts = [], set()
  for p in range(hosts):
    it = labeled.eval_batches(c.data, local_batch_size=16 // hosts or 1,
                              process_index=p, process_count=hosts)
    counts.add(it.num_batches)
    for _ in range(it.num_batches):
      batch = next(it)
      keep = batch["mask"] > 0
      seen += [(int(y), x.tobytes()) for y, x in zip(batch["label"][keep], batch["image"][keep])]
    with pytest.raises(StopIteration):
      next(it)
  assert len(counts) == 1                   # every host runs the same number of steps
  assert len(seen) == N and len(set(seen)) == N
  assert sorted(y for y, _ in seen) == sorted(labels.tolist())


def test_evaluate_checkpoint_reads_a_params_file(data_dir, tmp_path):
  directory, _, _ = data_dir
  params = api.init_params(CFG, "classifier", 1)
  path = str(tmp_path / "model.msgpack")
  params_file.save_params(path, CFG, "classifier", params)
  result = evaluate_checkpoint(path, _config(directory))
  assert result["count"] == N and 0.0 <= result["top1"] <= result["top5"] <= 1.0
  params_file.save_params(path, CFG.replace(num_classes=0), "encoder",
                        {"encoder": params["encoder"]})
  with pytest.raises(ValueError, match="without a classifier head"):
    evaluate_checkpoint(path, _config(directory))


def test_classify_refuses_uint8_pixels():
  params = api.init_params(CFG, "classifier", 0)
  images = np.zeros((1, CFG.img_size, CFG.img_size, 3), np.uint8)
  with pytest.raises(TypeError, match=r"images are uint8; expected normalised float.*pixels\.normalize"):
    api.classify(CFG, params, images)
