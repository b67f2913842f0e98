"""Convert checkpoints between PyTorch MixMIM and our Flax params files.

  python -m mixmim_jax.convert SRC.pth DST.msgpack   # mmpretrain or authors' -> Flax
  python -m mixmim_jax.convert SRC.msgpack DST.pth   # Flax -> mmpretrain state dict

The direction comes from SRC: a .pth/.pt file is imported, anything else is read as
our params file and exported. Importing detects the format (mmpretrain: a state
dict under `state_dict` with `backbone.*` keys; the authors' code: under `model`)
and the kind (pretraining model, classifier or bare encoder), reads the arch off
the tensors, and fails with a list of what is missing or unexpected.
torch is imported only for this (weights/torch_io.py), never by the model code.
"""
from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from mixmim_jax.weights import torch_format
from mixmim_jax.weights.params_file import load_params, save_params
from mixmim_jax.weights.torch_io import (TORCH_SUFFIXES, decoder_heads, export_state_dict,
                                         import_state_dict, load_torch_checkpoint, save)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mixmim_jax.convert",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("src")
  parser.add_argument("dst")
  parser.add_argument("--format", choices=torch_format.FORMATS, default=torch_format.MMPRETRAIN,
                      help="layout of the .pth written when exporting (default mmpretrain)")
  parser.add_argument("--decoder-heads", type=int, default=None,
                      help="decoder attention heads (not visible in the tensors; default: "
                           "what the checkpoint's config or args record, else 16)")
  parser.add_argument("--trust-checkpoint", action="store_true",
                      help="allow pickled Python objects in the .pth (only for files you trust)")
  args = parser.parse_args(argv)

  try:
    if args.src.endswith(TORCH_SUFFIXES):
      _import(args)
    else:
      _export(args)
  except (ValueError, OSError) as e:   # CheckpointMismatch is a ValueError
    raise SystemExit(f"{args.src}: {e}") from e
  return 0


def _import(args) -> None:
  checkpoint = load_torch_checkpoint(args.src, args.trust_checkpoint)
  heads, heads_note = decoder_heads(checkpoint, args.decoder_heads)
  cfg, kind, params, fmt = import_state_dict(checkpoint, decoder_heads=heads)
  save_params(args.dst, cfg, kind, params)
  count = sum(np.size(x) for x in jax.tree.leaves(params))
  decoder = (f"; decoder dim {cfg.decoder_dim}, depth {cfg.decoder_depth}, "
             f"{cfg.decoder_heads} heads ({heads_note}), "
             f"table {cfg.decoder_pos_embed}" if kind == torch_format.PRETRAIN else "")
  print(f"{args.src}: {fmt} {kind} checkpoint, embed_dim={cfg.embed_dim} "
        f"depths={cfg.depths} heads={cfg.num_heads} windows={cfg.effective_windows} "
        f"img_size={cfg.img_size} classes={cfg.num_classes} pos_embed={cfg.pos_embed}"
        f"{decoder}; {count:,} parameters -> {args.dst}")


def _export(args) -> None:
  if not args.dst.endswith(TORCH_SUFFIXES):
    raise ValueError(f"exporting needs a .pth or .pt destination, got {args.dst!r}.")
  loaded = load_params(args.src)
  out = export_state_dict(loaded.config, loaded.kind, loaded.params, args.format)
  save(args.dst, out)
  print(f"{args.src}: {loaded.kind} -> {args.format} state dict with "
        f"{len(next(iter(out.values())))} entries -> {args.dst}")


if __name__ == "__main__":
  sys.exit(main())
