"""Top-1 / top-5 accuracy on an evaluation split, every image counted once.

  python -m mixmim_jax.evaluate --checkpoint=CKPT --config=configs/base_finetune.py \\
      [--config.data.data_dir=...]
  python -m mixmim_jax.evaluate --model=NAME --config=configs/base_finetune.py  # published
  python -m mixmim_jax.evaluate --knn --fewshot --checkpoint=ENCODER \
      --config=configs/base_pretrain.py [--step=N]    # representation probes

CKPT is a published model's name (python -m mixmim_jax.predict --list; its
weights are downloaded once; --model=NAME says the same), a params file
(.msgpack: mixmim_jax.export / convert / a fine-tune run's final.msgpack), a
PyTorch classifier checkpoint (.pth), or a fine-tune workdir (its latest
checkpoint). The config supplies the data (source, eval split, image size,
normalization), eval_batch_size and the mesh. Each process reads its own
examples; the last batches are padded to a common count and masked, so N images
give exactly N scores however N divides the batch, the devices and the hosts.
An image that cannot be decoded is not scored, and the result names it.

--knn / --fewshot score any encoder (a pretraining workdir, also at --step,
a params file, a .pth, a published name) with the probes of the config's
`evals` section, as a pretraining run does (evaluation/probes.py): DINO's
weighted 20-NN and big_vision's few-shot ridge regression.
"""
from __future__ import annotations

import logging

import jax

from mixmim_jax.evaluation import accuracy
from mixmim_jax.evaluation import probes as probes_lib
from mixmim_jax.training import startup


def main(argv) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from mixmim_jax import cli  # pylint: disable=import-outside-toplevel
  del argv
  clock = startup.StartupClock()
  clock.mark("imports")
  f = flags.FLAGS
  probes = [name for name, wanted in (("knn", f.knn), ("fewshot", f.fewshot)) if wanted]
  if probes:                 # the probes print their own lines
    probes_lib.probe_checkpoint(cli.checkpoint_or_model(), f.config, probes, f.step)
    clock.mark("load and probe")
    logging.getLogger(__name__).info("%s", clock.report("the result"))
    return
  result = accuracy.evaluate_checkpoint(cli.checkpoint_or_model(), flags.FLAGS.config)
  clock.mark("load and evaluate")
  logging.getLogger(__name__).info("%s", clock.report("the result"))
  if jax.process_index() == 0:
    print(accuracy.summary(result), flush=True)


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_bool("knn", False, "kNN top-1 / top-5 of the encoder (config.evals.knn) "
                    "instead of the classifier's accuracy.")
  flags.DEFINE_bool("fewshot", False, "few-shot linear top-1 of the encoder "
                    "(config.evals.fewshot).")
  flags.DEFINE_integer("step", -1, "with a workdir: the checkpoint at this step (-1: latest).")


if __name__ == "__main__":
  from mixmim_jax import cli  # pylint: disable=ungrouped-imports
  _define_flags()
  cli.run_tool(main, checkpoint_flag="params file, .pth, fine-tune workdir (a pretraining "
                                     "one with --knn/--fewshot), or a published model's name.")
