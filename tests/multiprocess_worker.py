"""Runs two train steps of a tiny config as one process of a local multi-process
JAX run (CPU, gloo collectives); prints the losses and a params checksum as JSON.

  python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS DATA_DIR
"""
import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
import jax  # noqa: E402

pid, nproc, port, ndev, data_dir = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                    int(sys.argv[4]), sys.argv[5])
jax.config.update("jax_num_cpu_devices", ndev)
if nproc > 1:
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                             process_id=pid)

import numpy as np  # noqa: E402
from jax._src import distributed  # noqa: E402  (the coordination client's barrier)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_fixtures  # noqa: E402
from mixmim_jax.training import sharding  # noqa: E402
from mixmim_jax.training.plan import make_plan  # noqa: E402
from mixmim_jax.training.steps import compile_steps  # noqa: E402

config = train_fixtures.tiny_config(data_dir, group_size=2, batch_size=32)
config.mesh.update(dict(data=-1, fsdp=2, model=1))
mesh = sharding.make_mesh(config.mesh)
plan = make_plan(config, num_examples=1000, num_devices=jax.device_count())


def compiled_together(name, fn, *args):
  """`fn` compiled for `args`, returned once every process has compiled it.

  A loaded machine can compile one process's program tens of seconds after the
  other's; gloo gives up on a collective whose peer is 30 s late, so the
  processes meet at a barrier (10 min allowed) before running it."""
  program = fn.lower(*args).compile()
  if nproc > 1:
    distributed.global_state.client.wait_at_barrier(name, 600_000)
  return program


fns = compile_steps(plan, config, mesh)
key = jax.random.key(0)
state = compiled_together("init", fns.init, key)(key)
rng = np.random.default_rng(0)
per_process = 32 // nproc
batches = []
for _ in range(2):
  global_batch = rng.standard_normal((32, 32, 32, 3)).astype(np.float32)
  local = global_batch[pid * per_process:(pid + 1) * per_process]
  batches.append(jax.make_array_from_process_local_data(fns.batch_sharding, local))
step_key = jax.random.key(1)
step = compiled_together("step", fns.step, state, batches[0], step_key)
losses = []
for images in batches:
  state, metrics = step(state, images, step_key)
  losses.append(float(metrics["loss"]))
# Every leaf reduced to a replicated scalar, so each process can read it.
leaf_sums = jax.jit(lambda p: [x.sum() for x in jax.tree.leaves(p)],
                    out_shardings=sharding.replicated(mesh))
sums = compiled_together("sums", leaf_sums, state.params)(state.params)
print(json.dumps(dict(losses=losses, sums=[float(s) for s in sums])), flush=True)
