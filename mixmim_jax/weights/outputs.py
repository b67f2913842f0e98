"""Writing a model to a file whose name says what it holds: `.msgpack` is a
params file (params_file.py), `.pth` / `.pt` a PyTorch checkpoint in
mmpretrain's layout or, with `fmt="official"`, the authors' (torch_io.py).
Any other name is refused before anything is read or written, so no file is
left holding what its name does not say."""
from __future__ import annotations

from etils import epath

from mixmim_jax import files
from mixmim_jax.weights import params_file, torch_format, torch_io

PARAMS_SUFFIXES = (".msgpack",)


def layout(path: str, fmt: str | None = None) -> str:
  """"params" or "torch", from the suffix of `path`; `fmt` (a PyTorch layout)
  only fits a PyTorch file. One sentence for a name that says neither, and
  for a folder or a missing parent folder where the file should go."""
  name = str(path)
  if name.endswith(torch_io.TORCH_SUFFIXES):
    kind = "torch"
  elif name.endswith(PARAMS_SUFFIXES):
    kind = "params"
  else:
    raise ValueError(f"cannot tell what to write to {name!r} from its name: end it in "
                     ".msgpack (a params file) or .pth / .pt (a PyTorch checkpoint).")
  if fmt is not None and kind == "params":
    raise ValueError(f"--format {fmt} is the layout of a PyTorch checkpoint, but {name!r} "
                     "names a params file (.msgpack); end it in .pth to write that layout, or "
                     "leave --format out.")
  if fmt is not None and fmt not in torch_format.FORMATS:
    raise ValueError(f"--format {fmt!r}; expected one of {torch_format.FORMATS}.")
  target = epath.Path(name)
  if target.is_dir():
    example = str(target / ("model.pth" if kind == "torch" else "model.msgpack"))
    raise IsADirectoryError(f"cannot write {name!r}: it is a folder; name a file in it, "
                            f"e.g. {example!r}.")
  if not files.is_remote(name) and not target.parent.exists():
    raise FileNotFoundError(f"cannot write {name!r}: its directory {str(target.parent)!r} "
                            "does not exist.")
  return kind


def write(path: str, cfg, kind: str, params, classes=None, fmt: str | None = None) -> str:
  """Writes the model to `path` as its suffix says (atomically: a failed write
  leaves nothing); returns what was written, for the summary line."""
  if layout(path, fmt) == "torch":
    fmt = fmt or torch_format.MMPRETRAIN
    torch_io.save(path, torch_io.export_state_dict(cfg, kind, params, fmt, classes=classes))
    return f"{fmt} PyTorch checkpoint"
  params_file.save_params(path, cfg, kind, params, classes=classes)
  return "params file"
