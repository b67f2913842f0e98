"""FLOPs of a whole train step, from XLA's cost analysis of the program before
partitioning.

XLA counts a loop body once, not once per iteration, so the count comes from
the same step with its block stacks unrolled (the same arithmetic), lowered but
not compiled: seconds, where compiling it would take minutes. It is lowered for
one CPU device, which works wherever the step is compiled for (including TPU
slices compiled ahead of time, which give no lowered cost).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mixmim_jax.tools import hlo_stats
from mixmim_jax.training import sharding
from mixmim_jax.training.plan import Plan
from mixmim_jax.training.steps import compile_steps


def abstract_step_args(plan: Plan, fns, batch_shape: tuple[int, ...], mesh):
  """ShapeDtypeStructs of what the step takes after the state: uint8 images as
  the input pipeline sends them (and labels for fine-tuning), then the key."""
  args = [jax.ShapeDtypeStruct(batch_shape, jnp.uint8, sharding=fns.batch_sharding)]
  if plan.trainer == "finetune":
    args.append(jax.ShapeDtypeStruct(batch_shape[:1], jnp.int32, sharding=fns.batch_sharding))
  args.append(jax.ShapeDtypeStruct((), jax.random.key(0).dtype,
                                   sharding=sharding.replicated(mesh)))
  return args


def unrolled_on_one_cpu(plan: Plan):
  """`plan` with its block stacks unrolled, and a one-CPU-device mesh to lower it on."""
  unrolled = dataclasses.replace(plan, model=dataclasses.replace(plan.model, scan_blocks=False))
  return unrolled, sharding.make_mesh(dict(data=1, fsdp=1, model=1), jax.devices("cpu")[:1])


def step_flops(plan: Plan, config, batch_shape: tuple[int, ...]) -> float | None:
  """FLOPs of one whole train step (all devices together)."""
  unrolled, mesh = unrolled_on_one_cpu(plan)
  fns = compile_steps(unrolled, config, mesh)
  args = abstract_step_args(unrolled, fns, batch_shape, mesh)
  return hlo_stats.cost_flops(fns.step.lower(fns.abstract_state_sharded(), *args))
