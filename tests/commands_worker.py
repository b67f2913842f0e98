"""Runs several of our commands in one process, each as `python -m MODULE ARGS`
would, and prints as the last line one JSON record per run: its exit code and
everything it printed. JAX, TensorFlow and torch load once for all of them.

  python tests/commands_worker.py RUNS.json     # [{"module": ..., "argv": [...]}, ...]

module "kill" with argv [PID] SIGKILLs that process at that point of the list.

Trainers (mixmim_jax.main / .finetune) run through cli.main; the argparse
tools (convert, export) through their main(argv); an absl tool (evaluate)
through runpy, as its __main__ block does (give it last: absl keeps its flags).
"""
import contextlib
import importlib
import io
import json
import logging
import os
import runpy
import signal
import sys
import time

os.environ["JAX_PLATFORMS"] = "cpu"

from absl import flags  # noqa: E402

from mixmim_jax import cli  # noqa: E402

TRAINERS = ("mixmim_jax.main", "mixmim_jax.finetune")
ABSL_TOOLS = ("mixmim_jax.evaluate",)


def _kill(pid: int) -> None:
  """SIGKILL, then wait until the process is gone (a zombie or reaped): a big
  process takes a moment to tear down all its threads and memory."""
  os.kill(pid, signal.SIGKILL)
  deadline = time.time() + 60
  while time.time() < deadline:
    try:
      with open(f"/proc/{pid}/stat") as f:
        if f.read().rsplit(")", 1)[1].split()[0] in "ZX":
          return
    except FileNotFoundError:
      return
    time.sleep(0.05)


def _call(module: str, argv: list[str]) -> int:
  if module in TRAINERS + ABSL_TOOLS:
    # config_flags defines a flag per --config.KEY it sees: forget the last run's.
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
      delattr(flags.FLAGS, name)
  if module == "kill":                     # SIGKILL a process between two runs
    _kill(int(argv[0]))
    return 0
  if module in TRAINERS:
    cli.main([module] + argv)
    return 0
  if module in ABSL_TOOLS:
    sys.argv = [module] + argv
    runpy.run_module(module, run_name="__main__")
    return 0
  return importlib.import_module(module).main(argv) or 0


def run(module: str, argv: list[str]) -> dict:
  out = io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
      code = _call(module, argv)
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      if not isinstance(e.code, (int, type(None))):
        print(e.code, file=sys.stderr)         # as the interpreter prints it
    finally:
      logging.getLogger().handlers.clear()
  return dict(code=code, output=out.getvalue())


if __name__ == "__main__":
  with open(sys.argv[1]) as f:
    runs = json.load(f)
  print(json.dumps([run(r["module"], r["argv"]) for r in runs]), flush=True)
