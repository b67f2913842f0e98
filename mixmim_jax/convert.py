"""Convert checkpoints between PyTorch MixMIM and our Flax params files.

  python -m mixmim_jax.convert SRC.pth DST.msgpack   # mmpretrain or authors' -> Flax
  python -m mixmim_jax.convert SRC.msgpack DST.pth   # Flax -> mmpretrain state dict

The direction comes from SRC: a .pth/.pt file is imported, anything else is read as
our params file and exported. Importing detects the format (mmpretrain: a state
dict under `state_dict` with `backbone.*` keys; the authors' code: under `model`)
and the kind (pretraining model, classifier or bare encoder), reads the arch off
the tensors, and fails with a list of what is missing or unexpected.
torch is imported only here, never by the model code.
"""
from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from mixmim_jax import torch_format
from mixmim_jax.arch import ModelConfig
from mixmim_jax.params_io import load_params, save_params

TORCH_SUFFIXES = (".pth", ".pt")


def _torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise SystemExit("converting PyTorch checkpoints needs torch: "
                     "pip install torch==2.13.0 (see requirements-test.txt).") from e
  return torch


def param_shapes(cfg: ModelConfig, kind: str):
  """The params tree (of ShapeDtypeStructs) our model of `kind` expects."""
  from mixmim_jax import api  # pylint: disable=import-outside-toplevel
  return api.param_shapes(cfg, kind)


def import_state_dict(checkpoint, **overrides):
  """(config, kind, params) from a loaded torch checkpoint object (dict)."""
  fmt, sd = torch_format.unwrap(checkpoint)
  cfg, kind = torch_format.infer_config(sd, fmt, **overrides)
  model_kind = "classifier" if kind == torch_format.ENCODER else kind
  shapes = param_shapes(cfg, model_kind)
  params = torch_format.state_dict_to_flax(sd, fmt, cfg, kind, expected_shapes=shapes)
  return cfg, kind, params, fmt


def load_torch_checkpoint(path: str, trust: bool = False):
  torch = _torch()
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except FileNotFoundError as e:
    raise SystemExit(f"checkpoint {path!r} does not exist.") from e
  except Exception as e:  # pylint: disable=broad-except
    if not trust:
      raise SystemExit(
          f"{path!r} could not be read as plain tensors ({type(e).__name__}: {e}); if you "
          "trust the file, rerun with --trust-checkpoint to allow pickled objects.") from e
    obj = torch.load(path, map_location="cpu", weights_only=False)
  return _tensors_to_numpy(obj)


def _tensors_to_numpy(obj):
  if hasattr(obj, "detach"):
    return obj.detach().cpu().float().numpy() if obj.is_floating_point() else obj.cpu().numpy()
  if isinstance(obj, dict):
    return {k: _tensors_to_numpy(v) for k, v in obj.items()}
  return obj


def export_state_dict(cfg: ModelConfig, kind: str, params, fmt: str):
  sd = torch_format.flax_to_state_dict(params, cfg, kind, fmt)
  torch = _torch()
  tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
  wrapper = "state_dict" if fmt == torch_format.MMPRETRAIN else "model"
  return {wrapper: tensors, "meta": {"converted_by": "mixmim_jax", "config": cfg.to_json()}}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mixmim_jax.convert",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("src")
  parser.add_argument("dst")
  parser.add_argument("--format", choices=torch_format.FORMATS, default=torch_format.MMPRETRAIN,
                      help="layout of the .pth written when exporting (default mmpretrain)")
  parser.add_argument("--decoder-heads", type=int, default=16,
                      help="decoder attention heads (not visible in the tensors; both "
                           "references use 16)")
  parser.add_argument("--trust-checkpoint", action="store_true",
                      help="allow pickled Python objects in the .pth (only for files you trust)")
  args = parser.parse_args(argv)

  if args.src.endswith(TORCH_SUFFIXES):
    checkpoint = load_torch_checkpoint(args.src, args.trust_checkpoint)
    try:
      cfg, kind, params, fmt = import_state_dict(checkpoint, decoder_heads=args.decoder_heads)
    except (torch_format.CheckpointMismatch, ValueError) as e:
      raise SystemExit(f"{args.src}: {e}") from e
    save_params(args.dst, cfg, kind, params)
    count = sum(np.size(x) for x in jax.tree.leaves(params))
    print(f"{args.src}: {fmt} {kind} checkpoint, embed_dim={cfg.embed_dim} "
          f"depths={cfg.depths} heads={cfg.num_heads} windows={cfg.effective_windows} "
          f"img_size={cfg.img_size} classes={cfg.num_classes} pos_embed={cfg.pos_embed}; "
          f"{count:,} parameters -> {args.dst}")
    return 0

  if not args.dst.endswith(TORCH_SUFFIXES):
    raise SystemExit(f"exporting needs a .pth or .pt destination, got {args.dst!r}.")
  try:
    loaded = load_params(args.src)
    out = export_state_dict(loaded.config, loaded.kind, loaded.params, args.format)
  except (FileNotFoundError, ValueError) as e:   # CheckpointMismatch is a ValueError
    raise SystemExit(f"{args.src}: {e}") from e
  _torch().save(out, args.dst)
  print(f"{args.src}: {loaded.kind} -> {args.format} state dict with "
        f"{len(next(iter(out.values())))} entries -> {args.dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
