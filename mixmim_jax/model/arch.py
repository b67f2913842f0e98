"""Architecture description of a MixMIM model: one frozen dataclass, no JAX.

The same `ModelConfig` builds the classifier, the pretraining model and names the
layout of a converted checkpoint, so it is stored beside every params file.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

# Encoder scales from MixMIM.md / mmpretrain's `arch_zoo`.
ARCHS: dict[str, dict[str, Any]] = {
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
    "huge": dict(embed_dim=352, depths=(2, 2, 18, 2), num_heads=(11, 22, 44, 88)),
}
ARCH_ALIASES = {"b": "base", "l": "large", "h": "huge"}

# Each stage halves the resolution; the mask lives on the coarsest grid.
NUM_STAGES = 4
# Absolute position table layouts found in the two references' checkpoints:
# mmpretrain orders the sin-cos blocks (row, col), the authors' MAE helper (col, row);
# "none" is an mmpretrain classifier trained from scratch (its table stays zero).
POS_EMBED_LAYOUTS = ("row_col", "col_row", "none")
# The decoder's table: mmpretrain's (row, col), the authors' MAE helper (col, row).
DECODER_POS_LAYOUTS = ("row_col", "col_row")
INIT_SCHEMES = ("mmpretrain", "authors")   # see init_schemes.py


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes a MixMIM model's parameter shapes and its computation."""
  embed_dim: int = 128
  depths: tuple[int, ...] = (2, 2, 18, 2)
  num_heads: tuple[int, ...] = (4, 8, 16, 32)
  window_sizes: tuple[int, ...] = (14, 14, 14, 7)
  img_size: int = 224
  patch_size: int = 4
  in_chans: int = 3
  mlp_ratio: float = 4.0
  num_classes: int = 1000          # 0: no head (features only)
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  pos_embed: str = "row_col"
  # Pretraining decoder ("neck").
  decoder_dim: int = 512
  decoder_depth: int = 8
  decoder_heads: int = 16
  decoder_ln_eps: float = 1e-6     # mmpretrain; the authors' code uses 1e-5
  decoder_pos_embed: str = "row_col"   # the authors' checkpoints: "col_row"
  # How fresh parameters are drawn (init_schemes.py); no effect on computation.
  init: str = "mmpretrain"
  # Input dtype of the matrix products (layers.py); they accumulate in float32,
  # and the residual stream, norms, softmax, parameters and gradients stay float32.
  dtype: str = "float32"
  # Recompute each block's activations in the backward pass (saves memory).
  remat: bool = False
  # Run each stack of blocks as one lax.scan (see block_stack.py): much faster
  # backward passes on CPU and a compile of one block per stack. Same numbers.
  # Without remat, a scanned stack saves its linear layers' outputs only.
  scan_blocks: bool = True

  def __post_init__(self):
    def fail(msg):
      raise ValueError(msg)
    for name in ("depths", "num_heads", "window_sizes"):
      value = tuple(getattr(self, name))
      object.__setattr__(self, name, value)
      if len(value) != NUM_STAGES:
        fail(f"{name}={value} must have {NUM_STAGES} entries, one per stage.")
    if self.img_size % self.encoder_stride:
      fail(f"image size {self.img_size} is not a multiple of {self.encoder_stride} "
           f"(patch size {self.patch_size} x 8, the encoder's output stride).")
    for s, (heads, dim) in enumerate(zip(self.num_heads, self.stage_dims)):
      if dim % heads:
        fail(f"stage {s}: width {dim} is not divisible by num_heads={heads}.")
    for s, (res, win) in enumerate(zip(self.stage_resolutions, self.effective_windows)):
      if res % win:
        fail(f"stage {s}: window {win} does not divide the stage resolution {res} "
             f"(image size {self.img_size}); choose window_sizes that divide it.")
    if self.embed_dim % 4 or self.decoder_dim % 4:
      fail(f"embed_dim={self.embed_dim} and decoder_dim={self.decoder_dim} must be "
           "multiples of 4 for the 2-D sin-cos position tables.")
    if self.pos_embed not in POS_EMBED_LAYOUTS:
      fail(f"pos_embed={self.pos_embed!r} is not one of {POS_EMBED_LAYOUTS}.")
    if self.decoder_pos_embed not in DECODER_POS_LAYOUTS:
      fail(f"decoder_pos_embed={self.decoder_pos_embed!r} is not one of "
           f"{DECODER_POS_LAYOUTS}.")
    if self.init not in INIT_SCHEMES:
      fail(f"init={self.init!r} is not one of {INIT_SCHEMES} (whose init code a fresh "
           "model follows).")
    if self.decoder_dim % self.decoder_heads:
      fail(f"decoder_dim={self.decoder_dim} is not divisible by decoder_heads="
           f"{self.decoder_heads}.")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      fail(f"dtype={self.dtype!r} is not one of float32, bfloat16, float16.")

  @property
  def encoder_stride(self) -> int:
    return self.patch_size * 2 ** (NUM_STAGES - 1)

  @property
  def stage_dims(self) -> tuple[int, ...]:
    return tuple(self.embed_dim * 2 ** s for s in range(NUM_STAGES))

  @property
  def num_features(self) -> int:
    return self.stage_dims[-1]

  @property
  def patch_grid(self) -> int:
    return self.img_size // self.patch_size

  @property
  def stage_resolutions(self) -> tuple[int, ...]:
    return tuple(self.patch_grid // 2 ** s for s in range(NUM_STAGES))

  @property
  def effective_windows(self) -> tuple[int, ...]:
    # Both references: a window >= the map becomes the whole map (global attention).
    return tuple(min(w, r) for w, r in zip(self.window_sizes, self.stage_resolutions))

  @property
  def mask_grid(self) -> int:
    """Side of the coarse mask grid (input / 32): 7 at 224 px."""
    return self.img_size // self.encoder_stride

  @property
  def num_mask_cells(self) -> int:
    return self.mask_grid ** 2

  @property
  def target_dim(self) -> int:
    return self.encoder_stride ** 2 * self.in_chans

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"unknown model config keys {unknown}; expected a subset of "
                       f"{sorted(known)}.")
    return cls(**dict(d))

  @classmethod
  def from_json(cls, text: str) -> "ModelConfig":
    return cls.from_dict(json.loads(text))


def model_config(arch: str | Mapping[str, Any] = "base", **overrides) -> ModelConfig:
  """A ModelConfig from an arch name ('base', 'large', 'huge') or a dict with
  embed_dim, depths and num_heads (a custom arch), plus any field overrides."""
  if isinstance(arch, str):
    name = ARCH_ALIASES.get(arch.lower(), arch.lower())
    if name not in ARCHS:
      raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHS)} or a "
                       "dict with embed_dim, depths and num_heads.")
    fields = dict(ARCHS[name])
  else:
    missing = {"embed_dim", "depths", "num_heads"} - set(arch)
    if missing:
      raise ValueError(f"custom arch {dict(arch)} lacks {sorted(missing)}.")
    fields = dict(arch)
  fields.update(overrides)
  return ModelConfig.from_dict(fields)
