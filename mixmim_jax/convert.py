"""Convert checkpoints between PyTorch MixMIM and our Flax params files.

  python -m mixmim_jax.convert SRC.pth DST.msgpack   # mmpretrain or authors' -> Flax
  python -m mixmim_jax.convert SRC.msgpack DST.pth   # Flax -> mmpretrain state dict
  python -m mixmim_jax.convert SRC.pth DST.pth --format official   # one layout -> another

SRC is read by its suffix: a .pth/.pt file is imported, anything else is read as
our params file. DST is written as its suffix says (weights/outputs.py): .msgpack
a params file, .pth/.pt a PyTorch checkpoint in --format's layout (mmpretrain's by
default, or the authors' "official"); any other name is refused before anything
is read. Importing detects the format (mmpretrain: a state dict under
`state_dict` with `backbone.*` keys; the authors' code: under `model`) and the
kind (pretraining model, classifier or bare encoder), reads the arch off the
tensors, and fails with a list of what is missing or unexpected. torch is
imported only for .pth files (weights/torch_io.py), never by the model code.
"""
from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from mixmim_jax.weights import outputs, torch_format
from mixmim_jax.weights.params_file import ParamsFile, load_params
from mixmim_jax.weights.torch_io import (TORCH_SUFFIXES, decoder_heads, import_state_dict,
                                         load_torch_checkpoint, recorded_classes)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mixmim_jax.convert",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("src")
  parser.add_argument("dst", help="DST.msgpack (a params file) or DST.pth / DST.pt (PyTorch)")
  parser.add_argument("--format", choices=torch_format.FORMATS, default=None,
                      help="layout of a .pth / .pt destination: mmpretrain (the default) or "
                           "official (the authors'); only for a PyTorch destination")
  parser.add_argument("--decoder-heads", type=int, default=None,
                      help="decoder attention heads (not visible in the tensors; default: "
                           "what the checkpoint's config or args record, else 16)")
  parser.add_argument("--trust-checkpoint", action="store_true",
                      help="allow pickled Python objects in the .pth (only for files you trust)")
  args = parser.parse_args(argv)

  try:
    outputs.layout(args.dst, args.format)      # the name says what to write, or nothing is read
    if args.decoder_heads is not None and args.decoder_heads < 1:
      raise ValueError(f"--decoder-heads={args.decoder_heads}; expected 1 or more.")
    model, summary = _import(args) if args.src.endswith(TORCH_SUFFIXES) else _read(args)
    written = outputs.write(args.dst, model.config, model.kind, model.params, model.classes,
                            args.format)
  except (ValueError, OSError) as e:   # CheckpointMismatch is a ValueError
    raise SystemExit(f"{args.src}: {e}") from e
  print(f"{summary} -> {args.dst} ({written})")
  return 0


def _import(args) -> tuple[ParamsFile, str]:
  checkpoint = load_torch_checkpoint(args.src, args.trust_checkpoint)
  heads, heads_note = decoder_heads(checkpoint, args.decoder_heads)
  cfg, kind, params, fmt = import_state_dict(checkpoint, decoder_heads=heads)
  classes = recorded_classes(checkpoint) if kind == torch_format.CLASSIFIER else None
  if classes is not None and len(classes) != cfg.num_classes:
    classes = None                     # names of another head: not carried over
  count = sum(np.size(x) for x in jax.tree.leaves(params))
  decoder = (f"; decoder dim {cfg.decoder_dim}, depth {cfg.decoder_depth}, "
             f"{cfg.decoder_heads} heads ({heads_note}), "
             f"table {cfg.decoder_pos_embed}" if kind == torch_format.PRETRAIN else "")
  return ParamsFile(cfg, kind, params, classes), (
      f"{args.src}: {fmt} {kind} checkpoint, embed_dim={cfg.embed_dim} "
      f"depths={cfg.depths} heads={cfg.num_heads} windows={cfg.effective_windows} "
      f"img_size={cfg.img_size} classes={cfg.num_classes} pos_embed={cfg.pos_embed}"
      f"{decoder}; {count:,} parameters")


def _read(args) -> tuple[ParamsFile, str]:
  loaded = load_params(args.src)
  count = sum(np.size(x) for x in jax.tree.leaves(loaded.params))
  return loaded, f"{args.src}: {loaded.kind} params file, {count:,} parameters"


if __name__ == "__main__":
  sys.exit(main())
