"""Map PyTorch MixMIM state dicts (mmpretrain 1.2.0 or the authors' Sense-X code)
onto our Flax parameter tree and back. Pure NumPy: torch is needed only to read
or write the .pth file (see `convert.py`).

Everything is driven by one table, `_entries`, listing for a ModelConfig each
(torch key, Flax path, transform). Import pops every listed key and checks that
nothing is left over; export writes exactly the listed keys plus the fixed
buffers the reference modules register, so `load_state_dict(strict=True)` works.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Iterator, Mapping

import numpy as np

from mixmim_jax.model import tables
from mixmim_jax.model.arch import NUM_STAGES, ModelConfig

MMPRETRAIN = "mmpretrain"
OFFICIAL = "official"        # the authors' Sense-X/MixMIM repository
FORMATS = (MMPRETRAIN, OFFICIAL)
PRETRAIN, CLASSIFIER, ENCODER = "pretrain", "classifier", "encoder"

# Per-format module names; "{s}", "{j}", "{i}" are stage, block, decoder block.
_NAMES = {
    MMPRETRAIN: dict(
        enc="backbone.", patch_proj="patch_embed.projection", patch_norm="patch_embed.norm",
        ln1="ln1", ln2="ln2", fc1="ffn.layers.0.0", fc2="ffn.layers.1", head="head.fc",
        dec="neck.", dec_block="decoder_blocks", dec_norm="ln1", mask_token="neck.mask_token",
        decoder_pos="neck.decoder_pos_embed"),
    OFFICIAL: dict(
        enc="", patch_proj="patch_embed.proj", patch_norm="patch_embed.norm",
        ln1="norm1", ln2="norm2", fc1="mlp.fc1", fc2="mlp.fc2", head="head",
        dec="", dec_block="decoder_blocks", dec_norm="decoder_norm", mask_token="mask_token",
        decoder_pos="decoder_pos_embed"),
}
# Decoder LayerNorm eps each reference uses.
DECODER_LN_EPS = {MMPRETRAIN: 1e-6, OFFICIAL: 1e-5}


class CheckpointMismatch(ValueError):
  """A checkpoint does not fit the expected model (other arch, missing tensors...)."""


# ---------------------------------------------------------------------------
# Patch-merging channel orders.

def merge_permutation(fmt: str, channels: int) -> np.ndarray:
  """perm[q] = index in `fmt`'s 4C layout of our channel q = k*C + c, where
  k = 2*row_offset + col_offset (see encoder.PatchMerging)."""
  k, c = np.divmod(np.arange(4 * channels), channels)
  ki, kj = np.divmod(k, 2)
  if fmt == MMPRETRAIN:       # torch Unfold: channel-major over the 2x2 kernel
    return c * 4 + k
  if fmt == OFFICIAL:         # timm: blocks (r0,c0), (r1,c0), (r0,c1), (r1,c1)
    return (kj * 2 + ki) * channels + c
  raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {FORMATS}.")


# ---------------------------------------------------------------------------
# The table.

def _entries(cfg: ModelConfig, fmt: str, kind: str) -> Iterator[tuple[str, tuple, str, Any]]:
  """Yields (torch_key, flax_path, transform, extra) for every trained tensor."""
  n = _NAMES[fmt]

  def linear(tkey, path, bias=True):
    yield f"{tkey}.weight", path + ("kernel",), "linear", None
    if bias:
      yield f"{tkey}.bias", path + ("bias",), "vec", None

  def norm(tkey, path, extra=None):
    t = "vec" if extra is None else "merge_vec"
    yield f"{tkey}.weight", path + ("scale",), t, extra
    yield f"{tkey}.bias", path + ("bias",), t, extra

  def block(tkey, path, relative_bias):
    yield from norm(f"{tkey}.{n['ln1']}", path + ("ln1",))
    yield from linear(f"{tkey}.attn.qkv", path + ("attn", "qkv"))
    yield from linear(f"{tkey}.attn.proj", path + ("attn", "proj"))
    if relative_bias:
      yield (f"{tkey}.attn.relative_position_bias_table",
             path + ("attn", "relative_position_bias_table"), "vec", None)
    yield from norm(f"{tkey}.{n['ln2']}", path + ("ln2",))
    yield from linear(f"{tkey}.{n['fc1']}", path + ("ffn", "fc1"))
    yield from linear(f"{tkey}.{n['fc2']}", path + ("ffn", "fc2"))

  e, enc = n["enc"], ("encoder",)
  yield f"{e}{n['patch_proj']}.weight", enc + ("patch_embed", "proj", "kernel"), "conv", None
  yield f"{e}{n['patch_proj']}.bias", enc + ("patch_embed", "proj", "bias"), "vec", None
  yield from norm(f"{e}{n['patch_norm']}", enc + ("patch_embed", "norm"))
  for s, depth in enumerate(cfg.depths):
    for j in range(depth):
      yield from block(f"{e}layers.{s}.blocks.{j}", enc + (f"layers_{s}", f"blocks_{j}"), True)
    if s < NUM_STAGES - 1:
      perm = merge_permutation(fmt, cfg.stage_dims[s])
      down = enc + (f"layers_{s}", "downsample")
      yield from norm(f"{e}layers.{s}.downsample.norm", down + ("norm",), perm)
      yield (f"{e}layers.{s}.downsample.reduction.weight", down + ("reduction", "kernel"),
             "merge_linear", perm)
  yield from norm(f"{e}norm", enc + ("norm",))
  if kind == CLASSIFIER:
    yield from linear(n["head"], ("head",))
  if kind == PRETRAIN:
    d, dec = n["dec"], ("decoder",)
    yield from linear(f"{d}decoder_embed", dec + ("embed",))
    yield n["mask_token"], dec + ("mask_token",), "token", None
    for i in range(cfg.decoder_depth):
      yield from block(f"{d}{n['dec_block']}.{i}", dec + (f"blocks_{i}",), False)
    yield from norm(f"{d}{n['dec_norm']}", dec + ("norm",))
    yield from linear(f"{d}decoder_pred", dec + ("pred",))


def torch_names(cfg: ModelConfig, kind: str, fmt: str = MMPRETRAIN) -> dict[tuple, str]:
  """{Flax path: the reference's parameter name} for every trained tensor."""
  return {path: key for key, path, _, _ in _entries(cfg, fmt, kind)}


def _fixed_tables(cfg: ModelConfig, fmt: str, kind: str) -> dict[str, np.ndarray]:
  """Buffers the reference modules register that are not trained here."""
  n = _NAMES[fmt]
  out = {f"{n['enc']}absolute_pos_embed":
         tables.absolute_pos_embed(cfg.patch_grid, cfg.embed_dim, cfg.pos_embed)[None]}
  if kind == PRETRAIN:
    out[n["decoder_pos"]] = tables.sincos_2d(cfg.mask_grid, cfg.decoder_dim,
                                             cfg.decoder_pos_embed)[None]
  return out


def _relative_index_keys(cfg: ModelConfig, fmt: str) -> dict[str, np.ndarray]:
  e = _NAMES[fmt]["enc"]
  return {f"{e}layers.{s}.blocks.{j}.attn.relative_position_index":
          tables.relative_position_index(cfg.effective_windows[s]).astype(np.int64)
          for s, depth in enumerate(cfg.depths) for j in range(depth)}


# ---------------------------------------------------------------------------
# Format detection and arch inference.

def unwrap(checkpoint: Mapping[str, Any]) -> tuple[str, dict[str, np.ndarray]]:
  """(format, flat numpy state dict) of a loaded checkpoint object."""
  sd = checkpoint
  for wrapper in ("state_dict", "model", "module"):
    if isinstance(sd, Mapping) and wrapper in sd and isinstance(sd[wrapper], Mapping):
      sd = sd[wrapper]
      break
  sd = {k: np.asarray(v) for k, v in sd.items() if hasattr(v, "shape")}
  if any(k.startswith("backbone.patch_embed.projection") for k in sd):
    return MMPRETRAIN, sd
  if "patch_embed.proj.weight" in sd:
    return OFFICIAL, sd
  some = sorted(sd)[:5]
  raise CheckpointMismatch(
      f"not a MixMIM checkpoint: found neither 'backbone.patch_embed.projection.weight' "
      f"(mmpretrain) nor 'patch_embed.proj.weight' (authors' code); first keys: {some}.")


def detect_kind(sd: Mapping[str, np.ndarray], fmt: str) -> str:
  n = _NAMES[fmt]
  if f"{n['dec']}decoder_embed.weight" in sd:
    return PRETRAIN
  if f"{n['head']}.weight" in sd:
    return CLASSIFIER
  return ENCODER


def _pos_layout(key: str, table: np.ndarray, grid: int, dim: int, zero_allowed: bool) -> str:
  """Which 2-D sin-cos layout a stored (fixed) position table has."""
  if table.size != grid * grid * dim:
    raise CheckpointMismatch(f"'{key}' has shape {table.shape}; expected {grid * grid} "
                             f"positions of width {dim}.")
  table = table.reshape(grid * grid, dim)
  if zero_allowed and not np.any(table):
    return "none"
  for layout in ("row_col", "col_row"):
    if np.allclose(table, tables.sincos_2d(grid, dim, layout), atol=1e-5):
      return layout
  raise CheckpointMismatch(
      f"'{key}' of shape {table.shape} is neither of the references' 2-D sin-cos tables "
      f"(row/col or col/row order){' nor zero' if zero_allowed else ''}; it cannot be "
      "recomputed.")


def _need(sd: Mapping[str, np.ndarray], key: str) -> np.ndarray:
  if key not in sd:
    raise CheckpointMismatch(f"checkpoint lacks '{key}', which the arch is read from.")
  return sd[key]


def infer_config(sd: Mapping[str, np.ndarray], fmt: str, **overrides) -> tuple[ModelConfig, str]:
  """(ModelConfig, kind) read off the tensors' shapes and fixed tables. Decoder
  heads are not visible in the tensors: 16 (both references) unless overridden
  (see `recorded_decoder_heads`)."""
  n, e = _NAMES[fmt], _NAMES[fmt]["enc"]
  kind = detect_kind(sd, fmt)
  proj = _need(sd, f"{e}{n['patch_proj']}.weight")
  embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[2]
  depths, heads, windows = [], [], []
  for s in range(NUM_STAGES):
    ids = {int(m.group(1)) for k in sd
           if (m := re.match(rf"{re.escape(e)}layers\.{s}\.blocks\.(\d+)\.", k))}
    if not ids:
      raise CheckpointMismatch(f"checkpoint has no blocks for stage {s} "
                               f"(keys '{e}layers.{s}.blocks.*').")
    depths.append(max(ids) + 1)
    table = _need(sd, f"{e}layers.{s}.blocks.0.attn.relative_position_bias_table")
    heads.append(table.shape[1])
    windows.append((int(round(math.sqrt(table.shape[0]))) + 1) // 2)
  pos_key = f"{e}absolute_pos_embed"
  if pos_key not in sd:
    raise CheckpointMismatch(f"checkpoint lacks '{pos_key}', which gives the image size.")
  num_patches = sd[pos_key].shape[-2]
  grid = int(round(math.sqrt(num_patches)))
  fc1 = _need(sd, f"{e}layers.0.blocks.0.{n['fc1']}.weight")
  fields: dict[str, Any] = dict(
      embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(heads),
      window_sizes=tuple(windows), img_size=grid * patch, patch_size=patch,
      in_chans=in_chans, mlp_ratio=fc1.shape[0] / fc1.shape[1],
      pos_embed=_pos_layout(pos_key, sd[pos_key], grid, embed_dim, zero_allowed=True),
      num_classes=0, decoder_ln_eps=DECODER_LN_EPS[fmt])
  if kind == CLASSIFIER:
    fields["num_classes"] = sd[f"{n['head']}.weight"].shape[0]
  if kind == PRETRAIN:
    d = n["dec"]
    fields["decoder_dim"] = sd[f"{d}decoder_embed.weight"].shape[0]
    fields["decoder_depth"] = 1 + max(
        int(m.group(1)) for k in sd
        if (m := re.match(rf"{re.escape(d)}{n['dec_block']}\.(\d+)\.", k)))
    # Both references store the decoder's fixed table: mmpretrain (row, col),
    # the authors' MAE helper (col, row), the order of their encoder table.
    dec_key = n["decoder_pos"]
    fields["decoder_pos_embed"] = _pos_layout(
        dec_key, _need(sd, dec_key), grid // 8, fields["decoder_dim"],   # the mask grid
        zero_allowed=False)
  fields.update(overrides)
  return ModelConfig(**fields), kind


# Decoder heads of the models the authors' models_mixmim.py registers; their
# checkpoints name the model in args.model.
AUTHORS_DECODER_HEADS = {"mixmim_base": 16, "mixmim_large": 16, "mixmim_huge": 16}
# Both references' default when nothing is recorded.
DEFAULT_DECODER_HEADS = 16


def recorded_decoder_heads(checkpoint: Any) -> tuple[int | None, str]:
  """(decoder heads, where they were read) from what a checkpoint records beside
  its tensors, or (None, why not): mmengine's `meta['cfg']` (the config text),
  the authors' `args` (the model they built), or our own export's `meta['config']`."""
  if not isinstance(checkpoint, Mapping):
    return None, "the checkpoint is a bare state dict"
  meta = checkpoint.get("meta")
  if isinstance(meta, Mapping):
    text = meta.get("cfg")
    if isinstance(text, str):
      found = re.findall(r"decoder_num_heads\s*=\s*(\d+)", text)
      if found:
        return int(found[-1]), "meta['cfg'] (the mmengine config it was trained with)"
    ours = meta.get("config")
    if isinstance(ours, str) and '"decoder_heads"' in ours:
      return int(json.loads(ours)["decoder_heads"]), "meta['config'] (a mixmim_jax export)"
  args = checkpoint.get("args")
  if args is not None:
    args = vars(args) if hasattr(args, "__dict__") else args
    if isinstance(args, Mapping):
      if "decoder_num_heads" in args:
        return int(args["decoder_num_heads"]), "args.decoder_num_heads"
      model = args.get("model")
      if model in AUTHORS_DECODER_HEADS:
        return AUTHORS_DECODER_HEADS[model], f"args.model={model!r} (the authors' registry)"
  return None, "no config or args recorded in the checkpoint"


# ---------------------------------------------------------------------------
# Conversion.

def _set(tree: dict, path: tuple, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple):
  for key in path:
    tree = tree[key]
  return tree


def _to_flax(value: np.ndarray, transform: str, extra) -> np.ndarray:
  if transform == "linear":
    return value.T
  if transform == "conv":
    return value.transpose(2, 3, 1, 0)
  if transform == "token":
    return value.reshape(-1)
  if transform == "merge_vec":
    return value[extra]
  if transform == "merge_linear":
    return value.T[extra, :]
  return value


def _to_torch(value: np.ndarray, transform: str, extra, shape) -> np.ndarray:
  if transform == "linear":
    return value.T
  if transform == "conv":
    return value.transpose(3, 2, 0, 1)
  if transform == "token":
    return value.reshape(shape)
  if transform == "merge_vec":
    out = np.empty_like(value)
    out[extra] = value
    return out
  if transform == "merge_linear":
    out = np.empty_like(value)
    out[extra, :] = value
    return out.T
  return value


def _expected_torch_shape(flax_shape, transform):
  if transform in ("linear", "merge_linear"):
    return tuple(reversed(flax_shape))
  if transform == "conv":
    kh, kw, cin, cout = flax_shape
    return (cout, cin, kh, kw)
  return tuple(flax_shape)


def state_dict_to_flax(sd: Mapping[str, np.ndarray], fmt: str, cfg: ModelConfig, kind: str,
                       expected_shapes: Mapping | None = None) -> dict:
  """Flax params from a torch state dict; every checkpoint tensor must be used and
  every parameter filled. `expected_shapes` (a params tree of shapes, e.g. from
  jax.eval_shape of the model's init) makes an arch mismatch an error."""
  remaining = dict(sd)
  params: dict = {}
  missing, wrong = [], []
  for tkey, path, transform, extra in _entries(cfg, fmt, kind):
    if tkey not in remaining:
      missing.append(tkey)
      continue
    raw = np.asarray(remaining.pop(tkey), np.float32)
    if expected_shapes is not None:
      # Compare in the checkpoint's layout, before any channel permutation.
      want = _expected_torch_shape(tuple(_get(expected_shapes, path).shape), transform)
      # The mask token is (1, 1, D) in the references, (D,) here.
      fits = (raw.size == np.prod(want) if transform == "token"
              else tuple(raw.shape) == want)
      if not fits:
        wrong.append(f"{tkey}: {tuple(raw.shape)} vs model {want}")
        continue
    _set(params, path, _to_flax(raw, transform, extra))
  for key, table in {**_fixed_tables(cfg, fmt, kind), **_relative_index_keys(cfg, fmt)}.items():
    if key in remaining:
      got = remaining.pop(key)
      if got.shape != table.shape or not np.allclose(got, table, atol=1e-5):
        wrong.append(f"{key}: differs from the table this config recomputes")
  problems = []
  if missing:
    problems.append(f"missing {len(missing)} tensors: {missing[:6]}")
  if remaining:
    problems.append(f"{len(remaining)} unexpected tensors: {sorted(remaining)[:6]}")
  if wrong:
    problems.append(f"{len(wrong)} tensors of the wrong shape or value: {wrong[:6]}")
  if problems:
    raise CheckpointMismatch(
        f"the {fmt} checkpoint does not fit a {kind} model with embed_dim={cfg.embed_dim}, "
        f"depths={cfg.depths}, num_heads={cfg.num_heads}: " + "; ".join(problems) + ".")
  return params


def flax_to_state_dict(params: Mapping, cfg: ModelConfig, kind: str,
                       fmt: str = MMPRETRAIN, with_buffers: bool = True) -> dict[str, np.ndarray]:
  """A torch-layout state dict (numpy arrays) from Flax params; with_buffers adds
  the fixed tables and relative-position indices the reference modules register."""
  sd = {}
  used = set()
  for tkey, path, transform, extra in _entries(cfg, fmt, kind):
    value = np.asarray(_get(params, path), np.float32)
    shape = (1, 1, value.shape[0]) if transform == "token" else None
    sd[tkey] = _to_torch(value, transform, extra, shape)
    used.add(path)
  flat = _flatten(params)
  unused = sorted("/".join(p) for p in flat if p not in used)
  if unused:
    raise CheckpointMismatch(f"Flax params have {len(unused)} tensors with no place in a "
                             f"{fmt} {kind} checkpoint: {unused[:6]}.")
  if with_buffers:
    sd.update(_fixed_tables(cfg, fmt, kind))
    sd.update(_relative_index_keys(cfg, fmt))
  return sd


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def expected_torch_shapes(cfg: ModelConfig, fmt: str, kind: str, params_shapes: Mapping):
  """{torch key: shape} the reference would hold for a model (used in error messages
  and tests)."""
  return {tkey: _expected_torch_shape(tuple(_get(params_shapes, path).shape), t)
          for tkey, path, t, _ in _entries(cfg, fmt, kind)}
