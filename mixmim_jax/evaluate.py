"""Top-1 / top-5 accuracy on an evaluation split, every image counted once.

  python -m mixmim_jax.evaluate --checkpoint=CKPT --config=configs/base_finetune.py \\
      [--config.data.data_dir=...]
  python -m mixmim_jax.evaluate --model=NAME --config=configs/base_finetune.py  # published

CKPT is a published model's name (python -m mixmim_jax.predict --list; its
weights are downloaded once; --model=NAME says the same), a params file
(.msgpack: mixmim_jax.export / convert / a fine-tune run's final.msgpack), a
PyTorch classifier checkpoint (.pth), or a fine-tune workdir (its latest
checkpoint). The config supplies the data (source, eval split, image size,
normalization), eval_batch_size and the mesh. Each process reads its own
examples; the last batches are padded to a common count and masked, so N images
give exactly N scores however N divides the batch, the devices and the hosts.
An image that cannot be decoded is not scored, and the result names it.
"""
from __future__ import annotations

import logging

import jax

from mixmim_jax.evaluation import accuracy
from mixmim_jax.training import startup


def main(argv) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from mixmim_jax import cli  # pylint: disable=import-outside-toplevel
  del argv
  clock = startup.StartupClock()
  clock.mark("imports")
  result = accuracy.evaluate_checkpoint(cli.checkpoint_or_model(), flags.FLAGS.config)
  clock.mark("load and evaluate")
  logging.getLogger(__name__).info("%s", clock.report("the result"))
  if jax.process_index() == 0:
    print(accuracy.summary(result), flush=True)


if __name__ == "__main__":
  from mixmim_jax import cli  # pylint: disable=ungrouped-imports
  cli.run_tool(main, checkpoint_flag="params file, .pth, fine-tune workdir, or a published "
                                     "model's name.")
