"""Fine-tuning and linear probing: one trainer that reads top to bottom.

  python -m mixmim_jax.finetune --config=configs/base_finetune.py --workdir=DIR \\
      --config.init_from=PRETRAIN_WORKDIR_PARAMS_FILE_OR_MODEL_NAME

setup (mesh, data size, plan) -> state (resumed from DIR, else initialised from
`init_from` or scratch, created sharded) -> data (resumed at the step) -> loop
(step, log, periodic eval, checkpoints, stop requests) -> final eval and an
exported classifier params file DIR/final.msgpack (mm.load_params).
The loop's bookkeeping is shared with pretraining (training/loop.py).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time

import jax

from mixmim_jax.data import labeled
from mixmim_jax.evaluation import accuracy
from mixmim_jax.model import api
from mixmim_jax.model.linear_probe import fold_probe
from mixmim_jax.training import (checkpointing, loop, metrics, run_record, sharding, startup,
                                 stopping)
from mixmim_jax.training.plan import make_plan
from mixmim_jax.training.steps import compile_steps, model_kind
from mixmim_jax.weights import adapt, params_file

logger = logging.getLogger(__name__)
MODEL_CONFIG = "model_config.json"


def finetune(config, workdir: str, stop_after: int | None = None,
             signals: stopping.StopSignals | None = None) -> dict:
  """Trains to the end (or a stop request); returns the last logged scalars, the
  loss history, the evaluations ({step: result}) and the final state."""
  # ------------------------------------------------------------------ setup
  clock = startup.StartupClock()
  clock.mark("imports")                  # everything before this function
  run_dir = loop.Workdir(workdir)
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh(config.mesh)
  info = labeled.describe(config.data)
  if info.num_classes != config.num_classes:
    raise ValueError(f"the data has {info.num_classes} classes but config.num_classes="
                     f"{config.num_classes}; set --config.num_classes={info.num_classes}.")
  plan = make_plan(config, info.num_examples, jax.device_count())
  if is_main:
    print(config, flush=True)
  kind = model_kind(plan, config)
  clock.mark("setup")

  # ------------------------------------------------------------------ state
  ckpt = checkpointing.Checkpointer(checkpointing.directory_of(workdir),
                                    config.checkpoint_keep, config.checkpoint_async)
  # A resume must mean by a step what the workdir recorded; checked before
  # anything is restored or written (config.json is written below).
  run_record.check_resume(run_dir, config, plan, info.num_examples, ckpt)
  latest = ckpt.latest_step()
  # The model config can differ from the config file's (the checkpoint's table
  # layout); it is kept beside the checkpoints so a resumed run rebuilds the same.
  if latest is None:
    fresh = jax.device_get(jax.jit(functools.partial(api.init_variables, plan.model, kind))(
        jax.random.key(config.seed)))
    params, model_cfg = adapt.initial_params(
        config.init_from, config.init_step, plan.model, fresh["params"], config.seed)
  else:
    model_cfg = run_record.read_model_config(run_dir, MODEL_CONFIG)
    # The checkpoints' model is the one trained on: a config asking for
    # another (bar the table layout its start took over) is refused.
    loop.check_same_model(loop.model_config_json(model_cfg),
                          plan.model.replace(pos_embed=model_cfg.pos_embed), workdir)
  plan = dataclasses.replace(plan, model=model_cfg)
  fns = compile_steps(plan, config, mesh)
  meta = dict(model_config=loop.model_config_json(plan.model), task=config.task,
              seed=config.seed, batch_size=config.batch_size,
              **run_record.facts(plan, info.num_examples))
  if latest is None:
    state = fns.from_params(params, fresh.get("batch_stats", {}))
    if is_main:
      run_dir.write_text(MODEL_CONFIG, model_cfg.to_json())
  else:
    state = loop.resume(ckpt, fns, plan.model)
    if state is None:
      raise ValueError(f"no checkpoint in {ckpt.directory} can be read (the damaged ones are "
                       "moved aside there); use a fresh --workdir to start again.")
  if is_main:
    run_dir.write_config(config)
  logger.info("%s: %d examples, %d classes; %d steps (%d per epoch, %d warmup), lr %.3g",
              config.task, info.num_examples, info.num_classes, plan.total_steps,
              plan.steps_per_epoch, plan.warmup_steps, plan.lr)
  start = int(jax.device_get(jax.block_until_ready(state).step))
  clock.mark("restore" if start else "init")

  # ------------------------------------------------------------------ data
  batches = labeled.train_batches(
      config.data, local_batch_size=config.batch_size // jax.process_count(),
      seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), start_step=start)
  writer = metrics.MetricWriter(run_dir.join("tensorboard"), enabled=is_main)
  run = loop.TrainLoop(config, run_dir, plan.total_steps, start, ckpt, writer, stop_after,
                       signals, clock)
  try:
    step_key = jax.random.fold_in(jax.random.key(config.seed), 1)

    def run_eval(step):
      result = accuracy.evaluate(fns.eval_step, state.params, state.batch_stats, config.data,
                                 config.eval_batch_size, mesh)
      writer.write(step, {f"eval/{k}": v for k, v in result.items() if k != "unreadable"})
      if is_main:
        print(f"eval at step {step}: {accuracy.summary(result)}", flush=True)
      return result

    # ------------------------------------------------------------------ loop
    evals: dict[int, dict] = {}
    for step in range(start, plan.total_steps):
      batch = run.next_batch(batches)
      images = jax.make_array_from_process_local_data(fns.batch_sharding, batch["image"])
      labels = jax.make_array_from_process_local_data(fns.batch_sharding, batch["label"])
      state, step_metrics = fns.step(state, images, labels, step_key)
      done = run.after_step(step, step_metrics, skipped_images=float(batches.skipped))
      # The checkpoint before the evaluation: a preemption notice's grace period
      # may end during it, and the last steps must not be lost then. After a
      # stop request only the final evaluation runs.
      stop = run.save_and_stop(done, state, meta)
      if run.is_last:
        ckpt.wait()                                     # committed before it is evaluated
      if run.is_last or (not stop and config.eval_every_steps
                         and done % config.eval_every_steps == 0):
        t0 = time.perf_counter()
        evals[done] = run_eval(done)
        run.outside_steps(time.perf_counter() - t0)     # not step time (progress.py)
      if stop:
        break
    run.close(batches)
  finally:
    # Also when the run ends in an error: a caller's process (a notebook, a
    # test) must not keep the run's signal handlers.
    run.release_signals()
  if not run.stopped_early and is_main:
    params = state.params
    if config.task == "linprobe":
      params = fold_probe(params, state.batch_stats)
    path = run_dir.join("final.msgpack")
    params_file.save_params(path, plan.model, "classifier", jax.device_get(params))
    logger.info("classifier params written to %s (mm.load_params)", path)
  return run.result(state, evals=evals, model=plan.model)
