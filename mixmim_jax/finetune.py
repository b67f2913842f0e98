"""Entry point: python -m mixmim_jax.finetune --config=configs/base_finetune.py --workdir=DIR

The same program as `python -m mixmim_jax.main` (which runs whatever trainer
the config names); the fine-tuning trainer itself is trainers/finetune.py.
"""
from mixmim_jax import cli

if __name__ == "__main__":
  cli.main()
