"""Entry point: python -m mixmim_jax.main --config=configs/base_pretrain.py --workdir=DIR

Parses flags, joins a multi-process run, hides accelerators from TensorFlow,
saves the config to the workdir and hands over to the trainer.
"""
from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs and pictures go here "
                    "(a gs:// path on Cloud TPU). A run resumes from it automatically.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for a multi-process "
                    "run outside Cloud TPU (env MIXMIM_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "processes in the run (env MIXMIM_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "this process's index (env MIXMIM_PROCESS_ID).")
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed() -> None:
  import jax  # pylint: disable=import-outside-toplevel
  address = FLAGS.coordinator_address or os.environ.get("MIXMIM_COORDINATOR_ADDRESS")
  if address:
    num = FLAGS.num_processes or int(os.environ.get("MIXMIM_NUM_PROCESSES", "0"))
    pid = FLAGS.process_id if FLAGS.process_id is not None else int(
        os.environ.get("MIXMIM_PROCESS_ID", "-1"))
    if num < 1 or pid < 0:
      raise app.UsageError(f"coordinator {address} given but num_processes={num} / "
                           f"process_id={pid}; set both (flags or MIXMIM_* env vars).")
    jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
  elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    jax.distributed.initialize()   # multi-host Cloud TPU: everything comes from the VM


def _check_config_overrides(argv) -> None:
  """Name an unknown --config.KEY in one sentence (config_flags alone raises a
  bare AttributeError from deep inside flag parsing)."""
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if not path or not overrides:
    return
  file_path, _, arg = path.partition(":")
  if not os.path.exists(file_path):
    raise SystemExit(f"config file {file_path!r} does not exist.")
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("_mixmim_config", file_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for key in overrides:
    node = config
    for i, part in enumerate(key.split(".")):
      if not hasattr(node, "keys") or part not in node.keys():
        known = sorted(node.keys()) if hasattr(node, "keys") else []
        where = ".".join(key.split(".")[:i]) or "the config"
        raise SystemExit(f"unknown config key {key!r} in --config.{key}: {where} has no "
                         f"{part!r}; known keys there: {', '.join(known)}.")
      node = node[part]


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                      stream=sys.stdout, force=True)
  for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  _initialize_distributed()
  import jax  # pylint: disable=import-outside-toplevel
  from mixmim_jax import train  # pylint: disable=import-outside-toplevel

  config = FLAGS.config
  if jax.process_index() == 0:
    print(config, flush=True)
    if not FLAGS.workdir.startswith("gs://"):
      os.makedirs(FLAGS.workdir, exist_ok=True)
    from mixmim_jax.data._tf import tf  # pylint: disable=import-outside-toplevel
    tf.io.gfile.makedirs(FLAGS.workdir)
    with tf.io.gfile.GFile(os.path.join(FLAGS.workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  logging.info("JAX %s: %d processes, %d devices (%s)", jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].platform)
  try:
    train.train(config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, train.NonFiniteLoss) as e:
    logging.error("%s", e)
    sys.exit(1)


if __name__ == "__main__":
  _check_config_overrides(sys.argv[1:])
  app.run(main)
