"""The representation probes: DINO's weighted kNN and big_vision's few-shot
ridge regression equal NumPy references written from their formulas, on one
device, on 8 (data and data x fsdp meshes) and on two processes; the feature
function equals the encoder's pooled output; a pretraining run evaluates at
step 0, every N steps and at the end, with the step's own program untouched.

Cheap by design: fixed NumPy features for the evaluators, one tiny encoder."""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import train_fixtures as tf_
from mixmim_jax.data import labeled, sources
from mixmim_jax.evaluation import features, fewshot, knn, probes
from mixmim_jax.model import api, pixels
from mixmim_jax.tools.plot_curves import read_scalars
from mixmim_jax.trainers import pretrain
from mixmim_jax.training import recipes, sharding
from mixmim_jax.training.plan import make_plan
from mixmim_jax.weights import params_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K, T, SHOTS, SEEDS, L2 = 7, 0.07, (1, 5, 10), (0, 1, 2), 2.0 ** 3
CLASSES, DIM, BATCH = 5, 16, 16


# ---------------------------------------------------------------- references

def knn_reference(train_f, train_l, test_f, test_l, k, temperature, num_classes):
  """DINO's knn_classifier in NumPy (float64): top-k cosine neighbours, votes
  exp(sim / T) per class, classes ranked by votes (ties: lower index)."""
  sims = test_f.astype(np.float64) @ train_f.T.astype(np.float64)
  nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
  weights = np.exp(np.take_along_axis(sims, nearest, 1) / temperature)
  votes = np.zeros((len(test_f), num_classes))
  np.add.at(votes, (np.arange(len(test_f))[:, None], train_l[nearest]), weights)
  ranked = np.argsort(-votes, axis=1, kind="stable")[:, :min(5, num_classes)]
  return dict(top1=np.mean(ranked[:, 0] == test_l),
              top5=np.mean((ranked == test_l[:, None]).any(axis=1)))


def fewshot_reference(train_f, train_l, test_f, test_l, num_classes, shots, seed, l2):
  """big_vision's fewshot_lsr in NumPy: its draw, whitening, bias constant,
  {-1, 1} targets and its eigendecomposition route to the ridge solution."""
  rng = np.random.default_rng(seed)
  picked = np.concatenate([rng.permutation(np.where(train_l == c)[0])[:shots]
                           for c in range(num_classes)])
  x, y = train_f[picked].astype(np.float64), train_l[picked]
  mean, std = x.mean(0, keepdims=True), x.std(0, keepdims=True) + 1e-5
  x = np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=100.0)
  y = 2.0 * np.eye(num_classes)[y] - 1.0
  if len(x) >= x.shape[1]:
    eigs, q = np.linalg.eigh(x.T @ x)
    rhs, lhs = q.T @ (x.T @ y), q
  else:
    eigs, q = np.linalg.eigh(x @ x.T)
    rhs, lhs = q.T @ y, x.T @ q
  w = (lhs / (eigs + l2)) @ rhs
  xt = np.pad((test_f - mean) / std, ((0, 0), (0, 1)), constant_values=100.0)
  return np.mean(np.argmax(xt @ w, axis=1) == test_l)


# ---------------------------------------------------------------- fixed data

def fixed_arrays():
  """150 memory rows (30 a class on average) and 61 queries around the same
  class centres: neither count divides the batch."""
  x, y = tf_.clustered_features(211, CLASSES, DIM, seed=0)
  return x[:150], y[:150], x[150:], y[150:]


def fixed_splits(mesh):
  train_f, train_l, test_f, test_l = fixed_arrays()
  ones = np.ones
  return (features.from_arrays(train_f, train_l, ones(len(train_l)), mesh, BATCH, CLASSES),
          features.from_arrays(test_f, test_l, ones(len(test_l)), mesh, BATCH, CLASSES))


@pytest.fixture(scope="module")
def references():
  train_f, train_l, test_f, test_l = fixed_arrays()
  return dict(
      knn=knn_reference(train_f, train_l, test_f, test_l, K, T, CLASSES),
      fewshot={n: [fewshot_reference(train_f, train_l, test_f, test_l, CLASSES, n, s, L2)
                   for s in SEEDS] for n in SHOTS})


MESHES = {"1 device": (dict(data=1, fsdp=1, model=1), 1),
          "8 devices": (dict(data=-1, fsdp=1, model=1), 8),
          "data 2 x fsdp 4": (dict(data=2, fsdp=4, model=1), 8)}


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_knn_and_fewshot_equal_their_references(mesh_name, references):
  mesh_cfg, n = MESHES[mesh_name]
  mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:n])
  train, test = fixed_splits(mesh)
  assert train.count == 150 and test.count == 61
  got = knn.knn_accuracy(train, test, mesh, k=K, temperature=T)
  ref = references["knn"]
  assert 0.3 < ref["top1"] < 0.95       # the data makes a real test of the votes
  assert got["count"] == 61
  assert got["top1"] == pytest.approx(ref["top1"], abs=1e-9)
  assert got["top5"] == pytest.approx(ref["top5"], abs=1e-9)
  shots = fewshot.fewshot_accuracy(train, test, mesh, SHOTS, SEEDS, L2)
  for n_shots in SHOTS:
    np.testing.assert_allclose(shots[n_shots], references["fewshot"][n_shots], atol=1e-9)


