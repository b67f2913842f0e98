"""Entry point: python -m mixmim_jax.main --config=configs/base_pretrain.py --workdir=DIR

Runs the trainer the config names (`config.trainer`: "pretrain" or "finetune");
flags, logging, multi-process start and error reporting live in cli.py.
"""
from mixmim_jax import cli

if __name__ == "__main__":
  cli.main()
