"""Restoring the base pretraining state (params and both AdamW moments) against
reading the same bytes, the storage's limit.

  python -m mixmim_jax.tools.restore_bench DIR      # DIR local or gs://...

writes the state once into DIR (if no checkpoint is there), then times, in this
order: reading every file of the checkpoint (cat for a local disk; etils.epath,
the client our workdirs use, for gs://) and the trainer's own restore
(Checkpointer.restore into the step's shardings, waited for). With root, the
page cache is dropped before each, so both read from the disk.
`restart_bench --cases restore` runs it for a local folder and, with
--gcs-emulator, for a local GCS emulator.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _drop_page_cache() -> bool:
  try:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:  # noqa: SIM115  (a local measurement)
      f.write("3\n")
    return True
  except OSError:
    return False


def _files(directory):
  """Every file under `directory`, walked one level at a time (epath's rglob
  refuses gs://)."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  out = []
  for child in epath.Path(directory).iterdir():
    out.extend(_files(child) if child.is_dir() else [child])
  return out


def _read_all(directory: str) -> tuple[int, float]:
  """(bytes, seconds) to read every file: cat locally, epath on gs://."""
  files = _files(directory)
  started = time.perf_counter()
  if directory.startswith("gs://"):
    size = sum(len(p.read_bytes()) for p in files)
  else:
    size = sum(os.path.getsize(p) for p in files)
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
  return size, time.perf_counter() - started


def measure(directory: str) -> str:
  import jax  # pylint: disable=import-outside-toplevel
  from mixmim_jax.training import checkpointing, recipes, sharding  # pylint: disable=import-outside-toplevel
  from mixmim_jax.training.plan import make_plan  # pylint: disable=import-outside-toplevel
  from mixmim_jax.training.steps import compile_steps  # pylint: disable=import-outside-toplevel
  config = recipes.pretrain_defaults()
  config.batch_size = 8
  plan = make_plan(config, 1281167, jax.device_count())
  fns = compile_steps(plan, config, sharding.make_mesh(config.mesh))
  ckpt = checkpointing.Checkpointer(directory, keep=1, async_save=False)
  if ckpt.latest_step() is None:
    state = fns.init(jax.random.key(0))
    # A trained state's moments are not the zeros of a fresh one (which
    # compress to nothing): give them values.
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state.opt_state))))
    state = state.replace(opt_state=jax.tree.map(
        lambda x: x + 1e-3 * jax.random.normal(next(keys), x.shape, x.dtype)
        if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) else x, state.opt_state))
    ckpt.save(1, state, {"note": "restore_bench"}, force=True)
    ckpt.wait()
  step_dir = f"{ckpt.directory}/{ckpt.latest_step()}"
  dropped = _drop_page_cache()
  size, read_s = _read_all(step_dir)
  _drop_page_cache()
  started = time.perf_counter()
  state, _ = ckpt.restore(ckpt.latest_step(), fns.abstract_state_sharded())
  jax.block_until_ready(state)
  restore_s = time.perf_counter() - started
  ckpt.close()
  count = sum(x.size for x in jax.tree.leaves(state.params))
  return (f"restore {directory}: {size / 2**30:.2f} GiB in {len(_files(step_dir))} files "
          f"(base state: {count / 1e6:.2f} M params + 2 AdamW moments); read every file "
          f"{read_s:.1f} s ({size / 2**20 / read_s:.0f} MiB/s); restore {restore_s:.1f} s "
          f"({size / 2**20 / restore_s:.0f} MiB/s); restore / read {restore_s / read_s:.2f}"
          f"{'' if dropped else ' (page cache not dropped: not root)'}")


def report(root: str, gcs_emulator: bool) -> str:
  """Runs `measure` in fresh processes: a local folder, and a GCS emulator."""
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  lines = [_measure_in_process(os.path.join(root, "restore"), env)]
  if gcs_emulator:
    import socket  # pylint: disable=import-outside-toplevel
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "gcs_emulator.py"),
                               str(port), "bucket"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
      time.sleep(3)
      url = f"http://127.0.0.1:{port}"
      gcs = dict(env, STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
                 GOOGLE_AUTH_TOKEN_FOR_TESTING="test", EPATH_USE_TF="false",
                 GOOGLE_CLOUD_PROJECT="test")
      lines.append(_measure_in_process("gs://bucket/restore", gcs))
    finally:
      server.terminate()
      server.wait(timeout=30)
  return "\n".join(lines)


def _measure_in_process(directory: str, env) -> str:
  proc = subprocess.run([sys.executable, "-m", "mixmim_jax.tools.restore_bench", directory],
                        cwd=REPO, env=env, capture_output=True, text=True)
  if proc.returncode != 0:
    raise SystemExit(f"restore_bench {directory} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
  return proc.stdout.strip().splitlines()[-1]


if __name__ == "__main__":
  print(measure(sys.argv[1]), flush=True)