def test_knn_with_fewer_memory_rows_per_device_than_k():
  """37 memory rows on 8 devices: 2-3 real rows each (the rest padding) for k=20."""
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1, model=1))
  train_f, train_l, test_f, test_l = fixed_arrays()
  train = features.from_arrays(train_f[:37], train_l[:37], np.ones(37), mesh, BATCH, CLASSES)
  test = features.from_arrays(test_f, test_l, np.ones(len(test_l)), mesh, BATCH, CLASSES)
  got = knn.knn_accuracy(train, test, mesh, k=20, temperature=T)
  ref = knn_reference(train_f[:37], train_l[:37], test_f, test_l, 20, T, CLASSES)
  assert (got["top1"], got["top5"]) == pytest.approx((ref["top1"], ref["top5"]), abs=1e-9)


def test_two_processes_equal_the_reference(references):
  """Two local processes (4 CPU devices each, gloo), each holding only its own
  rows of the memory and the queries, give the single-host figures."""
  worker = os.path.join(REPO, "tests", "probes_worker.py")
  import conftest  # pylint: disable=import-outside-toplevel
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=conftest.FAST_COMPILE,
             **conftest.SUBPROCESS_CACHE_ENV)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
  procs = [subprocess.Popen([sys.executable, worker, str(pid), "2", port, "4"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for pid in (0, 1)]
  results = []
  for proc in procs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    results.append(json.loads(out.strip().splitlines()[-1]))
  assert results[0] == results[1]
  ref = references["knn"]
  assert results[0]["knn"]["top1"] == pytest.approx(ref["top1"], abs=1e-9)
  assert results[0]["knn"]["top5"] == pytest.approx(ref["top5"], abs=1e-9)
  for n_shots in SHOTS:
    np.testing.assert_allclose(results[0]["fewshot"][str(n_shots)],
                               references["fewshot"][n_shots], atol=1e-9)


def test_fewshot_draw_follows_ids_not_positions():
  """The same examples are drawn whatever order the hosts hold them in."""
  labels = np.array([0, 1, 0, 1, 0, 1, -1, 0])
  ids = np.array([5, 4, 3, 2, 1, 0, -1, 6])
  shuffled = np.array([7, 2, 0, 4, 1, 3, 6, 5])
  a = fewshot.draw(labels, ids, 2, 2, seed=1)
  b = fewshot.draw(labels[shuffled], ids[shuffled], 2, 2, seed=1)
  for c in range(2):
    assert ids[a[c]].tolist() == ids[shuffled][b[c]].tolist()


# ------------------------------------------------------ features and the run

@pytest.fixture(scope="module")
def labeled_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("probe_data"))
  tf_.write_idx_split(directory, "train", 96, seed=0)   # test_train's count: same plan
  tf_.write_idx_split(directory, "test", 27, seed=1)
  return directory


def _probe_config(data_dir, **changes):
  c = tf_.tiny_config(data_dir, **changes)
  for name, make in (("knn", recipes.knn_probe), ("fewshot", recipes.fewshot_probe)):
    c.evals[name] = make(every_steps=2, train_split="train", eval_split="test")
    c.evals[name].update(dict(eval_resize=32, batch_size=16, train_fraction=0.5))
  c.evals.knn.k = 5
  c.evals.fewshot.update(dict(every_steps=0, shots=(1, 2)))
  return c


def test_features_are_the_pooled_normalised_encoder_tokens(labeled_dir):
  """On 8 devices, every test image once, in the stacked layout: ids, labels,
  mask, and features equal to api.encode's mean token on the evaluation view."""
  config = _probe_config(labeled_dir)
  cfg = make_plan(config, 96, 8).model
  mesh = sharding.make_mesh(config.mesh)
  params = api.init_params(cfg, "pretrain", 0)["encoder"]
  data_cfg = probes.probe_data(config.data, config.evals.knn, "test", 1.0)
  fn = features.feature_fn(cfg, mesh, data_cfg.mean, data_cfg.std)
  split = features.compute(fn, params, data_cfg, 16, mesh)
  assert split.count == 27 and split.num_classes == 10 and split.features.shape == (2, 16, 128)
  cols = features.host_columns(split)
  real = cols["mask"] > 0
  assert sorted(cols["index"][real].tolist()) == list(range(27))
  assert (cols["index"][~real] == -1).all()
  views = np.concatenate([b["image"] for b in labeled.eval_batches(data_cfg, local_batch_size=16,
                                                                    split="test")])
  tokens = np.asarray(api.encode(cfg, params, pixels.normalize(views, data_cfg.mean,
                                                               data_cfg.std)))
  pooled = tokens.mean(axis=1)
  pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
  got = np.asarray(jax.device_get(split.features)).reshape(-1, 128)
  np.testing.assert_allclose(got[real], pooled[real], atol=2e-5)
  rows = features.take_rows(split, np.flatnonzero(real)[[3, 0, 20]], mesh)
  np.testing.assert_allclose(rows, pooled[real][[3, 0, 20]], atol=2e-5)


@pytest.mark.parametrize("hosts", [1, 3])
def test_a_probe_reads_its_fraction_of_each_class_once(labeled_dir, hosts):
  """The memory / pool (train_fraction of every class) is read as an
  evaluation split: each of those examples once over the hosts, no other."""
  c = probes.probe_data(_probe_config(labeled_dir).data, _probe_config(labeled_dir).evals.knn,
                        "train", 0.5)
  labels = tf_.write_idx_split(labeled_dir + "_copy", "train", 96, seed=0)[1]
  wanted = sources.label_subset(labels, 0.5)
  seen = []
  for p in range(hosts):
    for batch in labeled.eval_batches(c, local_batch_size=8, process_index=p,
                                      process_count=hosts, split="train"):
      seen += batch["index"][batch["mask"] > 0].tolist()
  assert sorted(seen) == sorted(wanted.tolist()) and len(wanted) < 96


def test_a_run_probes_at_the_start_every_n_steps_and_the_end(labeled_dir, tmp_path, capsys):
  """4 steps, kNN every 2 and few-shot at the start and the end: TensorBoard
  gets eval/knn_top1 at 0, 2, 4 and eval/fewshot_{n}shot at 0 and 4; the log
  states the probes' time beside the run's; the progress line has the clock."""
  config = _probe_config(labeled_dir)
  config.mesh.update(dict(data=4, fsdp=2, model=1))     # test_train's resume test's step
  (tmp_path / "run").mkdir()
  result = pretrain.train(config, str(tmp_path / "run"))
  assert result["final_step"] == 4
  scalars = read_scalars(str(tmp_path / "run"))
  assert sorted(scalars["eval/knn_top1"]) == [0, 2, 4]
  assert sorted(scalars["eval/fewshot_2shot"]) == [0, 4]
  for tag in ("eval/knn_top1", "eval/knn_top5", "eval/fewshot_1shot", "eval/fewshot_2shot_min"):
    assert all(0.0 <= v <= 1.0 for v in scalars[tag].values())
  out = capsys.readouterr().out
  assert "eval at step 0: knn top-1" in out and "eval at step 4: fewshot 1-shot" in out
  assert "eval at step 2: probes" in out and "of the job's" in out
  last = [line for line in out.splitlines() if line.startswith("step       4/4")][-1]
  # The ETA at the last step is the last round of probes, still to come.
  assert "elapsed, ETA" in last and "(evals so far" in last and "/chip)" in last
  assert "chip-h" in last
  # `python -m mixmim_jax.evaluate --knn --fewshot` on the workdir at step 2, and on
  # a params file of the final encoder, says what the run logged.
  again = probes.probe_checkpoint(str(tmp_path / "run"), config, ["knn"], step=2)
  assert again["eval/knn_top1"] == pytest.approx(scalars["eval/knn_top1"][2])   # TB: float32
  path = str(tmp_path / "encoder.msgpack")
  params_file.save_params(path, make_plan(config, 96, 8).model.replace(num_classes=0),
                          "encoder", {"encoder": jax.device_get(result["state"].params["encoder"])})
  again = probes.probe_checkpoint(path, config)
  for tag in ("eval/knn_top1", "eval/knn_top5", "eval/fewshot_1shot", "eval/fewshot_2shot"):
    assert again[tag] == pytest.approx(scalars[tag][4]), tag


# ------------------------------------------------------------------- configs

def _configs():
  paths = sorted(glob.glob(os.path.join(REPO, "configs", "*_pretrain.py")))
  out = []
  for path in paths:
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out.append((os.path.basename(path), module.get_config()))
  return out


def test_every_pretraining_config_has_valid_probes():
  for name, config in _configs():
    probes.validate(config.evals, config.data)
    assert set(config.evals) == {"knn", "fewshot"}, name
    if config.data.source == "tfds":
      for probe in config.evals.values():
        assert (config.data.name, probe.train_split, probe.eval_split) == (
            "imagenet2012", "train[:10%]", "validation"), name
    knn_cfg = config.evals.knn
    assert (knn_cfg.k, knn_cfg.temperature) == (20, 0.07)
    assert tuple(config.evals.fewshot.shots) == (1, 5, 10, 25)


def test_when_probes_run_and_what_is_left():
  c = recipes.knn_probe(every_steps=3, train_split="train", eval_split="test")
  assert [probes.due_steps(c, 10, s) for s in (0, 3, 9, 10)] == [4, 3, 1, 0]   # 3 6 9 10
  c.every_steps = 5
  assert [probes.due_steps(c, 10, s) for s in (0, 5, 10)] == [2, 1, 0]         # 5 10
  c.every_steps = 0
  assert [probes.due_steps(c, 10, s) for s in (0, 10)] == [1, 0]               # 10
  c.every_steps = -1
  assert probes.due_steps(c, 10, 0) == 0
