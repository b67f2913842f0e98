"""Time and money per ImageNet-1k epoch of MixMIM-B pretraining, from FLOPs.

  python -m launch.cost                      # the table in launch/README.md
  python -m launch.cost --train-gflop-per-image=X --mfu=0.35

The FLOPs, the MFU and the epochs are assumptions a reader can change; every
price names its source (PRICES). The README shows the same arithmetic. Replace
the FLOPs estimate by the per-step figure that `python -m mixmim_jax.aot`
prints (divided by the global batch) once it exists.
"""

import argparse
import dataclasses
from typing import List

from launch.accelerators import parse_accelerator

IMAGENET_TRAIN_IMAGES = 1_281_167

# Encoder forward at 224 px: 16.35 GMAC = 32.7 GFLOP (a multiply-add is 2 flops).
ENCODER_FWD_GFLOP = 2 * 16.35

# Decoder: 8 ViT blocks of width 512 on 2 x 49 tokens (the two unmixed images).
DEC_WIDTH, DEC_DEPTH, DEC_TOKENS = 512, 8, 2 * 49
ENC_WIDTH, PATCH_PIXELS = 1024, 32 * 32 * 3


def decoder_fwd_gflop() -> dict:
  d, n = DEC_WIDTH, DEC_TOKENS
  parts = {
      # qkv + out projections (4 d^2) and the MLP (8 d^2) per token, 2 flops per MAC.
      "blocks": 2 * n * 12 * d * d * DEC_DEPTH,
      # q k^T and attn v, per image of 49 tokens.
      "attention": 2 * 2 * 2 * (n // 2) ** 2 * d * DEC_DEPTH,
      # encoder -> decoder embedding on the 49 mixed tokens.
      "embed": 2 * (n // 2) * ENC_WIDTH * d,
      # pixel prediction head on all 98 tokens.
      "head": 2 * n * d * PATCH_PIXELS,
  }
  return {k: v / 1e9 for k, v in parts.items()}


def train_gflop_per_image() -> float:
  """Forward + backward ~ 3 x forward."""
  return 3 * (ENCODER_FWD_GFLOP + sum(decoder_fwd_gflop().values()))


# USD per chip-hour. Read on 2026-12-07 from SkyPilot's GCP catalog, which its fetcher
# (sky/catalog/data_fetchers/fetch_gcp.py) fills from Google's Cloud Billing Catalog
# API, the SKUs behind https://cloud.google.com/tpu/pricing. The catalog prices whole
# slices; each figure here is a slice price divided by its chips. Spot ("Preemptible"
# SKUs) differs by region by up to 3x (v5e: $0.21 us-central1, $0.47 us-west4, $0.60
# us-east5; v6e: $0.65 us-central1, $1.08 us-east5, $1.89 us-south1): check your zone.
CATALOG = ("github.com/skypilot-org/skypilot-catalog catalogs/v7/gcp/vms.csv at commit "
           "017e2502, read 2026-12-07")


@dataclasses.dataclass(frozen=True)
class Price:
  on_demand: float
  spot: float
  region: str
  row: str      # the CATALOG row they come from: slice, $/hour on-demand / Spot, chips


PRICES = {
    "v4": Price(3.22, 0.9215, "us-central2", "tpu-v4-8: $12.88 / $3.686, 4 chips"),
    "v5e": Price(1.20, 0.21298, "us-central1", "tpu-v5litepod-1: $1.20 / $0.21298, 1 chip"),
    "v5p": Price(4.20, 1.68, "us-central1",
                 "tpu-v5p-12288: $25,804.80 / $10,321.92, 6144 chips"),
    "v6e": Price(2.70, 0.64833, "us-central1", "tpu-v6e-1: $2.70 / $0.64833, 1 chip"),
}


@dataclasses.dataclass(frozen=True)
class Row:
  slice: str
  chips: int
  peak_tflops: float
  seconds_per_epoch: float
  chip_hours_per_epoch: float
  on_demand_usd: float
  spot_usd: float


def estimate(accelerator: str, gflop_per_image: float, mfu: float) -> Row:
  acc = parse_accelerator(accelerator)
  peak = acc.peak_bf16_tflops
  epoch_flop = IMAGENET_TRAIN_IMAGES * gflop_per_image * 1e9
  seconds = epoch_flop / (acc.chips * peak * 1e12 * mfu)
  chip_hours = acc.chips * seconds / 3600
  price = PRICES[acc.generation]
  return Row(accelerator, acc.chips, peak, seconds, chip_hours,
             chip_hours * price.on_demand, chip_hours * price.spot)


def table(slices: List[str], gflop_per_image: float, mfu: float, epochs: int = 300) -> str:
  lines = [
      "| slice | chips | peak bf16 TFLOP/s/chip | time/epoch | chip-hours/epoch "
      "| on-demand $/epoch | Spot $/epoch | " + f"{epochs} epochs (on-demand / Spot) |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for name in slices:
    r = estimate(name, gflop_per_image, mfu)
    lines.append(
        f"| {r.slice} | {r.chips} | {r.peak_tflops:g} | {r.seconds_per_epoch:.0f} s "
        f"| {r.chip_hours_per_epoch:.3f} | {r.on_demand_usd:.2f} | {r.spot_usd:.2f} "
        f"| {r.seconds_per_epoch * epochs / 3600:.1f} h: ${r.on_demand_usd * epochs:,.0f} "
        f"/ ${r.spot_usd * epochs:,.0f} |")
  return "\n".join(lines)


def price_table() -> str:
  """Every price the cost table uses, with the CATALOG row it comes from."""
  lines = [f"Prices from {CATALOG}:", "",
           "| generation | region | on-demand $/chip-hour | Spot $/chip-hour "
           "| catalog row: $/hour on-demand / Spot |",
           "|---|---|---|---|---|"]
  for gen, p in PRICES.items():
    lines.append(f"| {gen} | {p.region} | {p.on_demand:.2f} | {p.spot:.4g} | {p.row} |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(prog="python -m launch.cost", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--train-gflop-per-image", type=float, default=None)
  p.add_argument("--mfu", type=float, default=0.40)
  p.add_argument("--epochs", type=int, default=300)
  p.add_argument("slices", nargs="*", default=["v4-32", "v5e-64"])
  a = p.parse_args()
  g = a.train_gflop_per_image or train_gflop_per_image()
  print(f"training GFLOP per image: {g:.1f}, MFU {a.mfu:.0%}\n")
  print(table(a.slices, g, a.mfu, a.epochs))
  print()
  print(price_table())


if __name__ == "__main__":
  main()
