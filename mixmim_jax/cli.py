"""The command line of every program: flags, config files and their overrides,
logging, joining a multi-process run, running the trainer a config names, and
turning a user's mistake into one sentence and a non-zero exit code.

  python -m mixmim_jax.main --config=configs/base_pretrain.py --workdir=DIR   # any trainer
  python -m mixmim_jax.finetune --config=configs/base_finetune.py --workdir=DIR

Trainers get absl flags (--config=FILE[:ARG] with --config.KEY=VALUE overrides,
--workdir, the multi-process flags); the measurement tools use argparse and
`load_config` / `apply_overrides`.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from mixmim_jax.training import startup  # noqa: E402  (first: it notes when the process started)
from absl import app, flags  # noqa: E402
from etils import epath  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mixmim_jax import exit_codes  # noqa: E402

FLAGS = flags.FLAGS
# config.trainer -> (module, function(config, workdir) -> result dict).
TRAINERS = {"pretrain": ("mixmim_jax.trainers.pretrain", "train"),
            "finetune": ("mixmim_jax.trainers.finetune", "finetune")}


class UserError(Exception):
  """A mistake of the command line or the config, said in one sentence."""


# ------------------------------------------------------------------ configs

def _config_path(argv) -> str | None:
  """The --config value (with its optional ':ARG'), as absl would read it."""
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def load_config(spec: str):
  """'configs/x.py' or 'configs/x.py:arg' -> the file's get_config() / get_config(arg)."""
  path, _, arg = spec.partition(":")
  if not epath.Path(path).is_file():
    raise UserError(f"config file {path!r} does not exist (--config={spec}); expected a "
                    "configs/*.py file.")
  module_spec = importlib.util.spec_from_file_location("config_" + epath.Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise UserError(f"config file {path!r} does not parse: {e.msg} at line {e.lineno}.") from e
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path!r} has no get_config() function.")
  try:
    return module.get_config(arg) if arg else module.get_config()
  except (ValueError, TypeError) as e:
    raise UserError(f"config file {path!r} with argument {arg!r}: {e}") from e


def _check_key(config, key: str) -> None:
  node = config
  for i, part in enumerate(key.split(".")):
    if not hasattr(node, "keys") or part not in node.keys():
      known = sorted(node.keys()) if hasattr(node, "keys") else []
      where = ".".join(key.split(".")[:i]) or "the config"
      raise UserError(f"unknown config key {key!r} in --config.{key}: {where} has no "
                      f"{part!r}; known keys there: {', '.join(known)}.")
    node = node[part]


def check_trainer_args(argv) -> None:
  """Before absl parses anything: the config file exists and loads, and every
  --config.KEY override names a key it has (absl alone answers these with
  tracebacks from deep inside flag parsing)."""
  spec = _config_path(argv)
  if spec is None:
    return            # absl says that --config is required
  config = load_config(spec)
  for a in argv:
    if a.startswith("--config."):
      _check_key(config, a[len("--config."):].split("=", 1)[0])


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string such as --config.data.source=folder


def apply_overrides(config, overrides: list[str]):
  """Applies ['--config.a.b=1', ...] (argparse tools); an unknown key is an
  error naming it."""
  for item in overrides:
    if not item.startswith("--config.") or "=" not in item:
      raise UserError(f"unexpected argument {item!r}; expected --config.KEY=VALUE.")
    key, _, text = item[len("--config."):].partition("=")
    _check_key(config, key)
    *parents, leaf = key.split(".")
    target = config
    for p in parents:
      target = target[p]
    value = _parse_value(text)
    target[leaf] = tuple(value) if isinstance(value, list) else value
  return config


# ------------------------------------------------------------------ runtime

def setup_logging() -> None:
  logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def initialize_distributed() -> int:
  """Joins a multi-process run (distributed.py): from --coordinator_address (or
  the MIXMIM_* environment variables), or from the cluster environment JAX
  detects (a Cloud TPU VM, GKE, Slurm, ...). Returns the number of processes."""
  from mixmim_jax.training import distributed  # pylint: disable=import-outside-toplevel
  address = FLAGS.coordinator_address or os.environ.get("MIXMIM_COORDINATOR_ADDRESS")
  num = FLAGS.num_processes or int(os.environ.get("MIXMIM_NUM_PROCESSES", "0"))
  pid = FLAGS.process_id if FLAGS.process_id is not None else int(
      os.environ.get("MIXMIM_PROCESS_ID", "-1"))
  try:
    start = distributed.join(address, num, pid)
  except ValueError as e:
    raise UserError(str(e)) from e
  return 1 if start is None else start.num_processes


def user_errors() -> tuple[type[BaseException], ...]:
  """The exceptions that are a user's to fix: reported as one sentence."""
  # pylint: disable=import-outside-toplevel
  from mixmim_jax.files import StorageError
  from mixmim_jax.training.loop import NonFiniteLoss
  from mixmim_jax.training.workdir_lock import WorkdirBusy
  return (UserError, ValueError, FileNotFoundError, IsADirectoryError, NonFiniteLoss,
          StorageError, WorkdirBusy)


def command(main_fn) -> int:
  """Runs an argparse tool's main(); a user's mistake is one sentence on stderr
  and exit code 1."""
  try:
    main_fn()
  except user_errors() as e:
    print(f"error: {e}", file=sys.stderr)
    return exit_codes.ERROR
  return exit_codes.FINISHED


