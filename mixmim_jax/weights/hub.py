"""Models by name, with the published weights: the registry and the cache.

  import mixmim_jax as mm
  mm.list_models()                      # the names, as mmpretrain's list_models (fnmatch)
  model = mm.get_model("mixmim-base_mixmim-pre_8xb128-coslr-100e_in1k")  # -> ParamsFile

The table below holds exactly the MixMIM models that mmpretrain 1.2.0 ships
(`configs/mixmim/metafile.yml`); tests/test_hub.py compares every field with
mmpretrain's own ModelHub. `get_model(name)` downloads the published .pth once
into the cache ($MIXMIM_JAX_HOME, default ~/.cache/mixmim_jax), checks it
against the sha256 prefix in its name, converts it once to a params file kept
beside it, and from then on loads that file (no torch, no network).
`pretrained=False` gives fresh weights, `pretrained=PATH` a local .pth or
.msgpack used as given (no hash check, as mmpretrain does).

Names are resolved here for every command: `sources.read` asks `entry_for`
whether a source is a name before treating it as a path.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
import re
import sys
from typing import Any, Mapping

from etils import epath

from mixmim_jax import files
from mixmim_jax.weights import downloads, params_file

HOME_ENV = files.HOME_ENV
_ARCH_FIELDS = ("embed_dim", "depths", "num_heads", "patch_size", "img_size")


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """One published model, as mmpretrain's metafile describes it."""
  name: str
  kind: str                       # "pretrain" (encoder + decoder) or "classifier"
  url: str                        # ends in _YYYYMMDD-<first 8 hex of its sha256>.pth
  params: int                     # mmpretrain's count (fixed sin-cos tables included)
  flops: int                      # at 224 px, one multiply-add counted once
  top1: float | None              # ImageNet-1k top-1 %, None for the pretraining model
  epochs: int
  batch_size: int
  dataset: str
  config_file: str                # mmpretrain's recipe, relative to its .mim folder
  model: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # ModelConfig fields

  @property
  def file_name(self) -> str:
    return downloads.file_name(self.url)

  @property
  def sha256(self) -> str:
    """The hash prefix the file name carries."""
    found = re.search(r"_\d{8}-([0-9a-f]{8})\.pth$", self.file_name)
    if not found:
      raise ValueError(f"{self.url} does not end in _YYYYMMDD-<8 hex digits>.pth.")
    return found.group(1)

  def model_config(self):
    from mixmim_jax.model.arch import ModelConfig  # pylint: disable=import-outside-toplevel
    return ModelConfig.from_dict(dict(self.model))


_OPENMMLAB = ("https://download.openmmlab.com/mmselfsup/1.x/mixmim/"
              "mixmim-base-p16_16xb128-coslr-300e_in1k/")
MODELS = (
    ModelEntry(
        name="mixmim_mixmim-base_16xb128-coslr-300e_in1k", kind="pretrain",
        url=_OPENMMLAB + "mixmim-base-p16_16xb128-coslr-300e_in1k_20221208-44fe8d2c.pth",
        params=114_665_784, flops=16_351_906_816, top1=None, epochs=300, batch_size=2048,
        dataset="ImageNet-1k",
        config_file="configs/mixmim/mixmim_mixmim-base_16xb128-coslr-300e_in1k.py",
        model=dict(num_classes=0)),
    ModelEntry(
        name="mixmim-base_mixmim-pre_8xb128-coslr-100e_in1k", kind="classifier",
        url=_OPENMMLAB + ("mixmim-base-p16_ft-8xb128-coslr-100e_in1k/"
                          "mixmim-base-p16_ft-8xb128-coslr-100e_in1k_20221208-41ecada9.pth"),
        params=88_344_352, flops=16_351_906_816, top1=84.63, epochs=100, batch_size=1024,
        dataset="ImageNet-1k",
        config_file="configs/mixmim/benchmarks/mixmim-base_8xb128-coslr-100e_in1k.py",
        model=dict(num_classes=1000)),
)
# name (lower case, as mmpretrain looks names up) -> entry; tests add entries here.
REGISTRY: dict[str, ModelEntry] = {m.name.lower(): m for m in MODELS}


class UnknownModel(ValueError):
  pass


# ------------------------------------------------------------------ names

def list_models(pattern: str | None = None) -> list[str]:
  """Sorted names matching the fnmatch `pattern` with any ending (mmpretrain's rule)."""
  return sorted(m.name for m in REGISTRY.values()
                if pattern is None or fnmatch.fnmatchcase(m.name, pattern + "*"))


