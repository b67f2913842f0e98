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
import io
import sys

import jax
import numpy as np
from etils import epath

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


def decoder_heads(checkpoint, given: int | None = None) -> tuple[int, str]:
  """(decoder heads, how they were chosen): `given`, else what the checkpoint
  records (torch_format.recorded_decoder_heads), else the references' 16."""
  if given is not None:
    return given, "given with --decoder-heads"
  heads, where = torch_format.recorded_decoder_heads(checkpoint)
  if heads is not None:
    return heads, f"read from {where}"
  return (torch_format.DEFAULT_DECODER_HEADS,
          f"{torch_format.DEFAULT_DECODER_HEADS} assumed ({where}; the tensors do not show "
          "it): pass --decoder-heads=N if the model had N")


def import_state_dict(checkpoint, **overrides):
  """(config, kind, params, format) from a loaded torch checkpoint object (dict).
  Decoder heads come from `overrides`, else from what the checkpoint records."""
  fmt, sd = torch_format.unwrap(checkpoint)
  overrides.setdefault("decoder_heads", decoder_heads(checkpoint)[0])
  cfg, kind = torch_format.infer_config(sd, fmt, **overrides)
  model_kind = "classifier" if kind == torch_format.ENCODER else kind
  shapes = param_shapes(cfg, model_kind)
  params = torch_format.state_dict_to_flax(sd, fmt, cfg, kind, expected_shapes=shapes)
  return cfg, kind, params, fmt


def load_torch_checkpoint(path: str, trust: bool = False):
  """The checkpoint object with tensors as NumPy arrays.

  Read with torch's weights_only unpickler, which runs no code from the file.
  Checkpoints also carry other objects: the authors' training `args`
  (argparse.Namespace, read as is), mmengine's message hub and the like (read
  as inert stand-ins, since only the tensors and the config text are used).
  `trust` unpickles everything instead (only for files you trust)."""
  torch = _torch()
  source = epath.Path(path)
  if not source.is_file():
    raise SystemExit(f"checkpoint {path!r} does not exist.")
  data = io.BytesIO(source.read_bytes())
  if trust:
    return _tensors_to_numpy(torch.load(data, map_location="cpu", weights_only=False))
  try:
    extra = _stand_ins(torch.serialization.get_unsafe_globals_in_checkpoint(data))
  except Exception:  # pylint: disable=broad-except
    extra = []     # not a zip checkpoint: torch.load below says what it is
  try:
    data.seek(0)
    with torch.serialization.safe_globals(extra):
      obj = torch.load(data, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise SystemExit(f"{path!r} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else 'no detail'}).") from e
  return _tensors_to_numpy(obj)


class _StandIn:
  """Takes the place of a pickled object of a class we do not need: built from
  any arguments, keeps nothing."""

  def __new__(cls, *args, **kwargs):  # pylint: disable=unused-argument
    return object.__new__(cls)

  def __init__(self, *args, **kwargs):  # pylint: disable=unused-argument
    pass

  def __setstate__(self, state):  # pylint: disable=unused-argument
    pass


def _stand_ins(names: list[str]) -> list:
  """Safe globals for weights_only loading: argparse.Namespace itself (the
  authors' args, read for the decoder heads), an inert _StandIn for the rest."""
  out = []
  for name in names:
    if name == "argparse.Namespace":
      out.append(argparse.Namespace)
    else:
      out.append((type(name.rsplit(".", 1)[-1], (_StandIn,), {}), name))
  return out


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
  target = epath.Path(args.dst)
  if not target.parent.exists():
    raise FileNotFoundError(f"cannot write {args.dst!r}: its directory does not exist.")
  buffer = io.BytesIO()
  _torch().save(out, buffer)
  target.write_bytes(buffer.getvalue())
  print(f"{args.src}: {loaded.kind} -> {args.format} state dict with "
        f"{len(next(iter(out.values())))} entries -> {args.dst}")


if __name__ == "__main__":
  sys.exit(main())
