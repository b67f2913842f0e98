"""Top-1 / top-5 accuracy and mean loss over an evaluation split, every image
counted once: each process reads its own examples; the last batches are padded
to a common count and masked, so N images give exactly N scores however N
divides the batch, the devices and the hosts. An image that cannot be decoded
is not scored, and the result names it."""
from __future__ import annotations

import functools
import logging

import jax

from mixmim_jax.data import labeled
from mixmim_jax.model.arch import ModelConfig
from mixmim_jax.training import sharding
from mixmim_jax.training.finetune_step import eval_step
from mixmim_jax.weights import sources

logger = logging.getLogger(__name__)


def evaluate(eval_fn, params, batch_stats, data_config, eval_batch_size: int, mesh) -> dict:
  """Runs `eval_fn(params, batch_stats, images, labels, mask) -> sums` over the
  whole eval split; returns count, top1, top5 (fractions), mean loss and the
  names of this process's images that could not be decoded."""
  batches = labeled.eval_batches(
      data_config, local_batch_size=eval_batch_size // jax.process_count(),
      process_index=jax.process_index(), process_count=jax.process_count())
  spec = sharding.batch_sharding(mesh)
  totals = dict(count=0.0, top1=0.0, top5=0.0, loss=0.0)
  for batch in batches:
    arrays = [jax.make_array_from_process_local_data(spec, batch[k])
              for k in ("image", "label", "mask")]
    sums = jax.device_get(eval_fn(params, batch_stats, *arrays))
    for k in totals:
      totals[k] += float(sums[k])
  n = totals["count"]
  return dict(count=int(round(n)), top1=totals["top1"] / max(n, 1),
              top5=totals["top5"] / max(n, 1), loss=totals["loss"] / max(n, 1),
              unreadable=batches.unreadable)


def summary(result: dict) -> str:
  line = (f"{result['count']} images, top-1 {100 * result['top1']:.2f} %, "
          f"top-5 {100 * result['top5']:.2f} %, loss {result['loss']:.4f}")
  if result["unreadable"]:
    shown = ", ".join(result["unreadable"][:3])
    line += f"; {len(result['unreadable'])} unreadable images not scored ({shown})"
  return line


def classifier_eval_fn(cfg: ModelConfig, mesh, data_config, params_shapes=None):
  """A jitted eval step for a plain classifier with replicated (or given) shardings,
  normalising with data_config's mean and std."""
  batch = sharding.batch_sharding(mesh)
  params_sh = (sharding.replicated(mesh) if params_shapes is None
               else sharding.tree_shardings(params_shapes, mesh))
  return jax.jit(functools.partial(eval_step, cfg=cfg, kind="classifier",
                                   mean=tuple(data_config.mean), std=tuple(data_config.std)),
                 in_shardings=(params_sh, None, batch, batch, batch),
                 out_shardings=sharding.replicated(mesh))


def _check_fits_the_data(path: str, num_classes: int, config) -> None:
  """A head must have an output for every label of the data: scored against a
  label it cannot predict, top-1 counts a miss and the loss is NaN, so the
  result would be a number no valid evaluation gives."""
  split = config.data.eval_split
  data_classes = labeled.describe(config.data, split).num_classes
  if data_classes > num_classes:
    raise ValueError(
        f"{path!r} is a {num_classes}-class classifier, but the evaluation data "
        f"({config.data.source}, split {split!r}) has {data_classes} classes, whose labels "
        f"{num_classes}-{data_classes - 1} it cannot predict; evaluate it on the data it was "
        f"trained for, or fine-tune a {data_classes}-class head first.")


def evaluate_checkpoint(path: str, config) -> dict:
  cfg, kind, params, where = sources.read_checkpoint(path)
  if kind != "classifier" or cfg.num_classes == 0:
    raise ValueError(f"{path!r} holds a {kind} model without a classifier head; "
                     "fine-tune it first (python -m mixmim_jax.finetune).")
  if cfg.img_size != config.data.image_size:
    raise ValueError(f"{path!r} is built for {cfg.img_size}px images but the config's "
                     f"data.image_size is {config.data.image_size}.")
  _check_fits_the_data(path, cfg.num_classes, config)
  mesh = sharding.make_mesh(config.mesh)
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.eval_batch_size < 1 or config.eval_batch_size % batch_devices:
    raise ValueError(f"eval_batch_size={config.eval_batch_size}; expected a positive multiple "
                     f"of the data-parallel size {batch_devices} (mesh data x fsdp).")
  logger.info("evaluating %s (%d classes) on %s/%s", where, cfg.num_classes,
              config.data.source, config.data.eval_split)
  fn = classifier_eval_fn(cfg, mesh, config.data, params)
  params = jax.device_put(params, sharding.tree_shardings(params, mesh))
  return evaluate(fn, params, {}, config.data, config.eval_batch_size, mesh)
