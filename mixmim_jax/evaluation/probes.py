"""The representation probes of a pretraining run (`config.evals`): is the
encoder learning features, while it trains?

Each entry of config.evals is one evaluator (recipes.knn_probe,
recipes.fewshot_probe): its type ("knn" or "fewshot"), when it runs
(`every_steps`: N > 0 every N steps, 0 only at the start and the end, -1
never; a run also evaluates at step 0 and after its last step), the labelled
splits it reads (`train_split` and `eval_split`, each with a fraction of every
class: `train_fraction`, `eval_fraction`), the evaluation view (`eval_resize`,
then the centre crop of the model's size) and its global `batch_size`.
Evaluators that read the same split in the same round share its features.

  probes = Probes(config.evals, config.data, model_cfg, mesh, encoder_shardings)
  for name in probes.due(step, total_steps): ...
  scalars = probes.run(step, encoder_params, names)   # {"eval/knn_top1": ..., ...}
"""
from __future__ import annotations

import copy
import logging
import time

import jax

from mixmim_jax.data import config as data_config_lib
from mixmim_jax.evaluation import features, fewshot, knn
from mixmim_jax.model.arch import ModelConfig
from mixmim_jax.training import sharding
from mixmim_jax.training.progress import duration
from mixmim_jax.weights import sources as weight_sources

logger = logging.getLogger(__name__)

TYPES = ("knn", "fewshot")
# The data settings a probe takes from the run's own data config.
_SHARED_DATA_KEYS = ("source", "name", "data_dir", "image_key", "folder", "fashion_mnist_dir",
                     "image_size", "interpolation", "mean", "std", "num_parallel_calls",
                     "cache", "label_key")


def probe_data(data_config, entry, split: str, fraction: float):
  """The labelled data config that reads `split` (`fraction` of each class)
  for one probe: the run's source, pixels and normalisation, the probe's
  evaluation view."""
  c = data_config_lib.labeled_config()
  for key in _SHARED_DATA_KEYS:
    if key in data_config:
      c[key] = copy.deepcopy(data_config[key])
  c.split = c.eval_split = split
  c.label_fraction = float(fraction)
  c.eval_resize = int(entry.eval_resize)
  return c


def validate(evals, data_config) -> None:
  """Every entry is complete and can work; the error names the key."""
  for name, entry in evals.items():
    where = f"evals.{name}"
    if entry.get("type") not in TYPES:
      raise ValueError(f"{where}.type={entry.get('type')!r}; expected one of {TYPES}.")
    if int(entry.every_steps) < -1:
      raise ValueError(f"{where}.every_steps={entry.every_steps}; expected N > 0 (every N "
                       "steps), 0 (at the start and the end only) or -1 (never).")
    for key in ("train_fraction", "eval_fraction"):
      fraction = float(entry[key])
      if not 0 < fraction <= 1:
        raise ValueError(f"{where}.{key}={fraction}; expected 0 < f <= 1.")
      if fraction < 1 and data_config.source == "tfds":
        raise ValueError(f"{where}.{key}={fraction} needs a source read by index (folder, "
                         "fashion_mnist); with tfds slice the split instead, e.g. "
                         "train_split='train[:10%]'.")
    if entry.type == "knn" and (int(entry.k) < 1 or float(entry.temperature) <= 0):
      raise ValueError(f"{where}: k={entry.k}, temperature={entry.temperature}; expected "
                       "k >= 1 and temperature > 0.")
    if entry.type == "fewshot" and (not entry.shots or min(entry.shots) < 1
                                    or float(entry.l2_reg) <= 0 or not entry.seeds):
      raise ValueError(f"{where}: shots={tuple(entry.shots)}, seeds={tuple(entry.seeds)}, "
                       f"l2_reg={entry.l2_reg}; expected shots >= 1, a seed, l2_reg > 0.")


