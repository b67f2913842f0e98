"""Start-up joins the distributed runtime wherever JAX's own cluster detection
finds an environment, with what JAX derives, and stays one process elsewhere.

The Cloud TPU VM case runs JAX's real detection against a fake GCE metadata
server on 127.0.0.1 (JAX reads its address from GCE_METADATA_IP); only the
"is this a TPU VM" flag, which JAX sets from the PCI bus at import, is patched.
"""
from __future__ import annotations

import http.server
import os
import threading

import jax
import pytest
from jax._src.clusters import cloud_tpu_cluster, cluster

from mixmim_jax.training import distributed

# Four workers of a v4-32, in the metadata server's old name:id:ip format.
ENDPOINTS = ",".join(f"w-{i}:{i}:10.130.0.{11 + i}" for i in range(4))


class _Metadata(http.server.BaseHTTPRequestHandler):
  answers: dict[str, str] = {}
  requests: list[str] = []

  def do_GET(self):  # noqa: N802
    key = self.path.rsplit("/", 1)[-1]
    self.requests.append(key)
    ok = (self.headers.get("Metadata-Flavor") == "Google" and key in self.answers)
    body = (self.answers[key] if ok else "not found").encode()
    self.send_response(200 if ok else 404)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    pass


@pytest.fixture
def clean_env(monkeypatch):
  """No cluster variables from the machine that runs the tests."""
  for name in list(os.environ):
    if name.startswith(("SLURM_", "TPU_", "MEGASCALE_", "OMPI_", "KUBERNETES_", "MIXMIM_",
                        "JAX_COORDINATOR")):
      monkeypatch.delenv(name)
  return monkeypatch


@pytest.fixture
def metadata(clean_env):
  """A GCE metadata server on 127.0.0.1 and a process that looks like a TPU VM."""
  _Metadata.answers, _Metadata.requests = {}, []
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
  server.timeout = 5
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  clean_env.setenv("GCE_METADATA_IP", f"127.0.0.1:{server.server_address[1]}")
  clean_env.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
  clean_env.setattr(cluster, "running_in_cloud_tpu_vm", True)
  yield _Metadata
  server.shutdown()
  server.server_close()
  assert len(_Metadata.requests) < 100      # bounded: no retry loop ran away


@pytest.fixture
def calls(monkeypatch):
  """jax.distributed.initialize, recorded instead of run."""
  made = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: made.append(kw))
  return made


@pytest.mark.parametrize("slices", [None, (2, 1)])
def test_a_cloud_tpu_vm_joins_through_its_metadata(metadata, calls, slices):
  """Worker 2 of a 4-host slice (and of the second of two slices): the
  coordinator is worker 0 of slice 0 on JAX's port, the process id counts
  across slices."""
  metadata.answers = {"agent-worker-number": "2", "worker-network-endpoints": ENDPOINTS,
                      "tpu-env": "ACCELERATOR_TYPE: 'v4-32'\nWORKER_ID: '2'\n"}
  if slices:
    num, slice_id = slices
    metadata.answers["tpu-env"] += (f"MEGASCALE_NUM_SLICES: '{num}'\n"
                                    f"MEGASCALE_SLICE_ID: '{slice_id}'\n"
                                    "MEGASCALE_COORDINATOR_ADDRESS: '10.130.0.11:8080'\n")
  start = distributed.join()
  expected = dict(coordinator_address="10.130.0.11:8482", num_processes=8 if slices else 4,
                  process_id=6 if slices else 2, local_device_ids=None)
  assert calls == [expected]
  assert start.environment.startswith("Cloud TPU VM")
  assert start.describe() == (f"Cloud TPU VM (GCE metadata server): process "
                              f"{expected['process_id']} of {expected['num_processes']}, "
                              "coordinator 10.130.0.11:8482")
  assert {"agent-worker-number", "worker-network-endpoints"} <= set(metadata.requests)


def test_a_tpu_vm_without_a_slice_in_its_metadata_stays_one_process(metadata, calls):
  """A TPU VM whose metadata has no agent-worker-number (JAX retries 6 times,
  0.5 s apart) is no multi-host slice."""
  assert distributed.join() is None
  assert calls == []


def test_gke_tpu_pods_join_through_their_variables(metadata, clean_env, calls):
  metadata.answers = {"tpu-env": ""}   # no MEGASCALE coordinator: worker 0 is
  clean_env.setenv("TPU_WORKER_HOSTNAMES", "10.8.0.4,10.8.0.5,10.8.0.6,10.8.0.7")
  clean_env.setenv("TPU_WORKER_ID", "3")
  start = distributed.join()
  assert calls == [dict(coordinator_address="10.8.0.4:8482", num_processes=4, process_id=3,
                        local_device_ids=None)]
  assert start.environment.startswith("GKE TPU pod")


def test_slurm_jobs_join_with_one_gpu_per_process(clean_env, calls):
  """JAX's Slurm rule: the first node of the step, a port from the job id, and
  one local device per process (srun --ntasks-per-node=GPUs)."""
  for name, value in dict(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="gpu[003-004],gpu007",
                          SLURM_NTASKS="16", SLURM_PROCID="9", SLURM_LOCALID="1").items():
    clean_env.setenv(name, value)
  start = distributed.join()
  port = 4242 % 4096 + 65535 - 4096 + 1
  assert calls == [dict(coordinator_address=f"gpu003:{port}", num_processes=16, process_id=9,
                        local_device_ids=[1])]
  assert start.describe().endswith("local devices [1]")


def test_explicit_flags_are_used_as_given(clean_env, calls):
  start = distributed.join("gpu-0:8476", 2, 1)
  assert calls == [dict(coordinator_address="gpu-0:8476", num_processes=2, process_id=1,
                        local_device_ids=None)]
  assert start.environment == "explicit flags"


@pytest.mark.parametrize("num, pid, message", [
    (0, 0, "num_processes=0 / process_id=0; set both"),
    (2, -1, "num_processes=2 / process_id=-1; set both"),
    (2, 2, "process_id=2 with num_processes=2; expected 0 ... 1"),
])
def test_explicit_flags_must_be_complete(clean_env, calls, num, pid, message):
  with pytest.raises(ValueError, match=message):
    distributed.join("gpu-0:8476", num, pid)
  assert calls == []


def test_a_plain_machine_runs_one_process(clean_env, calls, caplog):
  with caplog.at_level("INFO"):
    assert distributed.join() is None
  assert calls == []
  assert "no cluster environment found" in caplog.text and "Slurm" in caplog.text
