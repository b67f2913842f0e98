"""What the representation probes cost against the training they watch: per
image, the probes' feature function (one encoder forward) against the
pretraining step, in XLA's FLOPs and in measured time on this machine, and the
share of a run they take at a config's interval.

  python -m mixmim_jax.tools.probe_cost --config=configs/base_pretrain.py --batch=8

FLOPs come from XLA's cost analysis of both programs lowered with their block
stacks unrolled (tools/flops.py); times are medians of `--repeats` calls of
each compiled program, interleaved so both see the same machine load. The
share of the run then is

  images per round x feature time per image
  / (every_steps x batch_size x step time per image)

with the kNN and few-shot rounds counted once when they read the same splits
(they share features), and ignoring the kNN's similarity products and the
ridge solves (measured to be small: docs/PROBES.md).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mixmim_jax import cli
from mixmim_jax.evaluation import features
from mixmim_jax.model import api
from mixmim_jax.tools import flops, hlo_stats
from mixmim_jax.training import sharding
from mixmim_jax.training.plan import make_plan
from mixmim_jax.training.steps import compile_steps


def _median_seconds(fn, repeats: int) -> list[float]:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return times


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--batch", type=int, default=8, help="images per call of each program")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no-time", action="store_true", help="FLOPs only")
  args, overrides = parser.parse_known_args(argv)
  config = cli.apply_overrides(cli.load_config(args.config), overrides)
  recipe_batch = config.batch_size
  config.batch_size, config.mesh.data = args.batch, 1
  plan = make_plan(config, num_examples=10 * args.batch, num_devices=1)
  shape = (args.batch, config.data.image_size, config.data.image_size, 3)

  # FLOPs per image, both programs unrolled on one CPU device.
  step_gflop = flops.step_flops(plan, config, shape) / args.batch / 1e9
  unrolled, one_cpu = flops.unrolled_on_one_cpu(plan)
  abstract_params = api.param_shapes(unrolled.model, "encoder")["encoder"]
  fn = features.feature_fn(unrolled.model, one_cpu, config.data.mean, config.data.std)
  feature_gflop = hlo_stats.cost_flops(fn.lower(
      abstract_params, jax.ShapeDtypeStruct(shape, np.uint8))) / args.batch / 1e9
  print(f"XLA FLOPs per image: step {step_gflop:.2f} GFLOP, features {feature_gflop:.2f} "
        f"GFLOP ({feature_gflop / step_gflop:.3f} of a step)", flush=True)

  ratio = feature_gflop / step_gflop
  if not args.no_time:
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, model=1), jax.devices()[:1])
    fns = compile_steps(plan, config, mesh)
    state = fns.init(jax.random.key(0))
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    key = jax.random.key(1)
    fn = features.feature_fn(plan.model, mesh, config.data.mean, config.data.std)
    params = jax.tree.map(jnp.copy, state.params["encoder"])   # the step donates the state
    holder = {"state": state}

    def step():
      holder["state"], metrics = fns.step(holder["state"], images, key)
      return metrics
    jax.block_until_ready(step())                  # compile both first
    jax.block_until_ready(fn(params, images))
    step_s, feature_s = [], []
    for _ in range(args.repeats):                  # interleaved: the same load on both
      step_s += _median_seconds(step, 1)
      feature_s += _median_seconds(lambda: fn(params, images), 1)
    step_ms = statistics.median(step_s) / args.batch * 1e3
    feature_ms = statistics.median(feature_s) / args.batch * 1e3
    ratio = feature_ms / step_ms
    print(f"time per image on {jax.devices()[0].device_kind}: step {step_ms:.1f} ms, "
          f"features {feature_ms:.1f} ms ({ratio:.3f} of a step; {args.repeats} calls each "
          f"of {args.batch} images)", flush=True)

  for name, probe in config.get("evals", {}).items():
    if int(probe.every_steps) > 0:
      between = int(probe.every_steps) * recipe_batch
      print(f"{name}: every {probe.every_steps} steps = {between} training images at batch "
            f"{recipe_batch}; a round of R images costs R x {ratio:.3f} / {between} of the "
            "training between rounds", flush=True)


if __name__ == "__main__":
  main()
