"""`python -m mixmim_jax.benchmark`: the step / input / kernel benchmark of
mixmim_jax/tools/benchmark.py (see its docstring for the flags)."""
import sys

from mixmim_jax import cli
from mixmim_jax.tools import benchmark

if __name__ == "__main__":
  sys.exit(cli.command(benchmark.main))
