"""One process of a local multi-process JAX run (CPU, gloo) that scores fixed
features with the kNN and few-shot probes; prints the results as JSON. Each
process holds only its own rows (rows p, p+P, ..., as the evaluation pipeline
reads them).

  python tests/probes_worker.py PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS
"""
import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
import jax  # noqa: E402

pid, nproc, port, ndev = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
jax.config.update("jax_num_cpu_devices", ndev)
jax.config.update("jax_default_matmul_precision", "highest")
if nproc > 1:
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                             process_id=pid)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_probes  # noqa: E402  (the fixed arrays and settings of the in-process tests)
from mixmim_jax.evaluation import features, fewshot, knn  # noqa: E402
from mixmim_jax.training import sharding  # noqa: E402

mesh = sharding.make_mesh(dict(data=-1, fsdp=1, model=1))
train, test = test_probes.fixed_splits(mesh)
result = dict(knn=knn.knn_accuracy(train, test, mesh, k=test_probes.K,
                                   temperature=test_probes.T),
              fewshot=fewshot.fewshot_accuracy(train, test, mesh, test_probes.SHOTS,
                                               test_probes.SEEDS, test_probes.L2))
print(json.dumps(result), flush=True)