def _close(name: str) -> list[str]:
  """Registry names like `name`: near spellings, and names that contain it."""
  name = name.lower()
  close = difflib.get_close_matches(name, list(REGISTRY), n=3, cutoff=0.6)
  contain = [n for n in sorted(REGISTRY) if len(name) >= 4 and name in n and n not in close]
  return close + contain


def lookup(name: str) -> ModelEntry:
  entry = REGISTRY.get(str(name).lower())
  if entry is None:
    close = [repr(REGISTRY[c].name) for c in _close(str(name))]
    hint = (f"the closest {'is' if len(close) == 1 else 'are'} {' and '.join(close)}, and "
            if close else "")
    raise UnknownModel(f"no model is named {name!r}; {hint}python -m mixmim_jax.predict "
                       f"--list shows {'them all' if close else 'the names'}.")
  return entry


def entry_for(source) -> ModelEntry | None:
  """The entry `source` names, or None when it is a path: anything that exists,
  or that is neither a registry name nor a near miss of one (a near miss
  raises UnknownModel; a missing path stays the reader's to report)."""
  source = str(source)
  if "/" in source or "://" in source or epath.Path(source).exists():
    return None
  if source.lower() in REGISTRY:
    return REGISTRY[source.lower()]
  if difflib.get_close_matches(source.lower(), list(REGISTRY), n=1, cutoff=0.8):
    lookup(source)            # raises, naming the close matches
  return None


# ------------------------------------------------------------------ cache

def home() -> epath.Path:
  return files.user_cache()


def cache_paths(entry: ModelEntry) -> tuple[epath.Path, epath.Path]:
  """(the downloaded .pth, the params file converted from it), side by side."""
  pth = home() / "checkpoints" / entry.file_name
  return pth, pth.with_suffix(".msgpack")


def is_cached(entry: ModelEntry) -> bool:
  return cache_paths(entry)[1].exists()


# ------------------------------------------------------------------ loading

def get_model(name: str, pretrained: bool | str | os.PathLike | None = True, *,
              mirror: str | None = None, progress=True):
  """The ParamsFile (config, kind, params, classes) of `name`: published weights
  (True), fresh ones (False / None), or a local .pth / .msgpack (a PATH)."""
  entry = lookup(name)
  if pretrained is None or pretrained is False:
    from mixmim_jax.model import api  # pylint: disable=import-outside-toplevel
    cfg = entry.model_config()
    return params_file.ParamsFile(cfg, entry.kind, api.init_params(cfg, entry.kind))
  if pretrained is True:
    return _published(entry, mirror, progress)
  loaded, _ = params_file.read_file(os.fspath(pretrained))
  _check_matches(entry, loaded, os.fspath(pretrained))
  return loaded


def _published(entry: ModelEntry, mirror, progress):
  pth, converted = cache_paths(entry)
  if converted.exists():
    loaded = params_file.load_params(str(converted))
    _check_matches(entry, loaded, str(converted))
    return loaded
  if not pth.exists():
    downloads.fetch(entry.url, pth, entry.sha256, mirror=mirror, progress=progress)
  else:   # put there by hand (as the offline message suggests): check it once
    got = downloads.sha256_of(pth)
    if not got.startswith(entry.sha256):
      raise downloads.ChecksumMismatch(
          f"{pth} has sha256 {got[:16]}..., not {entry.sha256}... as its name says, so it "
          f"is not the published file of {entry.name}: replace it (or pass "
          "pretrained=PATH to use it unchecked).")
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise ValueError(f"{pth.name} is downloaded but not yet converted, which needs torch "
                     f"once (pip install torch==2.13.0); or convert it elsewhere with "
                     f"python -m mixmim_jax.convert and put the .msgpack into {pth.parent}/.") \
        from e
  loaded, _ = params_file.read_file(str(pth))
  _check_matches(entry, loaded, str(pth))
  params_file.save_params(str(converted), loaded.config, loaded.kind, loaded.params,
                          classes=loaded.classes)
  print(f"{entry.name}: converted once to {converted} (later loads need no torch)",
        file=sys.stderr, flush=True)
  return loaded


def _check_matches(entry: ModelEntry, loaded, where: str) -> None:
  """A file given for a name must hold that model (mmpretrain would load it
  with missing keys, leaving parts random)."""
  want = entry.model_config()
  fields = _ARCH_FIELDS + (("num_classes",) if entry.kind == "classifier" else ())
  diff = [f"{f}={getattr(loaded.config, f)} (not {getattr(want, f)})" for f in fields
          if getattr(loaded.config, f) != getattr(want, f)]
  if loaded.kind != entry.kind or diff:
    what = f"a {loaded.kind} model" + (f" with {', '.join(diff)}" if diff else "")
    raise ValueError(f"{where} holds {what}, but {entry.name} is a {entry.kind} model.")
