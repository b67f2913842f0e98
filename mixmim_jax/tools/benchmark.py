"""Speed of the pretraining step (and of the input pipeline) on this machine.

  python -m mixmim_jax.benchmark --config=configs/base_pretrain.py --batch=8 --steps=10 \
      [--reference] [--json=out.json] [--config.model.dtype=bfloat16]
  python -m mixmim_jax.benchmark --kernels --reference --config=configs/base_pretrain.py \
      --image-size=224 --batch=8
  python -m mixmim_jax.benchmark --input-only --config=configs/base_pretrain.py \
      --synthetic-jpegs=512 --batch=64 [--reference] [--profile-input]

Times the real sharded, donating train step (`compile_train_step`, compiled
ahead of time so compile time is measured apart) on the current backend and
prints step time, images/s, XLA's FLOPs per step, achieved FLOP/s, MFU on
accelerators, memory and compile time, next to the FLOP/s of one large float32
matmul measured in the same run (what this backend can do at best).

--reference also times mmpretrain 1.2.0's MixMIM (same model config, image size,
batch, float32, AdamW step included) in the same process, in rounds that
alternate with JAX's, with torch given as many threads as XLA's CPU client uses. With
--reference-allocator=glibc torch runs in a child process without LD_PRELOAD,
so `LD_PRELOAD=libtcmalloc_minimal.so.4 python -m mixmim_jax.benchmark ...`
times each framework on the allocator it is faster with here.

--input-only times the host input pipeline instead (with --reference against
mmpretrain's DataLoader on the same JPEGs; input_bench.py).

--kernels times the step's matrix products one by one instead (kernel_bench.py),
in JAX and with --reference in torch: what the products alone cost per step.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mixmim_jax import cli  # noqa: E402
from mixmim_jax.tools import chips, flops, hlo_stats, input_bench, report  # noqa: E402
from mixmim_jax.training import sharding
from mixmim_jax.training.plan import make_plan  # noqa: E402
from mixmim_jax.training.steps import compile_steps  # noqa: E402

# Whole models by name: --arch sets encoder and decoder as mmpretrain builds them.
# "tiny" is the smallest MixMIM mmpretrain runs (ENVIRONMENT.md), for 64 px.
ARCH_PRESETS = {
    "tiny": dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8),
                 window_sizes=(8, 8, 4, 2), patch_size=4, decoder_dim=64,
                 decoder_depth=1, decoder_heads=2),
}
for _name in ("base", "large", "huge"):
  ARCH_PRESETS[_name] = dict(embed_dim=None, depths=None, num_heads=None,
                             window_sizes=(14, 14, 14, 7), patch_size=4, decoder_dim=512,
                             decoder_depth=8, decoder_heads=16)


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m mixmim_jax.benchmark", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="configs/*.py[:arg]")
  p.add_argument("--steps", type=int, default=10, help="timed steps (per framework)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  p.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
  p.add_argument("--image-size", type=int, default=None)
  p.add_argument("--arch", choices=sorted(ARCH_PRESETS), default=None,
                 help="whole model (encoder + decoder) by name; default: the config's")
  p.add_argument("--num-devices", type=int, default=None,
                 help="run on the first N devices only (default: all)")
  p.add_argument("--reference", action="store_true",
                 help="also time mmpretrain's MixMIM (with --input-only: its input "
                      "pipeline) in alternating rounds")
  p.add_argument("--reference-allocator", choices=("same", "glibc"), default="same",
                 help="with --reference: 'same' runs torch in this process (on whatever "
                      "allocator it has); 'glibc' runs it in its own process with LD_PRELOAD "
                      "dropped, so JAX keeps a preloaded tcmalloc while torch runs on glibc's "
                      "malloc, each on the allocator it is faster with here (BENCHMARKS.md)")
  p.add_argument("--rounds", type=int, default=2,
                 help="with --reference: alternating JAX / torch rounds, --steps split evenly "
                      "between them (--input-only: --steps batches in each round)")
  p.add_argument("--matmul-size", type=int, default=2048,
                 help="n of the n x n x n float32 matmul timed for comparison; 0: skip")
  p.add_argument("--input-only", action="store_true",
                 help="time the input pipeline (decode + augment) instead of the step")
  p.add_argument("--synthetic-jpegs", type=int, default=0,
                 help="with --input-only: write this many ImageNet-sized JPEGs to a temp "
                      "folder and read them (data.source=folder)")
  p.add_argument("--pipeline", choices=input_bench.PIPELINES, default=None,
                 help="with --input-only: the pretraining or fine-tuning input (default: "
                      "the config's trainer's)")
  p.add_argument("--profile-input", action="store_true",
                 help="with --input-only: also time our pipeline's stages one by one on one "
                      "core (decode, crop + resize, tf.data)")
  p.add_argument("--kernels", action="store_true",
                 help="time the step's matrix products one by one instead (with "
                      "--reference: in torch too); see kernel_bench.py")
  p.add_argument("--profile", default=None,
                 help="after timing, trace 2 steps into this directory and print the "
                      "busy time per kind of op and model part")
  p.add_argument("--json", default=None, help="write the results here")
  args, rest = p.parse_known_args(argv)
  return args, rest


def build_config(args, overrides):
  config = cli.load_config(args.config)
  if args.arch is not None:
    config.arch = "base" if args.arch == "tiny" else args.arch
    for key, value in ARCH_PRESETS[args.arch].items():
      if key in config.model:          # fine-tuning configs have no decoder fields
        config.model[key] = value
  if args.image_size is not None:
    config.data.image_size = args.image_size
  if args.batch is not None:
    config.batch_size = args.batch
  cli.apply_overrides(config, overrides)
  config.num_train_steps = 10_000   # the schedule's length does not change the cost
  if config.trainer == "finetune":  # evaluation batches are not timed
    config.eval_batch_size = config.batch_size
  return config


def host_threads() -> int:
  """Threads XLA's CPU client runs on: every CPU this process may use."""
  return input_bench.cores()