def _report(e: BaseException) -> None:
  logging.getLogger("mixmim_jax").error("%s", e)
  if not logging.getLogger().handlers:
    print(f"error: {e}", file=sys.stderr)


def run_trainer(config, workdir: str, **kwargs) -> dict:
  """Runs the trainer `config.trainer` names."""
  name = config.get("trainer", "pretrain")
  if name not in TRAINERS:
    raise UserError(f"config.trainer={name!r}; expected one of {sorted(TRAINERS)}.")
  module, function = TRAINERS[name]
  return getattr(importlib.import_module(module), function)(config, workdir, **kwargs)


def _trainer_main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  setup_logging()
  from mixmim_jax.training import stopping  # pylint: disable=import-outside-toplevel
  # From here on a stop signal (SIGTERM, Ctrl-C, ...) stops the run cleanly, at any moment.
  with stopping.StopSignals() as signals:
    try:
      if not (FLAGS.workdir or "").strip():
        raise UserError(f"--workdir={FLAGS.workdir!r} is empty; give the directory for this "
                        "run's checkpoints and logs, e.g. --workdir=runs/mine.")
      signals.shared = initialize_distributed() > 1
      import jax  # pylint: disable=import-outside-toplevel
      from mixmim_jax.training import workdir_lock  # pylint: disable=import-outside-toplevel
      config = FLAGS.config
      # One run per workdir, before anything in it is read or written.
      lock = workdir_lock.take(FLAGS.workdir, jax.process_index(), jax.process_count())
      signals.before_exit.append(lock.release)
      try:
        startup.enable_cache(config.get("compile_cache", "auto"), FLAGS.workdir)
        logging.info("JAX %s: %d processes, %d devices (%s)", jax.__version__,
                     jax.process_count(), jax.device_count(), jax.devices()[0].platform)
        result = run_trainer(config, FLAGS.workdir, signals=signals)
      finally:
        lock.release()
    except user_errors() as e:
      _report(e)
      sys.exit(exit_codes.ERROR)
  if result.get("stopped_early"):
    sys.exit(exit_codes.STOPPED)


def _define(name: str, define) -> None:
  """Defines a flag once per process (tests run several programs in one)."""
  if name not in FLAGS:
    define()


def define_trainer_flags() -> None:
  _define("config", lambda: config_flags.DEFINE_config_file(
      "config", None, "Path to a configs/*.py file.", lock_config=True))
  _define("workdir", lambda: flags.DEFINE_string(
      "workdir", None, "Checkpoints, TensorBoard logs and pictures go here (a gs:// path on "
      "Cloud TPU). A run resumes from it automatically."))
  _define("coordinator_address", lambda: flags.DEFINE_string(
      "coordinator_address", None, "host:port of process 0 for a multi-process run outside "
      "Cloud TPU (env MIXMIM_COORDINATOR_ADDRESS)."))
  _define("num_processes", lambda: flags.DEFINE_integer(
      "num_processes", None, "processes in the run (env MIXMIM_NUM_PROCESSES)."))
  _define("process_id", lambda: flags.DEFINE_integer(
      "process_id", None, "this process's index (env MIXMIM_PROCESS_ID)."))
  flags.mark_flags_as_required(["config", "workdir"])


def _preflight(argv) -> None:
  """The config and its overrides, checked before absl parses them."""
  try:
    check_trainer_args(argv[1:])
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(exit_codes.ERROR)


def main(argv: list[str] | None = None) -> None:
  """`python -m mixmim_jax.main` (and `.finetune`): the trainer the config names.
  `argv` (program name first) defaults to sys.argv."""
  argv = sys.argv if argv is None else argv
  define_trainer_flags()
  _preflight(argv)
  sys.argv = list(argv)      # config_flags reads its --config.KEY overrides from sys.argv
  app.run(_trainer_main, argv=argv)


def run_tool(tool_main, checkpoint_flag: str) -> None:
  """An absl program with --config and --checkpoint or --model (evaluate):
  errors a user can fix are one sentence and exit code 1."""
  _define("config", lambda: config_flags.DEFINE_config_file(
      "config", None, "A configs/*_finetune.py or *_linprobe.py."))
  _define("checkpoint", lambda: flags.DEFINE_string("checkpoint", None, checkpoint_flag))
  _define("model", lambda: flags.DEFINE_string(
      "model", None, "a published model's name instead of --checkpoint "
      "(python -m mixmim_jax.predict --list)."))
  _define("compile_cache", lambda: flags.DEFINE_string(
      "compile_cache", "auto", "where compiled programs are kept across runs: a path, 'off', "
      "or 'auto' ($MIXMIM_JAX_HOME/compile_cache, by default ~/.cache/mixmim_jax/...)."))
  flags.mark_flags_as_required(["config"])
  flags.mark_flags_as_mutual_exclusive(["checkpoint", "model"], required=True)
  _preflight(sys.argv)

  def wrapped(argv):
    setup_logging()
    startup.enable_cache(FLAGS.compile_cache)
    try:
      tool_main(argv)
    except user_errors() as e:
      _report(e)
      sys.exit(exit_codes.ERROR)

  app.run(wrapped)


def checkpoint_or_model() -> str:
  """What a tool's --checkpoint or --model names (a model name is resolved
  where every source is: sources.read)."""
  if FLAGS.model is not None:
    from mixmim_jax.weights import hub  # pylint: disable=import-outside-toplevel
    return hub.lookup(FLAGS.model).name
  return FLAGS.checkpoint
