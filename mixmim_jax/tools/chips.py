"""The accelerators this project knows, in one table: what a chip holds and
computes (HBM, peak dense FLOP/s), how JAX names it, and for Cloud TPU
generations how gcloud and libtpu name their slices.

Standard library only: the launcher (launch/) reads it on a workstation
without JAX.

Vendor figures, dense (no sparsity). TPU v4 and v5p devices are whole chips
(megacore). XLA runs float32 matmuls on TPU as bf16 passes, so TPUs have no
float32 peak here; on NVIDIA chips the float32 figure is the TF32 tensor-core
rate, which XLA uses for float32 dots by default.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_gib: float
  peak_bf16: float               # dense FLOP/s per chip (per device JAX shows)
  peak_fp32: float | None        # None: no native float32 matmul rate published
  device_kinds: tuple[str, ...]  # lower-case pieces of jax's device_kind that mean it


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
  """A Cloud TPU generation. Naming differs by generation, and the number in a
  slice's name is not always chips: v4-N and v5p-N count TensorCores (2 per
  chip, 4 chips per host); v5litepod-N (v5e) and v6e-N count chips (up to 8 on
  one host, 4 per host in larger slices)."""
  chip: Chip
  gcloud_prefix: str     # what gcloud expects before the dash
  counts: str            # "cores" (2 per chip) or "chips"
  runtime: str           # default --runtime-version / --version for JAX
  libtpu_prefix: str     # topology names for libtpu: "v5:2x2x4" is a v5p slice
  chip_config_name: str  # "megacore": one JAX device per chip
  sizes: tuple = ()      # allowed N when the list is short; else multiples of 8
  chips_per_host: int = 4
  max_single_host_chips: int = 4


TPUS = {
    "v4": TpuGeneration(Chip("TPU v4", 32, 275e12, None, ("tpu v4",)), "v4", "cores",
                        "tpu-ubuntu2204-base", "v4", "megacore"),
    "v5e": TpuGeneration(Chip("TPU v5e", 16, 197e12, None, ("tpu v5 lite", "tpu v5e")),
                         "v5litepod", "chips", "v2-alpha-tpuv5-lite", "v5e", "default",
                         sizes=(1, 4, 8, 16, 32, 64, 128, 256), max_single_host_chips=8),
    "v5p": TpuGeneration(Chip("TPU v5p", 95, 459e12, None, ("tpu v5p", "tpu v5")), "v5p",
                         "cores", "v2-alpha-tpuv5", "v5", "megacore"),
    "v6e": TpuGeneration(Chip("TPU v6e", 32, 918e12, None, ("tpu v6 lite", "tpu v6e")), "v6e",
                         "chips", "v2-alpha-tpuv6e", "v6e", "default",
                         sizes=(1, 4, 8, 16, 32, 64, 128, 256), max_single_host_chips=8),
}
GPUS = {
    "a100": Chip("NVIDIA A100", 80, 312e12, 156e12, ("a100",)),
    "h100": Chip("NVIDIA H100 SXM", 80, 989e12, 495e12, ("h100",)),
    "h200": Chip("NVIDIA H200", 141, 989e12, 495e12, ("h200",)),
}
CHIPS = {**{k: g.chip for k, g in TPUS.items()}, **GPUS}


def chip_for(device_kind: str) -> str | None:
  """The CHIPS key of a JAX device_kind ("TPU v5 lite" -> "v5e"), or None. The
  more specific names are tried first ("tpu v5 lite" before "tpu v5")."""
  kind = device_kind.lower()
  pieces = sorted(((piece, key) for key, chip in CHIPS.items() for piece in chip.device_kinds),
                  key=lambda pk: -len(pk[0]))
  return next((key for piece, key in pieces if piece in kind), None)


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Peak FLOP/s of one device for matmuls in `dtype` ('bfloat16' / 'float32')."""
  key = chip_for(device_kind)
  if key is None:
    return None
  chip = CHIPS[key]
  if dtype in ("bfloat16", "float16") or key in TPUS:
    return chip.peak_bf16
  return chip.peak_fp32
