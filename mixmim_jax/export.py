"""Export a model to one self-describing params file, and load it back.

  python -m mixmim_jax.export --checkpoint=SRC --out=model.msgpack [--encoder-only]

SRC: a fine-tune workdir (its latest checkpoint; a linear probe's normalization
is folded into the head), a pretraining workdir (the encoder is kept, the
decoder dropped), a PyTorch checkpoint (.pth) or another params file. The
output is the msgpack file of `params_io`: the arch config, the kind
("classifier" = encoder + head, or "encoder") and the parameters, float32.

In Python:

  from mixmim_jax import export
  model = export.load("model.msgpack")     # ParamsFile(config, kind, params)
  logits = export.logits(model, images)    # normalized NHWC float32 images
"""
from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from mixmim_jax import api, params_io
from mixmim_jax.params_io import ParamsFile


def load(path: str) -> ParamsFile:
  """(config, kind, params) of an exported file (or of any checkpoint
  params_io.read_checkpoint reads: a workdir, a .pth); config rebuilds the
  exact model."""
  cfg, kind, params, _ = params_io.read_checkpoint(path)
  return ParamsFile(cfg, kind, params)


def logits(model: ParamsFile, images) -> jax.Array:
  """Class logits (classifier files) or pooled features (encoder files), (B, .)."""
  cfg = model.config if model.kind == "classifier" else model.config.replace(num_classes=0)
  return api.classify(cfg, model.params, images)


def export(source: str, out: str, encoder_only: bool = False, step: int = -1) -> ParamsFile:
  """Writes `out` from any supported checkpoint; returns what was written."""
  cfg, kind, params, where = params_io.read_checkpoint(source, step)
  if kind == "pretrain" or encoder_only or cfg.num_classes == 0:
    kind, cfg, params = "encoder", cfg.replace(num_classes=0), {"encoder": params["encoder"]}
  else:
    kind, params = "classifier", {"encoder": params["encoder"], "head": params["head"]}
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  params_io.save_params(out, cfg, kind, params)
  print(f"{where}: {kind} with {sum(x.size for x in jax.tree.leaves(params)):,} parameters "
        f"({cfg.num_classes} classes, {cfg.img_size} px) -> {out}")
  return ParamsFile(cfg, kind, params)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mixmim_jax.export",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", required=True,
                      help="fine-tune or pretraining workdir, .pth, or params file")
  parser.add_argument("--out", required=True, help="the .msgpack file to write")
  parser.add_argument("--encoder-only", action="store_true", help="drop the head")
  parser.add_argument("--step", type=int, default=-1, help="workdir checkpoint step")
  args = parser.parse_args(argv)
  try:
    export(args.checkpoint, args.out, args.encoder_only, args.step)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
