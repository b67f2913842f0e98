"""MixMIM pretraining: one trainer that reads top to bottom.

setup (mesh, data size, plan) -> state (restored or created sharded) -> data
(resumed at the step) -> loop (step, log, pictures, checkpoints, stop requests,
representation probes). The loop's bookkeeping is shared with fine-tuning
(loop.py).
"""
from __future__ import annotations

import logging
import time

import jax
import numpy as np

from mixmim_jax import data
from mixmim_jax.evaluation.probes import Probes
from mixmim_jax.model import masking
from mixmim_jax.training import (checkpointing, loop, metrics, run_record, sharding, startup,
                                 stopping, visualize)
from mixmim_jax.training.plan import grouping_line, make_plan
from mixmim_jax.training.progress import duration
from mixmim_jax.training.steps import compile_steps

logger = logging.getLogger(__name__)


def train(config, workdir: str, stop_after: int | None = None,
          signals: stopping.StopSignals | None = None) -> dict:
  """Pretrains to the end (or a stop request); returns the last logged scalars,
  the loss history ({step: loss} at every log step) and the final state.

  `stop_after` ends this job after that many steps as if preempted (checkpoint,
  then return): for time-limited jobs and the resume tests."""
  # ------------------------------------------------------------------ setup
  clock = startup.StartupClock()
  clock.mark("imports")                  # everything before this function
  run_dir = loop.Workdir(workdir)
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh(config.mesh)
  info = data.describe(config.data)
  plan = make_plan(config, info.num_examples, jax.device_count())
  if is_main:
    print(config, flush=True)
  logger.info("data: %s (%d examples at %s)", info.source, info.num_examples, info.where)
  logger.info("mesh %s; %d steps (%d per epoch, %d warmup), lr %.3g, per-device batch %d",
              dict(mesh.shape), plan.total_steps, plan.steps_per_epoch, plan.warmup_steps,
              plan.lr, plan.per_device_batch)
  logger.info("%s", grouping_line(plan))
  fns = compile_steps(plan, config, mesh)
  clock.mark("setup")

  # ------------------------------------------------------------------ state
  ckpt = checkpointing.Checkpointer(checkpointing.directory_of(workdir),
                                    config.checkpoint_keep, config.checkpoint_async)
  # A resume must mean by a step what the workdir recorded; checked before
  # anything is restored or written (config.json is written below).
  run_record.check_resume(run_dir, config, plan, info.num_examples, ckpt)
  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  meta = dict(model_config=loop.model_config_json(plan.model), seed=config.seed,
              batch_size=config.batch_size, **run_record.facts(plan, info.num_examples))
  state = loop.resume(ckpt, fns, plan.model)
  if state is None:
    state = fns.init(init_key)
    logger.info("initialised a new %.2f M-parameter model",
                sum(x.size for x in jax.tree.leaves(state.params)) / 1e6)
  start = int(jax.device_get(jax.block_until_ready(state).step))
  clock.mark("restore" if start else "init")
  if is_main:
    run_dir.write_config(config)

  # ------------------------------------------------------------------ data
  batches = data.pretrain_batches(
      config.data, local_batch_size=config.batch_size // jax.process_count(), seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(), start_step=start)
  writer = metrics.MetricWriter(run_dir.join("tensorboard"), enabled=is_main)
  run = loop.TrainLoop(config, run_dir, plan.total_steps, start, ckpt, writer, stop_after,
                       signals, clock)
  try:
    # kNN / few-shot on the encoder's features (config.evals), a program apart from the step.
    probes = (Probes(config.evals, config.data, plan.model, mesh,
                     fns.state_shardings.params["encoder"]) if "evals" in config else None)
    if start == 0 and _run_probes(probes, run, writer, 0, state.params, plan.total_steps):
      clock.mark("probes at step 0")       # not the data pipeline's start-up

    # ------------------------------------------------------------------ loop
    for step in range(start, plan.total_steps):
      batch = run.next_batch(batches)["image"]
      images = jax.make_array_from_process_local_data(fns.batch_sharding, batch)
      state, step_metrics = fns.step(state, images, step_key)
      done = run.after_step(step, step_metrics, skipped_images=float(batches.skipped))
      if config.image_every_steps and (done % config.image_every_steps == 0 or run.is_last):
        _write_pictures(config, plan, state.params, batch, step_key, done, run_dir, is_main)
      if run.save_and_stop(done, state, meta):
        break
      _run_probes(probes, run, writer, done, state.params, plan.total_steps)
    run.close(batches)
  finally:
    # Also when the run ends in an error: a caller's process (a notebook, a
    # test) must not keep the run's signal handlers.
    run.release_signals()
  return run.result(state)


def _run_probes(probes, run, writer, step, params, total_steps) -> bool:
  """The probes due after `step` (True if any ran); their time is kept out of
  the step times."""
  names = probes.due(step, total_steps) if probes is not None else []
  if not names:
    return False
  t0 = time.perf_counter()
  scalars = probes.run(step, params["encoder"], names)
  seconds = time.perf_counter() - t0
  run.outside_steps(seconds)
  run.evals_left_seconds = probes.seconds_left(step, total_steps)
  writer.write(step, scalars)
  if jax.process_index() == 0:
    spent, elapsed = probes.total_seconds, run.progress.elapsed()
    print(f"eval at step {step}: probes {duration(seconds)}; {duration(spent)} of the job's "
          f"{duration(elapsed)} so far ({100 * spent / elapsed:.1f} %)", flush=True)
  return True


def _write_pictures(config, plan, params, batch, step_key, step, run_dir, is_main):
  n = min(2 * config.num_image_pairs, len(batch) // 2 * 2)
  mask = masking.draw_coarse_masks(jax.random.fold_in(step_key, 2**31 - 1), 1,
                                   plan.model.num_mask_cells, config.mask_ratio)
  path = run_dir.join("images", f"pairs_{step:07d}.png")
  visualize.pairs_png(path, plan.model, params, np.asarray(batch[:n]), np.asarray(mask),
                      config.data.mean, config.data.std, config.norm_pix, write=is_main)
  if is_main:
    logger.info("reconstructions written to %s", path)
