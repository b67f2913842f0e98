"""`python -m mixmim_jax.aot`: compile the train step for a Cloud TPU slice on
this machine, mixmim_jax/tools/aot.py (see its docstring for the flags)."""
import sys

from mixmim_jax import cli
from mixmim_jax.tools import aot

if __name__ == "__main__":
  sys.exit(cli.command(aot.main))
