"""Joining a multi-process run, in every environment JAX knows how to read.

A multi-host run needs JAX's distributed runtime: without it there are no
cross-host checkpoints (orbax's async save needs its key-value store) and no
preemption sync point, so hosts could stop after different steps. Where the
runtime comes from:

  explicit   --coordinator_address/--num_processes/--process_id (or the
             MIXMIM_* variables): any cluster, e.g. GPU hosts over ssh
  detected   JAX's own cluster detection (jax._src.clusters), the code that
             jax.distributed.initialize() runs when called with no arguments:
             a Cloud TPU VM through its metadata server (`gcloud compute tpus`
             slices), GKE TPU pods through TPU_WORKER_HOSTNAMES /
             TPU_PROCESS_ADDRESSES, Slurm, Open MPI, Kubernetes
  none       one process

The detected values are computed here, logged, and passed to
jax.distributed.initialize explicitly, so the log says exactly what JAX
derived (and a test can check it without a cluster). The detection is JAX's
private module, pinned with jax in requirements.txt.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

logger = logging.getLogger(__name__)

# jax._src.clusters class name -> how the log names the environment.
ENVIRONMENTS = {
    "GkeTpuCluster": "GKE TPU pod (TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES)",
    "GceTpuCluster": "Cloud TPU VM (GCE metadata server)",
    "SlurmCluster": "Slurm (SLURM_* variables)",
    "OmpiCluster": "Open MPI (OMPI_MCA_orte_hnp_uri)",
    "K8sCluster": "Kubernetes (service account and pod spec)",
}


@dataclasses.dataclass(frozen=True)
class Start:
  """How this process joins the run."""
  environment: str
  coordinator_address: str
  num_processes: int
  process_id: int
  local_device_ids: tuple[int, ...] | None = None

  def describe(self) -> str:
    devices = ("" if self.local_device_ids is None
               else f", local devices {list(self.local_device_ids)}")
    return (f"{self.environment}: process {self.process_id} of {self.num_processes}, "
            f"coordinator {self.coordinator_address}{devices}")


def explicit(address: str, num_processes: int | None, process_id: int | None) -> Start:
  """The coordinator a user gave; both counts must come with it."""
  if not num_processes or num_processes < 1 or process_id is None or process_id < 0:
    raise ValueError(f"coordinator {address} given but num_processes={num_processes} / "
                     f"process_id={process_id}; set both (flags or MIXMIM_* env vars).")
  if process_id >= num_processes:
    raise ValueError(f"process_id={process_id} with num_processes={num_processes}; "
                     f"expected 0 ... {num_processes - 1}.")
  return Start("explicit flags", address, num_processes, process_id)


def detect(initialization_timeout: int = 300) -> Start | None:
  """What jax.distributed.initialize() would derive by itself, or None where no
  environment it knows is present (a plain local run)."""
  from jax._src import clusters  # pylint: disable=import-outside-toplevel
  # The same choice as JAX's: the first non-opt-in environment that is present.
  found = next((env for env in clusters.ClusterEnv._cluster_types   # pylint: disable=protected-access
                if not env.opt_in_only_method and env.is_env_present()), None)
  if found is None:
    return None
  address, num, pid, local_ids = clusters.ClusterEnv.auto_detect_unset_distributed_params(
      None, None, None, None, found.name, initialization_timeout)
  return Start(ENVIRONMENTS.get(found.__name__, found.__name__), address, int(num), int(pid),
               None if local_ids is None else tuple(int(i) for i in local_ids))


def join(address: str | None = None, num_processes: int | None = None,
         process_id: int | None = None) -> Start | None:
  """Starts JAX's distributed runtime where this process is one of several (or
  where a cluster environment says so); returns how, or None for one process.
  Must run before anything touches a JAX device."""
  import jax  # pylint: disable=import-outside-toplevel
  start = explicit(address, num_processes, process_id) if address else detect()
  if start is None:
    logger.info("distributed: no cluster environment found (%s, or explicit "
                "--coordinator_address); running as one process.",
                ", ".join(_short_names(ENVIRONMENTS.values())))
    return None
  logger.info("distributed: joining as %s", start.describe())
  jax.distributed.initialize(
      coordinator_address=start.coordinator_address, num_processes=start.num_processes,
      process_id=start.process_id,
      local_device_ids=None if start.local_device_ids is None else list(start.local_device_ids))
  return start


def _short_names(names: Sequence[str]) -> list[str]:
  return [n.split(" (")[0] for n in names]
