"""Export a model to one self-describing params file (or a PyTorch checkpoint),
and load it back.

  python -m mixmim_jax.export --checkpoint=SRC --out=model.msgpack [--encoder-only]
  python -m mixmim_jax.export --model=NAME --out=model.msgpack   # a published model
  python -m mixmim_jax.export --checkpoint=SRC --out=model.pth [--format official]

SRC: a published model's name (python -m mixmim_jax.predict --list), a
fine-tune workdir (its latest checkpoint; a linear probe's normalization is
folded into the head), a pretraining workdir (the encoder is kept, the
decoder dropped), a PyTorch checkpoint (.pth) or another params file. The
output is written as its name says (weights/outputs.py): a .msgpack params
file (the arch config, the kind: "classifier" = encoder + head, or "encoder",
the parameters, float32, and the class names when the source records them),
or a .pth / .pt PyTorch checkpoint in mmpretrain's layout (--format official:
the authors'); any other name is refused before the source is read.

In Python:

  from mixmim_jax import inference
  model = inference.load("model.msgpack")     # ParamsFile(config, kind, params, classes)
  logits = inference.logits(model, images)    # normalized NHWC float32 images
"""
from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from mixmim_jax.weights import hub, outputs, sources, torch_format
from mixmim_jax.weights.params_file import ParamsFile


def export(source: str, out: str, encoder_only: bool = False, step: int = -1,
           fmt: str | None = None) -> ParamsFile:
  """Writes `out` from any supported checkpoint, as its suffix says (`fmt`: the
  layout of a PyTorch file); returns what was written."""
  outputs.layout(out, fmt)             # before the source is read
  if step < -1:
    raise ValueError(f"--step={step}; expected a checkpoint step (0 or more), or -1 for the "
                     "latest.")
  (cfg, kind, params, classes), where = sources.read(source, step)
  if kind == "pretrain" or encoder_only or cfg.num_classes == 0:
    kind, cfg, params = "encoder", cfg.replace(num_classes=0), {"encoder": params["encoder"]}
    classes = None
  else:
    kind, params = "classifier", {"encoder": params["encoder"], "head": params["head"]}
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  written = outputs.write(out, cfg, kind, params, classes=classes, fmt=fmt)
  print(f"{where}: {kind} with {sum(x.size for x in jax.tree.leaves(params)):,} parameters "
        f"({cfg.num_classes} classes, {cfg.img_size} px) -> {out} ({written})")
  return ParamsFile(cfg, kind, params, classes)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mixmim_jax.export",
                                   description=__doc__.split("\n\n")[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--checkpoint",
                      help="fine-tune or pretraining workdir, .pth, or params file")
  source.add_argument("--model", help="a published model's name (python -m mixmim_jax.predict "
                                      "--list); its weights are downloaded once")
  parser.add_argument("--out", required=True,
                      help="the file to write: .msgpack (a params file) or .pth / .pt (PyTorch)")
  parser.add_argument("--format", choices=torch_format.FORMATS, default=None,
                      help="layout of a .pth / .pt output: mmpretrain (the default) or "
                           "official (the authors')")
  parser.add_argument("--encoder-only", action="store_true", help="drop the head")
  parser.add_argument("--step", type=int, default=-1, help="workdir checkpoint step")
  args = parser.parse_args(argv)
  try:
    source = args.checkpoint or hub.lookup(args.model).name
    export(source, args.out, args.encoder_only, args.step, args.format)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
