"""Every workdir and file on gs://: the whole chain (pretrain -> fine-tune ->
evaluate -> export -> predict, and the workdir lock) against a local GCS emulator (the
gcp-storage-emulator package, in memory; see tests/gcs_emulator.py).

TensorFlow's own GCS client has its endpoint compiled in and cannot be pointed
at an emulator; the runtime does not use it for workdirs: etils.epath (here
through gcsfs, EPATH_USE_TF=false) carries our files and orbax's metadata,
tensorstore carries the checkpoint arrays, and both honour an emulator. So
this test also proves that nothing in the chain writes a workdir through
TensorFlow or to the local disk.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("gcp_storage_emulator")
pytest.importorskip("gcsfs")

import conftest  # noqa: E402
from test_finetune import write_idx_split  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def emulator():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = subprocess.Popen(
      [sys.executable, os.path.join(REPO, "tests", "gcs_emulator.py"), str(port), "bucket"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 60
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      if time.time() > deadline or server.poll() is not None:
        server.kill()
        pytest.fail("the GCS emulator did not start")
      time.sleep(0.2)
  yield f"http://127.0.0.1:{port}"
  server.terminate()
  server.wait(timeout=10)


def test_the_whole_chain_on_gs(emulator, tmp_path):
  data = tmp_path / "data"
  write_idx_split(str(data), "train", 32)
  write_idx_split(str(data), "test", 13, seed=1)
  from PIL import Image  # pylint: disable=import-outside-toplevel
  photo = tmp_path / "photo.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)).save(photo)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=conftest.FAST_COMPILE,
             STORAGE_EMULATOR_HOST=emulator, TENSORSTORE_GCS_HTTP_URL=emulator,
             GOOGLE_AUTH_TOKEN_FOR_TESTING="test", EPATH_USE_TF="false",
             GOOGLE_CLOUD_PROJECT="test", **conftest.SUBPROCESS_CACHE_ENV)
  proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "gcs_chain_worker.py"),
                         str(data), str(photo)], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (r["pretrain_steps"], r["finetune_steps"], r["eval_count"]) == (2, 2, 13)
  assert len(r["top5"]) == 5 and len(set(r["top5"])) == 5
  files = r["files"]
  for expected in ("pre/config.json", "pre/images/pairs_0000002.png", "ft/config.json",
                   "ft/model_config.json", "ft/final.msgpack", "model.msgpack"):
    assert expected in files, (expected, files)
  for run in ("pre", "ft"):
    assert any(f.startswith(f"{run}/checkpoints/2/") for f in files), run
    assert any(f.startswith(f"{run}/tensorboard/events.out.tfevents.") for f in files), run
  # The workdir lock on gs://: a second holder refused, released, a stale one taken over.
  assert "gs://bucket/pre is in use by another run (host " in r["busy"], r["busy"]
  assert not [f for f in files if f.endswith("run.lock")], files
  # Nothing of it landed on the local disk.
  assert not list(cwd.iterdir())
