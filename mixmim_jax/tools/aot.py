"""Compile the real sharded train step for a Cloud TPU slice on any x86-64
machine (no TPU needed) and say whether it fits, what it computes and what it
sends between chips.

  pip install -r requirements-tpu.txt        # jax[tpu]: brings libtpu
  python -m mixmim_jax.aot --config=configs/base_pretrain.py --topology=v5e:8x8 \
      [--batch-per-chip=32] [--json=out.json] [--config.model.remat=True]

(also for fine-tuning configs: their step is compiled instead)

Reports, per chip: HBM the program needs (arguments + outputs + temporaries,
less donated buffers) against the chip's HBM with the 10 % headroom we ask for,
FLOPs per step, and the bytes of every collective in the compiled HLO, checked
against what data parallelism (one all-reduce of the gradients) and FSDP
(gather the sharded parameters, reduce-scatter their gradients) need at least.
A program too big for HBM fails to compile with RESOURCE_EXHAUSTED; that is
reported as "does not fit" with XLA's message.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# libtpu takes /tmp/libtpu_lockfile so that two processes never drive one TPU;
# compiling touches no TPU, so let several compiles (and tests) run side by side.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from mixmim_jax import cli  # noqa: E402
from mixmim_jax.tools import chips, flops, hlo_stats, report  # noqa: E402
from mixmim_jax.training import sharding
from mixmim_jax.training.plan import make_plan  # noqa: E402
from mixmim_jax.training.steps import compile_steps  # noqa: E402

HEADROOM = 0.10
# ImageNet-1k's training set: only the schedule's length depends on it.
NUM_EXAMPLES = 1_281_167
# Topology name prefixes: the chip table's keys and libtpu's names ("v5" = v5p).
_PREFIXES = {**{k: k for k in chips.TPUS}, **{g.libtpu_prefix: k for k, g in chips.TPUS.items()}}


def parse_topology(name: str) -> tuple[str, str, tuple[int, ...]]:
  """'v5e:8x8' -> ('v5e', 'v5e:8x8', (8, 8)); 'v5p:2x2x4' is spelt 'v5:2x2x4' for libtpu."""
  m = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+){1,2})", name or "")
  if not m or m.group(1) not in _PREFIXES:
    raise ValueError(f"--topology={name!r}; expected GEN:AxB[xC] with GEN one of "
                     f"{sorted(_PREFIXES)}, e.g. v5e:8x8, v4:2x2x4, v5:2x4x4.")
  gen, dims = _PREFIXES[m.group(1)], tuple(int(d) for d in m.group(2).split("x"))
  return gen, chips.TPUS[gen].libtpu_prefix + ":" + m.group(2), dims


def topology_devices(name: str, chip_config_name: str | None = None, wrap=None):
  """The devices of a TPU slice, described by libtpu (compilation only)."""
  gen, libtpu_name, dims = parse_topology(name)
  chip_config_name = chip_config_name or chips.TPUS[gen].chip_config_name
  # 4 chips per host (2x2) on every generation's multi-host slices.
  bounds = (2, 2, 1) if all(d >= 2 for d in dims[:2]) else (1, 1, 1)
  topo = topologies.get_topology_desc(
      platform="tpu", topology_name=libtpu_name, chip_config_name=chip_config_name,
      chips_per_host_bounds=bounds, num_slices=1,
      wrap=tuple(wrap) if wrap else (False, False, False))
  return topo.devices


def _param_bytes(abstract_params, shardings) -> dict[str, int]:
  """float32 bytes of the parameters, split by whether FSDP shards them."""
  out = dict(all=0, fsdp_sharded=0, replicated=0)
  for leaf, s in zip(jax.tree.leaves(abstract_params), jax.tree.leaves(shardings)):
    nbytes = int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
    out["all"] += nbytes
    out["fsdp_sharded" if "fsdp" in jax.tree.leaves(tuple(s.spec)) else "replicated"] += nbytes
  return out


def communication_checks(stats, params: dict[str, int], mesh_shape: dict[str, int]) -> dict:
  """Collective bytes per chip against the least the parallelism needs.

  Data parallel: each chip all-reduces every gradient once (float32), so
  all-reduce bytes / parameter bytes should be ~1. FSDP over F chips: the
  sharded parameters are gathered (result = their full size) once for the
  forward pass and, unless XLA keeps them, again for the backward pass; their
  gradients are reduce-scattered once (operand = full size); what stays
  replicated is all-reduced as in data parallelism.
  """
  ar = stats["all-reduce"].operand_bytes
  checks = dict(param_bytes=params["all"],
                all_reduce_over_param_bytes=ar / params["all"] if params["all"] else None)
  if mesh_shape.get("fsdp", 1) > 1 and params["fsdp_sharded"]:
    sharded = params["fsdp_sharded"]
    checks.update(
        fsdp_sharded_param_bytes=sharded,
        all_gather_result_over_sharded=stats["all-gather"].result_bytes / sharded,
        reduce_scatter_operand_over_sharded=stats["reduce-scatter"].operand_bytes / sharded,
        # Replicated grads all-reduced whole; sharded grads' shards across 'data'.
        ideal_all_reduce_bytes=params["replicated"] + (
            sharded // mesh_shape["fsdp"] if mesh_shape.get("data", 1) > 1 else 0))
  return checks


def compile_for_topology(config, topology: str, batch_per_chip: int | None = None,
                         chip_config_name: str | None = None, wrap=None,
                         hlo_path: str | None = None) -> dict:
  gen, _, _ = parse_topology(topology)
  chip = chips.TPUS[gen].chip
  devices = topology_devices(topology, chip_config_name, wrap)
  n = len(devices)
  if batch_per_chip:
    config.batch_size = batch_per_chip * n
  mesh = sharding.make_mesh(config.mesh, devices)
  plan = make_plan(config, max(NUM_EXAMPLES, config.batch_size), n)
  fns = compile_steps(plan, config, mesh)
  cfg = plan.model
  batch_shape = (config.batch_size, cfg.img_size, cfg.img_size, cfg.in_chans)
  args = flops.abstract_step_args(plan, fns, batch_shape, mesh)
  params = _param_bytes(fns.abstract_state.params, fns.state_shardings.params)
  result = dict(
      kind="aot", topology=topology, device_kind=devices[0].device_kind, chips=n,
      chip=chip.name, hbm_bytes_per_chip=int(chip.hbm_gib * 2 ** 30),
      mesh=dict(mesh.shape), arch=config.arch, image_size=cfg.img_size,
      batch=config.batch_size, batch_per_chip=config.batch_size // n, dtype=cfg.dtype,
      remat=cfg.remat, num_params=params["all"] // 4, jax_version=jax.__version__)
  t0 = time.perf_counter()
  lowered = fns.step.lower(fns.abstract_state_sharded(), *args)
  t1 = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    message = str(e)
    if "RESOURCE_EXHAUSTED" not in message:
      raise
    result.update(lower_s=t1 - t0, compile_s=time.perf_counter() - t1, fits=False,
                  error=message.strip().splitlines()[0][:2000])
    return result
  t2 = time.perf_counter()
  memory = hlo_stats.memory_bytes(compiled)
  total_flops = flops.step_flops(plan, config, batch_shape)
  per_chip = total_flops / n if total_flops else None
  hlo = compiled.as_text()
  if hlo_path:
    epath.Path(hlo_path).write_text(hlo)
  stats = hlo_stats.collective_stats(hlo)
  budget = chip.hbm_gib * 2 ** 30
  result.update(
      lower_s=t1 - t0, compile_s=t2 - t1, memory=memory,
      hbm_used_fraction=memory["total"] / budget,
      fits=memory["total"] <= (1 - HEADROOM) * budget,
      flops_per_chip=per_chip,
      flops_per_step=total_flops,
      train_gflop_per_image=total_flops / config.batch_size / 1e9 if total_flops else None,
      collectives=hlo_stats.as_dict(stats),
      checks=communication_checks(stats, params, dict(mesh.shape)))
  return result


def _gib(x):
  return f"{x / 2 ** 30:.2f} GiB"


def report_lines(r: dict) -> list[str]:
  lines = [f"{r['topology']} ({r['chips']} x {r['device_kind']}), mesh {r['mesh']}: arch "
           f"{r['arch']} at {r['image_size']} px, batch {r['batch']} ({r['batch_per_chip']} per "
           f"chip), {r['dtype']}, remat {r['remat']}, {r['num_params'] / 1e6:.2f} M params",
           f"compile: lower {r['lower_s']:.1f} s + compile {r['compile_s']:.1f} s"]
  if "error" in r:
    return lines + [f"DOES NOT FIT: {r['error']}"]
  m = r["memory"]
  verdict = "fits" if r["fits"] else "does NOT fit"
  lines += [f"HBM per chip: {_gib(m['total'])} of {_gib(r['hbm_bytes_per_chip'])} "
            f"({100 * r['hbm_used_fraction']:.1f} %; {verdict} with {100 * HEADROOM:.0f} % "
            f"headroom) = arguments {_gib(m['argument'])} + outputs {_gib(m['output'])} + "
            f"temporaries {_gib(m['temp'])} - aliased {_gib(m['alias'])}"]
  if r["flops_per_chip"]:
    lines.append(f"FLOPs per step: {r['flops_per_chip'] / 1e12:.2f} TFLOP per chip, "
                 f"{r['flops_per_step'] / 1e12:.1f} TFLOP in all = "
                 f"{r['train_gflop_per_image']:.1f} GFLOP per image")
  lines.append("collectives per chip per step (executions, operand -> result bytes):")
  for kind, s in r["collectives"].items():
    if s["count"]:
      dtypes = ", ".join(f"{d} {n / 2**20:.1f} MiB"
                         for d, n in sorted(s["operand_dtypes"].items()))
      lines.append(f"  {kind:18s} x{s['count']:<4d} {s['operand_bytes'] / 2**20:10.1f} MiB -> "
                   f"{s['result_bytes'] / 2**20:10.1f} MiB  (in: {dtypes})")
  c = r["checks"]
  lines.append(f"all-reduce operand bytes / float32 parameter bytes "
               f"({c['param_bytes'] / 2**20:.1f} MiB): {c['all_reduce_over_param_bytes']:.3f}")
  if "fsdp_sharded_param_bytes" in c:
    lines.append(f"FSDP-sharded parameters {c['fsdp_sharded_param_bytes'] / 2**20:.1f} MiB: "
                 f"all-gather result / that = {c['all_gather_result_over_sharded']:.2f} "
                 f"(1 = gathered once, 2 = again for backward), reduce-scatter operand / "
                 f"that = {c['reduce_scatter_operand_over_sharded']:.2f} (ideal 1); ideal "
                 f"all-reduce {c['ideal_all_reduce_bytes'] / 2**20:.1f} MiB")
  return lines


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m mixmim_jax.aot", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="configs/*.py[:arg]")
  p.add_argument("--topology", required=True,
                 help="e.g. v5e:8x8, v4:2x2x4, v5:2x2x4 (v5p), v6e:4x4")
  p.add_argument("--batch-per-chip", type=int, default=None,
                 help="global batch = this x chips (default: the config's batch_size)")
  p.add_argument("--chip-config", default=None,
                 help="libtpu chip_config_name (default: megacore on v4/v5p, else default)")
  p.add_argument("--wrap", default=None,
                 help="torus wrap per axis, e.g. 1,1,0 (default: no wrap)")
  p.add_argument("--json", default=None, help="write the report here")
  p.add_argument("--hlo", default=None, help="write the compiled HLO text here")
  return p.parse_known_args(argv)


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  args, overrides = parse_args(argv)
  config = cli.apply_overrides(cli.load_config(args.config), overrides)
  wrap = [bool(int(x)) for x in args.wrap.split(",")] if args.wrap else None
  result = compile_for_topology(config, args.topology, args.batch_per_chip, args.chip_config,
                                wrap, args.hlo)
  return report.publish(result, report_lines(result),
                        "python -m mixmim_jax.aot " + " ".join(argv), args.json)


if __name__ == "__main__":
  sys.exit(cli.command(main))