def due_steps(entry, total_steps: int, after: int) -> int:
  """How many of this entry's evaluations come after step `after`."""
  every = int(entry.every_steps)
  if every < 0:
    return 0
  count = 0 if every == 0 else (total_steps // every - after // every)
  last_counted = every > 0 and total_steps % every == 0
  return count + (after < total_steps and not last_counted)


class Probes:
  """The evaluators of config.evals around one encoder on one mesh."""

  def __init__(self, evals, data_config, model_cfg: ModelConfig, mesh,
               params_shardings=None):
    validate(evals, data_config)
    if data_config.image_size != model_cfg.img_size:
      raise ValueError(f"the probes read {data_config.image_size}px images but the model is "
                       f"built for {model_cfg.img_size}px.")
    self._evals = {name: evals[name] for name in evals.keys()}
    self._data, self._mesh = data_config, mesh
    self._fn = features.feature_fn(model_cfg, mesh, data_config.mean, data_config.std,
                                   params_shardings)
    self.last_seconds: dict[str, float] = {}
    self.total_seconds = 0.0

  @property
  def names(self) -> list[str]:
    return list(self._evals)

  def due(self, step: int, total_steps: int) -> list[str]:
    """The evaluators to run after `step` steps (0: before the first)."""
    return [name for name, e in self._evals.items() if int(e.every_steps) >= 0 and (
        step in (0, total_steps) or (int(e.every_steps) > 0 and step % int(e.every_steps) == 0))]

  def seconds_left(self, step: int, total_steps: int) -> float:
    """The evaluations still to come after `step`, at their last cost."""
    return sum(self.last_seconds.get(name, 0.0) * due_steps(e, total_steps, step)
               for name, e in self._evals.items())

  def run(self, step: int, encoder_params, names=None, label: str = "") -> dict[str, float]:
    """Runs the named evaluators (all by default) on `encoder_params`;
    returns their scalars under eval/..., and says them on the console
    (as of `label`, default "step N")."""
    label = label or f"step {step}"
    cache: dict[tuple, features.Features] = {}
    scalars: dict[str, float] = {}
    started = time.perf_counter()
    for name in (self.names if names is None else names):
      t0 = time.perf_counter()
      lines = self._run_one(name, self._evals[name], encoder_params, cache, scalars)
      seconds = time.perf_counter() - t0
      self.last_seconds[name] = seconds
      scalars[f"eval/{name}_seconds"] = seconds
      _say(f"eval at {label}: {name} {lines} ({duration(seconds)})")
    spent = time.perf_counter() - started
    self.total_seconds += spent
    return scalars

  def _features(self, entry, split: str, fraction: float, encoder_params,
                cache) -> features.Features:
    cfg = probe_data(self._data, entry, split, fraction)
    key = (split, float(fraction), cfg.eval_resize, int(entry.batch_size))
    if key not in cache:
      cache[key] = features.compute(self._fn, encoder_params, cfg, int(entry.batch_size),
                                    self._mesh)
      if cache[key].unreadable:
        logger.warning("%d images of %s could not be decoded and are left out (%s)",
                       len(cache[key].unreadable), split, ", ".join(cache[key].unreadable[:3]))
    return cache[key]

  def _run_one(self, name, entry, encoder_params, cache, scalars) -> str:
    train = self._features(entry, entry.train_split, entry.train_fraction, encoder_params,
                           cache)
    test = self._features(entry, entry.eval_split, entry.eval_fraction, encoder_params, cache)
    if entry.type == "knn":
      result = knn.knn_accuracy(train, test, self._mesh, int(entry.k),
                                float(entry.temperature))
      scalars[f"eval/{name}_top1"] = result["top1"]
      scalars[f"eval/{name}_top5"] = result["top5"]
      return (f"top-1 {100 * result['top1']:.2f} %, top-5 {100 * result['top5']:.2f} % "
              f"({entry.k}-NN of {result['count']} {entry.eval_split} images among "
              f"{train.count} {entry.train_split})")
    result = fewshot.fewshot_accuracy(train, test, self._mesh, tuple(entry.shots),
                                      tuple(entry.seeds), float(entry.l2_reg))
    parts = []
    for n, accs in result.items():
      mean = sum(accs) / len(accs)
      scalars[f"eval/{name}_{n}shot"] = mean
      scalars[f"eval/{name}_{n}shot_min"] = min(accs)
      scalars[f"eval/{name}_{n}shot_max"] = max(accs)
      parts.append(f"{n}-shot {100 * mean:.2f} % ({100 * min(accs):.2f}-{100 * max(accs):.2f})")
    return (", ".join(parts) + f" (mean and range of {len(entry.seeds)} seeds on "
            f"{test.count} {entry.eval_split} images)")


def probe_checkpoint(path: str, config, names=None, step: int = -1) -> dict[str, float]:
  """Runs the probes of `config.evals` (the named ones, default all) once on
  the encoder of any source: a published model's name, a workdir (its latest
  checkpoint, or `step`), a .pth or a params file."""
  if "evals" not in config:
    raise ValueError("the config has no evals section (the kNN and few-shot probes); use a "
                     "pretraining config, e.g. configs/fashion_mnist_pretrain.py.")
  unknown = sorted(set(names or ()) - set(config.evals.keys()))
  if unknown:
    raise ValueError(f"the config's evals have no {unknown[0]!r}; they are "
                     f"{sorted(config.evals.keys())}.")
  loaded, where = weight_sources.read(path, step)
  mesh = sharding.make_mesh(config.mesh)
  probes = Probes(config.evals, config.data, loaded.config, mesh)
  params = jax.device_put(loaded.params["encoder"], sharding.replicated(mesh))
  logger.info("probing the encoder of %s", where)
  return probes.run(step, params, names, label=where)


def _say(line: str) -> None:
  if jax.process_index() == 0:
    print(line, flush=True)