# ------------------------------------------------------------------ matmul
def time_matmul(n: int, repeats: int = 5) -> dict:
  """FLOP/s of one jitted n x n x n float32 matmul (default precision)."""
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(k, (n, n), jnp.float32) for k in keys)
  f = jax.jit(jnp.matmul)
  jax.block_until_ready(f(a, b))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - t0)
  best = statistics.median(times)
  return dict(size=n, **input_bench.summary(times), flops_per_s=2 * n ** 3 / best)


def time_torch_matmul(n: int, repeats: int = 5) -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  a, b = torch.randn(n, n), torch.randn(n, n)
  torch.mm(a, b)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    torch.mm(a, b)
    times.append(time.perf_counter() - t0)
  return dict(size=n, **input_bench.summary(times),
              flops_per_s=2 * n ** 3 / statistics.median(times))


# ------------------------------------------------------------------ JAX step
class JaxStep:
  """The compiled train step of a config (pretraining, or fine-tuning for a
  fine-tuning config) with its state and one fixed batch on device."""

  def __init__(self, config, devices):
    mesh = sharding.make_mesh(config.mesh, devices)
    self.plan = make_plan(config, num_examples=config.batch_size * 1000,
                          num_devices=len(devices))
    cfg = self.plan.model
    fns = compile_steps(self.plan, config, mesh)
    shape = (config.batch_size, cfg.img_size, cfg.img_size, cfg.in_chans)
    t0 = time.perf_counter()
    lowered = fns.step.lower(fns.abstract_state_sharded(),
                             *flops.abstract_step_args(self.plan, fns, shape, mesh))
    t1 = time.perf_counter()
    self.compiled = lowered.compile()
    t2 = time.perf_counter()
    self.lower_s, self.compile_s = t1 - t0, t2 - t1
    self.flops_per_step = flops.step_flops(self.plan, config, shape)
    self.state = fns.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    self.host_images = rng.integers(0, 256, shape, dtype=np.uint8)  # as the pipeline sends
    # What the step takes after the state.
    args = [jax.device_put(self.host_images, fns.batch_sharding)]
    if self.plan.trainer == "finetune":
      labels = rng.integers(0, cfg.num_classes, shape[:1]).astype(np.int32)
      args.append(jax.device_put(labels, fns.batch_sharding))
    self.step_args = (*args, jax.random.key(1))
    self.num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.state.params))
    self.devices = devices

  def run(self, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      self.state, metrics = self.compiled(self.state, *self.step_args)
      jax.block_until_ready((self.state, metrics))
      times.append(time.perf_counter() - t0)
    self.last_loss = float(metrics["loss"])
    return times


# ------------------------------------------------------------------ reference
class TorchStep:
  """mmpretrain 1.2.0's MixMIM with an AdamW step, on the same images."""

  def __init__(self, config, plan, host_images_nhwc, threads: int):
    import torch  # pylint: disable=import-outside-toplevel
    from mixmim_jax.tools import torch_reference  # pylint: disable=import-outside-toplevel
    self.torch = torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    self.model = torch_reference.build_pretrain_model(plan.model, config.norm_pix).train()
    o = config.optim
    # One parameter group: the wd split changes which tensors decay, not the cost.
    trained = [p for p in self.model.parameters() if p.requires_grad]
    self.opt = torch.optim.AdamW(trained, lr=plan.lr, betas=(o.b1, o.b2), eps=o.eps,
                                 weight_decay=o.weight_decay)
    # uint8 as its DataLoader sends them; each step normalises them, as its
    # data_preprocessor does on the device (and ours inside the step).
    self.images = torch.from_numpy(np.ascontiguousarray(host_images_nhwc.transpose(0, 3, 1, 2)))
    self.mean = torch.tensor(config.data.mean, dtype=torch.float32).view(1, 3, 1, 1)
    self.std = torch.tensor(config.data.std, dtype=torch.float32).view(1, 3, 1, 1)
    # Trained parameters (the sin-cos tables are frozen Parameters in mmpretrain).
    self.num_params = sum(p.numel() for p in trained)
    self.framework = "mmpretrain 1.2.0 / torch " + torch.__version__
    self.allocator = "the same as JAX (one process)"

  def run(self, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      self.opt.zero_grad(set_to_none=True)
      images = (self.images.float() - self.mean) / self.std
      loss = self.model.loss(images, None)["loss"]
      loss.backward()
      self.opt.step()
      times.append(time.perf_counter() - t0)
    self.last_loss = loss.item()
    return times


class TorchStepProcess:
  """TorchStep in a child process started without LD_PRELOAD: torch then runs
  on glibc's malloc while this process keeps a preloaded one. XLA:CPU is 9 %
  faster on tcmalloc and torch 33 % slower (BENCHMARKS.md), so one process
  cannot give both frameworks their best allocator. Same interface as
  TorchStep; rounds still alternate, one process waiting while the other runs."""

  def __init__(self, config, plan, host_images_nhwc, threads: int):
    import multiprocessing  # pylint: disable=import-outside-toplevel
    context = multiprocessing.get_context("spawn")    # a fresh interpreter, fresh env
    self._conn, child_end = context.Pipe()
    # Only what TorchStep reads, in picklable form.
    plan_view = _PlanView(model=plan.model, lr=plan.lr)
    saved = os.environ.pop("LD_PRELOAD", None)
    try:
      self._process = context.Process(
          target=_serve_torch_steps, daemon=True,
          args=(child_end, config.to_dict(), plan_view, host_images_nhwc, threads))
      self._process.start()
    finally:
      if saved is not None:
        os.environ["LD_PRELOAD"] = saved
    child_end.close()
    info = self._reply()
    self.framework, self.num_params = info["framework"], info["num_params"]
    self.child_ld_preload = info["ld_preload"]
    self.allocator = "glibc (own process)" if not info["ld_preload"] else info["ld_preload"]

  def _reply(self):
    kind, value = self._conn.recv()
    if kind == "error":
      raise RuntimeError(f"the torch reference process failed:\n{value}")
    return value

  def run(self, steps: int) -> list[float]:
    self._conn.send(steps)
    times, self.last_loss = self._reply()
    return times

  def close(self):
    self._conn.send(None)
    self._process.join(timeout=60)


@dataclasses.dataclass(frozen=True)
class _PlanView:
  model: Any
  lr: float


def _serve_torch_steps(conn, config_dict, plan_view, host_images_nhwc, threads):
  """The child's loop: build TorchStep, then run `steps` per request until None."""
  import traceback  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  try:
    step = TorchStep(ml_collections.ConfigDict(config_dict), plan_view, host_images_nhwc,
                     threads)
    conn.send(("ok", dict(framework=step.framework, num_params=step.num_params,
                          ld_preload=os.environ.get("LD_PRELOAD"))))
    while (steps := conn.recv()) is not None:
      times = step.run(steps)
      conn.send(("ok", (times, step.last_loss)))
  except Exception:  # pylint: disable=broad-except  (reported to the parent)
    conn.send(("error", traceback.format_exc()))


# ------------------------------------------------------------------ the step benchmark
class HostUsage:
  """This process's page faults and CPU seconds inside `with` blocks, summed.

  On CPU the step's working memory is allocated afresh each step (XLA's CPU
  client mallocs it, glibc maps it anew); first-touch page faults then show up
  as system time."""

  def __init__(self):
    self.totals = dict(minor_faults=0, system_s=0.0, user_s=0.0)

  @staticmethod
  def _now():
    import resource  # pylint: disable=import-outside-toplevel  (POSIX only)
    u = resource.getrusage(resource.RUSAGE_SELF)
    return dict(minor_faults=u.ru_minflt, system_s=u.ru_stime, user_s=u.ru_utime)

  def __enter__(self):
    self._start = self._now()
    return self

  def __exit__(self, *exc):
    end = self._now()
    for k in self.totals:
      self.totals[k] += end[k] - self._start[k]

  def per_step(self, steps: int) -> dict:
    import resource  # pylint: disable=import-outside-toplevel
    return dict({k: v / steps for k, v in self.totals.items()},
                page_bytes=resource.getpagesize())


def _peak_memory(devices, compiled) -> dict:
  stats = [d.memory_stats() for d in devices]
  if stats and all(stats) and all("peak_bytes_in_use" in s for s in stats):
    return dict(source="device.memory_stats",
                peak_bytes_per_device=max(s["peak_bytes_in_use"] for s in stats))
  m = hlo_stats.memory_bytes(compiled)
  return dict(source="compiled.memory_analysis",
              peak_bytes_per_device=m["total"] if m else None, analysis=m)


def benchmark_step(config, steps: int, warmup: int, reference: bool = False, rounds: int = 2,
                   matmul_size: int = 2048, num_devices: int | None = None,
                   profile_dir: str | None = None, reference_allocator: str = "same") -> dict:
  """Times the train step (and optionally the reference); returns the JSON record."""
  finetuning = config.trainer == "finetune"
  if finetuning and reference:
    raise ValueError("--reference times mmpretrain's pretraining step; it has no "
                     "fine-tuning counterpart here. Drop --reference for a fine-tuning config.")
  threads = host_threads()
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  device = devices[0]
  result = dict(
      kind=f"{config.task}_step" if finetuning else "train_step",
      backend=jax.default_backend(), device_kind=device.device_kind,
      num_devices=len(devices), host_threads=threads, jax_version=jax.__version__,
      arch=config.arch, image_size=config.data.image_size, batch=config.batch_size,
      dtype=config.model.dtype, remat=bool(config.model.remat), mesh=dict(config.mesh))
  if matmul_size:
    result["matmul"] = time_matmul(matmul_size)

  js = JaxStep(config, devices)
  result.update(model=json.loads(js.plan.model.to_json()), num_params=js.num_params,
                lower_s=js.lower_s, compile_s=js.compile_s)
  per_device = js.flops_per_step / len(devices) if js.flops_per_step else None
  ref = None
  if reference:
    make = TorchStepProcess if reference_allocator == "glibc" else TorchStep
    ref = make(config, js.plan, js.host_images, threads)
    if matmul_size and make is TorchStep:
      result["torch_matmul"] = time_torch_matmul(matmul_size)
  js.run(warmup)
  if ref:
    ref.run(warmup)
  rounds = max(1, rounds if ref else 1)
  per_round = [steps // rounds + (r < steps % rounds) for r in range(rounds)]
  jax_times, torch_times, round_ratios = [], [], []
  host = HostUsage()
  for n in per_round:
    with host:
      jt = js.run(n)
    jax_times += jt
    if ref:
      tt = ref.run(n)
      torch_times += tt
      round_ratios.append(statistics.median(jt) / statistics.median(tt))

  step = input_bench.summary(jax_times)
  result["step"] = step
  result["images_per_s"] = config.batch_size / step["median_s"]
  result["loss"] = js.last_loss
  result["flops_per_step_per_device"] = per_device
  if per_device:
    result["flops_per_step"] = per_device * len(js.devices)
    result["flops_per_s_per_device"] = per_device / step["median_s"]
    if "matmul" in result:
      result["step_vs_matmul_flops"] = result["flops_per_s_per_device"] / \
          result["matmul"]["flops_per_s"]
    peak = chips.peak_flops(device.device_kind, config.model.dtype)
    if peak and result["backend"] != "cpu":
      result["peak_flops_per_s_per_device"] = peak
      result["mfu"] = result["flops_per_s_per_device"] / peak
  result["memory"] = _peak_memory(js.devices, js.compiled)
  result["host_per_step"] = host.per_step(len(jax_times))
  if profile_dir:
    from mixmim_jax.tools import profile_ops  # pylint: disable=import-outside-toplevel
    result["profile"] = profile_ops.profile(js.run, js.compiled.as_text(), profile_dir)
  if ref:
    if isinstance(ref, TorchStepProcess):
      ref.close()
    result["reference"] = dict(
        framework=ref.framework, threads=threads, allocator=ref.allocator,
        jax_ld_preload=os.environ.get("LD_PRELOAD"),
        num_params=ref.num_params, step=input_bench.summary(torch_times),
        images_per_s=config.batch_size / statistics.median(torch_times), loss=ref.last_loss)
    result["jax_over_torch_step_time"] = step["median_s"] / statistics.median(torch_times)
    result["round_ratios"] = round_ratios
  return result


# ------------------------------------------------------------------ printing
def _fmt_flops(x):
  return "n/a" if x is None else f"{x / 1e9:,.1f} GFLOP/s"


def report_lines(r: dict) -> list[str]:
  if r["kind"] == "kernels":
    from mixmim_jax.tools import kernel_bench  # pylint: disable=import-outside-toplevel
    return kernel_bench.report_lines(r)
  if r["kind"] == "input_pipeline":
    return input_bench.report_lines(r)
  s = r["step"]
  lines = [f"{r['backend']} ({r['device_kind']}) x{r['num_devices']}, {r['host_threads']} host "
           f"threads, jax {r['jax_version']}",
           f"{r['kind']}: arch {r['arch']} {r['model']['embed_dim']}/{tuple(r['model']['depths'])}, "
           f"{r['image_size']} px, batch {r['batch']}, {r['dtype']}, remat {r['remat']}, "
           f"{r['num_params'] / 1e6:.2f} M params",
           f"compile: lower {r['lower_s']:.1f} s + compile {r['compile_s']:.1f} s",
           f"step: median {s['median_s'] * 1e3:.1f} ms (min {s['min_s'] * 1e3:.1f}, "
           f"max {s['max_s'] * 1e3:.1f}, n={s['n']}); {r['images_per_s']:.2f} images/s; "
           f"loss {r['loss']:.4f}"]
  if r.get("flops_per_step_per_device"):
    lines.append(f"FLOPs/step (XLA cost analysis): {r['flops_per_step'] / 1e9:,.2f} GFLOP "
                 f"({r['flops_per_step_per_device'] / 1e9:,.2f} per device); achieved "
                 f"{_fmt_flops(r['flops_per_s_per_device'])} per device")
  if "mfu" in r:
    lines.append(f"MFU: {100 * r['mfu']:.1f} % of {r['peak_flops_per_s_per_device'] / 1e12:.0f} "
                 "TFLOP/s peak per device")
  m = r["memory"]
  if m.get("peak_bytes_per_device") is not None:
    lines.append(f"memory: {m['peak_bytes_per_device'] / 2**20:,.1f} MiB per device "
                 f"({m['source']})")
  if "host_per_step" in r:
    h = r["host_per_step"]
    touched = h["minor_faults"] * h["page_bytes"] / 2**30
    lines.append(f"host per step: {h['minor_faults']:,.0f} minor page faults "
                 f"({touched:.2f} GiB of pages first touched), "
                 f"CPU {h['user_s']:.2f} s user + {h['system_s']:.2f} s system")
  if "matmul" in r:
    mm = r["matmul"]
    lines.append(f"float32 matmul {mm['size']}^3 (jax): {_fmt_flops(mm['flops_per_s'])}"
                 + (f"; step reaches {100 * r['step_vs_matmul_flops']:.0f} % of it"
                    if "step_vs_matmul_flops" in r else ""))
  if "reference" in r:
    ref, rs = r["reference"], r["reference"]["step"]
    lines += [f"allocators: JAX {ref['jax_ld_preload'] or 'glibc'}; reference "
              f"{ref['allocator']}",
              f"reference {ref['framework']}, {ref['threads']} threads, "
              f"{ref['num_params'] / 1e6:.2f} M params: median {rs['median_s'] * 1e3:.1f} ms "
              f"(min {rs['min_s'] * 1e3:.1f}, max {rs['max_s'] * 1e3:.1f}, n={rs['n']}); "
              f"{ref['images_per_s']:.2f} images/s; loss {ref['loss']:.4f}",
              f"JAX / PyTorch step time: {r['jax_over_torch_step_time']:.3f} (per round: "
              + ", ".join(f"{x:.3f}" for x in r["round_ratios"]) + ")"]
    if "torch_matmul" in r:
      lines.append(f"float32 matmul {r['torch_matmul']['size']}^3 (torch): "
                   f"{_fmt_flops(r['torch_matmul']['flops_per_s'])}")
  if "profile" in r:
    from mixmim_jax.tools import profile_ops  # pylint: disable=import-outside-toplevel
    lines += profile_ops.report_lines(r["profile"])
  return lines


def benchmark_kernels(config, reference: bool) -> dict:
  from mixmim_jax.tools import kernel_bench  # pylint: disable=import-outside-toplevel
  if config.trainer != "pretrain":
    raise ValueError("--kernels times the pretraining model's products; give a "
                     "pretraining config (this one fine-tunes).")
  plan = make_plan(config, num_examples=config.batch_size * 1000, num_devices=1)
  return kernel_bench.benchmark_kernels(plan.model, config.batch_size, host_threads(),
                                        reference)


def main(argv=None) -> dict:
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  config = build_config(args, overrides)
  if args.kernels:
    result = benchmark_kernels(config, args.reference)
  elif args.input_only:
    with tempfile.TemporaryDirectory() as tmp:
      if args.synthetic_jpegs:
        config.data.source = "folder"
        config.data.folder = input_bench.write_synthetic_jpegs(tmp, args.synthetic_jpegs)
        config.data.split = "train"
      result = input_bench.benchmark_input(config, args.steps, args.warmup, args.pipeline,
                                           args.reference, args.rounds, args.profile_input)
  else:
    result = benchmark_step(config, args.steps, args.warmup, args.reference, args.rounds,
                            args.matmul_size, args.num_devices, args.profile,
                            args.reference_allocator)
  command = "python -m mixmim_jax.benchmark " + " ".join(sys.argv[1:] if argv is None else argv)
  return report.publish(result, report_lines(result), command, args.json)


if __name__ == "__main__":
  sys.exit(cli.command(main))
