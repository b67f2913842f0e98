"""MixMIM pretraining: one trainer that reads top to bottom.

setup (mesh, data size, plan) -> state (restored or created sharded) -> data
(resumed at the step) -> loop (step, log, pictures, checkpoints, preemption).
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import time

import jax
import numpy as np

from mixmim_jax import checkpointing, data, masking, metrics, sharding, train_config, visualize
from mixmim_jax.train_step import compile_train_step

logger = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
  pass


class _Preemption:
  """SIGTERM (Spot/preemptible VMs, `kill`) asks the loop to save and stop."""

  def __init__(self):
    self.requested = False
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (tests): no signal handling
      pass

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logger.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.requested = True


def _check_finite(step: int, scalars: dict[str, float], workdir: str) -> None:
  if not (math.isfinite(scalars["loss"]) and math.isfinite(scalars["grad_norm"])):
    raise NonFiniteLoss(
        f"non-finite loss {scalars['loss']} (grad norm {scalars['grad_norm']}) at step "
        f"{step}; stopped without saving, the last good checkpoint in {workdir} is kept.")


def train(config, workdir: str, stop_after: int | None = None) -> dict:
  """Pretrains to the end (or a preemption); returns the last logged scalars, the
  loss history ({step: loss} at every log step) and the final state.

  `stop_after` ends this job after that many steps as if preempted (checkpoint,
  then return): for time-limited jobs and the resume tests."""
  # ------------------------------------------------------------------ setup
  if "://" not in workdir:   # gs:// and other remote workdirs are created by orbax
    os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh(config.mesh)
  info = data.describe(config.data)
  plan = train_config.make_plan(config, info.num_examples, jax.device_count())
  logger.info("data: %s (%d examples at %s)", info.source, info.num_examples, info.where)
  logger.info("mesh %s; %d steps (%d per epoch, %d warmup), lr %.3g, per-device batch %d "
              "in groups of %d", dict(mesh.shape), plan.total_steps, plan.steps_per_epoch,
              plan.warmup_steps, plan.lr, plan.per_device_batch, plan.group_size)
  fns = compile_train_step(plan, config, mesh)

  # ------------------------------------------------------------------ state
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    config.checkpoint_keep, config.checkpoint_async)
  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  meta = dict(model_config=json.loads(plan.model.to_json()), seed=config.seed,
              batch_size=config.batch_size)
  latest = ckpt.latest_step()
  if latest is None:
    state = fns.init(init_key)
    logger.info("initialised a new %.2f M-parameter model",
                sum(x.size for x in jax.tree.leaves(state.params)) / 1e6)
  else:
    state, saved_meta = ckpt.restore(latest, fns.abstract_state_sharded())
    if saved_meta.get("model_config") != meta["model_config"]:
      raise ValueError(f"the checkpoint at step {latest} in {ckpt.directory} is for model "
                       f"{saved_meta.get('model_config')}, not this config's "
                       f"{meta['model_config']}; use another --workdir.")
    logger.info("resumed from step %d in %s", latest, ckpt.directory)
  start = int(jax.device_get(state.step))

  # ------------------------------------------------------------------ data
  local_batch = config.batch_size // jax.process_count()
  batches = data.pretrain_batches(
      config.data, local_batch_size=local_batch, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(), start_step=start)
  writer = metrics.MetricWriter(os.path.join(workdir, "tensorboard"), enabled=is_main)
  preemption = _Preemption()

  # ------------------------------------------------------------------ loop
  history: dict[int, float] = {}
  scalars: dict[str, float] = {}
  last_log_time, last_log_step, data_wait = time.perf_counter(), start, 0.0
  loss_sum = 0.0      # on device: summed without waiting for each step
  step = start
  for step in range(start, plan.total_steps):
    t0 = time.perf_counter()
    batch = next(batches)["image"]
    data_wait += time.perf_counter() - t0
    images = jax.make_array_from_process_local_data(fns.batch_sharding, batch)
    state, step_metrics = fns.step(state, images, step_key)
    loss_sum = loss_sum + step_metrics["loss"]
    done = step + 1
    is_last = done == plan.total_steps
    stop = (preemption.requested or ckpt.reached_preemption(done)
            or (stop_after is not None and done - start >= stop_after))
    save = stop or is_last or done % config.checkpoint_every_steps == 0

    # Also log the first step of a job: it shows the starting loss and compile time.
    if save or is_last or done == start + 1 or done % config.log_every_steps == 0:
      scalars = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
      n = done - last_log_step
      # The logged loss is the mean since the last log; a NaN anywhere shows in it.
      scalars["loss"] = float(loss_sum) / n
      _check_finite(done, scalars, workdir)
      now = time.perf_counter()
      scalars.update(step_time=(now - last_log_time) / n, data_wait=data_wait / n,
                     images_per_sec=n * config.batch_size / (now - last_log_time),
                     skipped_images=float(batches.skipped))
      history[done] = scalars["loss"]
      writer.write(done, scalars)
      if is_main:
        print(metrics.progress_line(done, plan.total_steps, scalars), flush=True)
      last_log_time, last_log_step, data_wait, loss_sum = time.perf_counter(), done, 0.0, 0.0

    if config.image_every_steps and (done % config.image_every_steps == 0 or is_last):
      _write_pictures(config, plan, state.params, batch, step_key, done, workdir, is_main)

    if save:
      ckpt.save(done, state, dict(meta, step=done), force=stop or is_last)
    if stop:
      logger.warning("stopped at step %d for preemption; rerun the same command to resume.",
                     done)
      break

  ckpt.close()
  writer.close()
  if batches.skipped:
    logger.warning("%d unreadable images were skipped in total.", batches.skipped)
  return dict(last=scalars, history=history, final_step=int(jax.device_get(state.step)),
              state=state)


def _write_pictures(config, plan, params, batch, step_key, step, workdir, is_main):
  n = min(2 * config.num_image_pairs, len(batch) // 2 * 2)
  mask = masking.draw_coarse_masks(jax.random.fold_in(step_key, 2**31 - 1), 1,
                                   plan.model.num_mask_cells, config.mask_ratio)
  path = os.path.join(workdir, "images", f"pairs_{step:07d}.png")
  visualize.pairs_png(path, plan.model, params, np.asarray(batch[:n]), np.asarray(mask),
                      config.data.mean, config.data.std, config.norm_pix, write=is_main)
  if is_main:
    logger.info("reconstructions written to %s", path)
