"""Runs `python -m mixmim_jax.main` in-process once per command line given as
JSON (a list of argument lists) and prints, as the last line, one JSON record
per run: its exit code and everything it printed. One process for many refused
runs: JAX and TensorFlow load once.

  python tests/refusals_worker.py RUNS.json
"""
import contextlib
import io
import json
import logging
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"

from absl import flags  # noqa: E402

from mixmim_jax import cli  # noqa: E402


def run(argv):
  # config_flags defines a flag per --config.KEY it sees: forget the last run's.
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)
  out = io.StringIO()
  code = 0
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
      cli.main(["mixmim_jax.main"] + argv)
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else 1
    finally:
      logging.getLogger().handlers.clear()
  return dict(code=code, output=out.getvalue())


if __name__ == "__main__":
  with open(sys.argv[1]) as f:
    runs = json.load(f)
  print(json.dumps([run(argv) for argv in runs]), flush=True)
