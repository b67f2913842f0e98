"""Cloud TPU accelerator types: chips, hosts, default runtime, peak bf16 FLOP/s,
read off the project's one chip table (mixmim_jax/tools/chips.py), so the
launcher, its input checks, the cost table in launch/README.md, the benchmarks
and the AOT compiles agree on what a "v4-32" is.

Naming differs by generation, and the number in the name is not always chips:
  v4-N, v5p-N       N counts TensorCores, 2 per chip, 4 chips per host.
  v5litepod-N (v5e), v6e-N   N counts chips; up to 8 chips fit one host, larger
                     slices have 4 chips per host.
Default runtimes are the ones the Cloud TPU docs ("TPU software versions")
give for JAX: tpu-ubuntu2204-base (v4), v2-alpha-tpuv5-lite (v5e),
v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e (v6e).
"""

import dataclasses
import re

from mixmim_jax.tools import chips


class LaunchError(ValueError):
  """A bad input, said in one sentence that names the value and what was expected."""


# The TPU generations: one table for the launcher, the benchmarks and the AOT
# compiles (chips, HBM, peak FLOP/s, naming).
GENERATIONS = chips.TPUS

# "v5e-64" is what people say; gcloud only knows "v5litepod-64".
_ALIASES = {"v5e": "v5e", "v5litepod": "v5e", "v4": "v4", "v5p": "v5p", "v6e": "v6e"}


@dataclasses.dataclass(frozen=True)
class Accelerator:
  type: str        # as gcloud spells it, e.g. "v5litepod-64"
  generation: str  # key of GENERATIONS
  chips: int
  hosts: int

  @property
  def multi_host(self) -> bool:
    return self.hosts > 1

  @property
  def default_runtime(self) -> str:
    return GENERATIONS[self.generation].runtime

  @property
  def peak_bf16_tflops(self) -> float:
    return GENERATIONS[self.generation].chip.peak_bf16 / 1e12


def parse_accelerator(name: str) -> Accelerator:
  """'v4-32' -> Accelerator('v4-32', 'v4', chips=16, hosts=4)."""
  expected = ("expected v4-N or v5p-N (N a multiple of 8), or v5litepod-N / "
              "v5e-N / v6e-N (N in 1, 4, 8, 16, ..., 256)")
  m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name or "")
  if not m:
    raise LaunchError(f"Unknown accelerator type {name!r}; {expected}.")
  gen_key = _ALIASES[m.group(1)]
  gen = GENERATIONS[gen_key]
  n = int(m.group(2))
  if gen.sizes and n not in gen.sizes:
    raise LaunchError(f"Unknown accelerator type {name!r}; {gen.gcloud_prefix}-N takes N in "
                      f"{', '.join(map(str, gen.sizes))}.")
  if not gen.sizes and (n < 8 or n % 8):
    raise LaunchError(f"Unknown accelerator type {name!r}; {gen.gcloud_prefix}-N takes N a "
                      "multiple of 8 (TensorCores, 2 per chip).")
  chip_count = n // 2 if gen.counts == "cores" else n
  if chip_count <= gen.max_single_host_chips:
    hosts = 1
  else:
    hosts = chip_count // gen.chips_per_host
  return Accelerator(f"{gen.gcloud_prefix}-{n}", gen_key, chip_count, hosts)
