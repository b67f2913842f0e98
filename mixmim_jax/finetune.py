"""Fine-tuning and linear probing: one trainer that reads top to bottom.

  python -m mixmim_jax.finetune --config=configs/base_finetune.py --workdir=DIR \\
      --config.init_from=PRETRAIN_WORKDIR_OR_PARAMS_FILE

setup (mesh, data size, plan) -> state (resumed from DIR, else initialised from
`init_from` or scratch, created sharded) -> data (resumed at the step) -> loop
(step, log, periodic eval, checkpoints, preemption) -> final eval and an
exported classifier params file DIR/final.msgpack (mixmim_jax.export.load).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

from mixmim_jax import checkpointing, finetune_config, finetune_init, metrics, params_io  # noqa: E402
from mixmim_jax import sharding  # noqa: E402
from mixmim_jax.arch import ModelConfig  # noqa: E402
from mixmim_jax.data import labeled  # noqa: E402
from mixmim_jax.evaluate import evaluate  # noqa: E402
from mixmim_jax.finetune_step import compile_steps, fold_probe, fresh_variables  # noqa: E402
from mixmim_jax.train import NonFiniteLoss, _check_finite, _Preemption  # noqa: E402

logger = logging.getLogger(__name__)


def finetune(config, workdir: str, stop_after: int | None = None) -> dict:
  """Trains to the end (or a preemption); returns the last logged scalars, the
  loss history, the evaluations ({step: result}) and the final state."""
  # ------------------------------------------------------------------ setup
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh(config.mesh)
  num_train, num_classes = labeled.describe(config.data, config.data.split)
  if num_classes != config.num_classes:
    raise ValueError(f"the data has {num_classes} classes but config.num_classes="
                     f"{config.num_classes}.")
  plan = finetune_config.make_plan(config, num_train, jax.device_count())

  # ------------------------------------------------------------------ state
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    config.checkpoint_keep, config.checkpoint_async)
  latest = ckpt.latest_step()
  # The model config can differ from the config file's (the checkpoint's table
  # layout); it is kept beside the checkpoints so a resumed run rebuilds the same.
  model_path = os.path.join(workdir, "model_config.json")
  if latest is None:
    fresh = fresh_variables(plan.model, config.task, config.seed)
    params, model_cfg = finetune_init.initial_params(
        config.init_from, config.init_step, plan.model, fresh["params"], config.seed)
    if is_main:
      with open(model_path, "w") as f:
        f.write(model_cfg.to_json())
  elif os.path.exists(model_path):
    with open(model_path) as f:
      model_cfg = ModelConfig.from_json(f.read())
  else:
    raise FileNotFoundError(f"{workdir} has checkpoints but no model_config.json (written "
                            "when a run starts); use a fresh --workdir.")
  plan = dataclasses.replace(plan, model=model_cfg)
  fns = compile_steps(plan, config, mesh)
  meta = dict(model_config=json.loads(plan.model.to_json()), task=config.task,
              seed=config.seed, batch_size=config.batch_size)
  if latest is None:
    state = fns.from_params(params, fresh["batch_stats"])
  else:
    state, _ = ckpt.restore(latest, fns.abstract_state)
    logger.info("resumed from step %d in %s", latest, ckpt.directory)
  logger.info("%s: %d examples, %d classes; %d steps (%d per epoch, %d warmup), lr %.3g",
              config.task, num_train, num_classes, plan.total_steps, plan.steps_per_epoch,
              plan.warmup_steps, plan.lr)
  start = int(jax.device_get(state.step))

  # ------------------------------------------------------------------ data
  batches = labeled.train_batches(
      config.data, local_batch_size=config.batch_size // jax.process_count(),
      seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), start_step=start)
  writer = metrics.MetricWriter(os.path.join(workdir, "tensorboard"), enabled=is_main)
  preemption = _Preemption()
  step_key = jax.random.fold_in(jax.random.key(config.seed), 1)

  def run_eval(step):
    result = evaluate(fns.eval_step, state.params, state.batch_stats, config.data,
                      config.eval_batch_size, mesh)
    writer.write(step, {f"eval/{k}": v for k, v in result.items()})
    if is_main:
      print(f"eval at step {step}: {result['count']} images, top-1 "
            f"{100 * result['top1']:.2f} %, top-5 {100 * result['top5']:.2f} %", flush=True)
    return result

  # ------------------------------------------------------------------ loop
  history: dict[int, float] = {}
  evals: dict[int, dict] = {}
  scalars: dict[str, float] = {}
  last_time, last_step, data_wait = time.perf_counter(), start, 0.0
  stopped = False
  for step in range(start, plan.total_steps):
    t0 = time.perf_counter()
    batch = next(batches)
    data_wait += time.perf_counter() - t0
    images = jax.make_array_from_process_local_data(fns.batch_sharding, batch["image"])
    labels = jax.make_array_from_process_local_data(fns.batch_sharding, batch["label"])
    state, step_metrics = fns.step(state, images, labels, step_key)
    done = step + 1
    is_last = done == plan.total_steps
    stopped = (preemption.requested or ckpt.reached_preemption(done)
               or (stop_after is not None and done - start >= stop_after))
    save = stopped or is_last or done % config.checkpoint_every_steps == 0

    if save or done % config.log_every_steps == 0:
      scalars = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
      _check_finite(done, scalars, workdir)
      now = time.perf_counter()
      n = done - last_step
      scalars.update(step_time=(now - last_time) / n, data_wait=data_wait / n,
                     images_per_sec=n * config.batch_size / (now - last_time))
      history[done] = scalars["loss"]
      writer.write(done, scalars)
      if is_main:
        print(metrics.progress_line(done, plan.total_steps, scalars), flush=True)
      last_time, last_step, data_wait = time.perf_counter(), done, 0.0

    if is_last or (config.eval_every_steps and done % config.eval_every_steps == 0):
      evals[done] = run_eval(done)
    if save:
      ckpt.save(done, state, dict(meta, step=done), force=stopped or is_last)
    if stopped:
      logger.warning("stopped at step %d; rerun the same command to resume.", done)
      break

  ckpt.close()
  writer.close()
  if not stopped and is_main:
    params = state.params
    if config.task == "linprobe":
      params = fold_probe(params, state.batch_stats)
    path = os.path.join(workdir, "final.msgpack")
    params_io.save_params(path, plan.model, "classifier", jax.device_get(params))
    logger.info("classifier params written to %s (mixmim_jax.export.load)", path)
  return dict(last=scalars, history=history, evals=evals,
              final_step=int(jax.device_get(state.step)), state=state, model=plan.model)


def main(argv) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments {argv[1:]}")
  logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from mixmim_jax.main import _initialize_distributed  # pylint: disable=import-outside-toplevel
  _initialize_distributed()
  config = flags.FLAGS.config
  if jax.process_index() == 0:
    print(config, flush=True)
  try:
    finetune(config, flags.FLAGS.workdir)
  except (ValueError, FileNotFoundError, NonFiniteLoss) as e:
    logging.error("%s", e)
    sys.exit(1)


if __name__ == "__main__":
  from absl import app  # noqa: E402  pylint: disable=ungrouped-imports
  # The same flags as pretraining: --config, --workdir and the multi-process ones.
  import mixmim_jax.main  # noqa: F401,E402  pylint: disable=unused-import
  app.run(main)
