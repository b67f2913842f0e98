"""Models by name (mixmim_jax.weights.hub, downloads.py): the registry against
mmpretrain's own installed metafile, and downloads from a local HTTP server on
127.0.0.1 of checkpoints that mmpretrain built, under registry entries made for
the test: a good file is cached and converted once and not fetched again; a
wrong hash, a connection cut mid-file, a full disk and Ctrl-C (in this process
and as SIGINT to another) leave nothing in the cache; a machine with neither
network nor cache gets one sentence naming the file and where it goes; the
mirror; and a cached model loads in a process where `import torch` fails."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mixmim_jax.model import api  # noqa: E402
from mixmim_jax.tools import torch_reference as ref  # noqa: E402
from mixmim_jax.weights import downloads, hub, sources
import hub_fixtures as hf  # noqa: E402
from conftest import SUBPROCESS_CACHE_ENV  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
CLS, PRE = "test-tiny-cls_in1k", "test-tiny-pre_in1k"


@pytest.fixture(scope="module")
def server():
  s = hf.FileServer()
  yield s
  s.stop()


@pytest.fixture(scope="module")
def checkpoints():
  return hf.mmpretrain_checkpoints()


@pytest.fixture()
def home(tmp_path, monkeypatch):
  """An empty cache, no mirror."""
  monkeypatch.setenv(hub.HOME_ENV, str(tmp_path / "cache"))
  monkeypatch.delenv(downloads.MIRROR_ENV, raising=False)
  return tmp_path / "cache"


def publish(server, monkeypatch, name, kind, data, mode="ok", wrong_hash=False):
  """Serves `data` under an openmmlab-style file name and registers `name` for it."""
  file = hf.published_name(name, data, wrong_hash)
  url = server.serve(f"/mmselfsup/1.x/{name}/{file}", data, mode)
  entry = hf.entry(name, kind, url)
  monkeypatch.setitem(hub.REGISTRY, name.lower(), entry)
  return entry


def one_sentence(message: str) -> bool:
  return message.endswith(".") and re.search(r"[^.]\.\s+[A-Z]", message) is None


def cache_files(home) -> list[str]:
  return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()) \
      if home.exists() else []


# ------------------------------------------------------------------ registry

def test_registry_equals_mmpretrains_metafile():
  """Every MixMIM model of mmpretrain's ModelHub (its installed metafile.yml),
  field by field, and no other."""
  ref.import_mmpretrain()
  import mmpretrain  # pylint: disable=import-outside-toplevel
  from mmpretrain.apis.model import ModelHub  # pylint: disable=import-outside-toplevel
  ModelHub._register_mmpretrain_models()  # pylint: disable=protected-access
  theirs = {k: m for k, m in ModelHub._models_dict.items()  # pylint: disable=protected-access
            if m.in_collection == "MixMIM"}
  assert sorted(theirs) == sorted(m.name.lower() for m in hub.MODELS) == sorted(hub.REGISTRY)
  assert hub.list_models() == mmpretrain.list_models("mixmim")
  mim = os.path.join(os.path.dirname(mmpretrain.__file__), ".mim")
  for name, m in theirs.items():
    ours = hub.REGISTRY[name]
    assert ours.name == m.name and ours.url == m.weights
    assert ours.params == m.metadata.parameters and ours.flops == m.metadata.flops
    assert (ours.epochs, ours.batch_size) == (m.metadata.epochs, m.metadata.batch_size)
    assert ours.dataset == m.metadata.training_data
    assert os.path.join(mim, ours.config_file) == m.config
    if m.results is None:
      assert ours.top1 is None and ours.kind == "pretrain"
    else:
      [result] = m.results
      assert result.task == "Image Classification" and result.dataset == ours.dataset
      assert ours.top1 == result.metrics["Top 1 Accuracy"] and ours.kind == "classifier"
    assert m.weights.endswith(f"-{ours.sha256}.pth") and len(ours.sha256) == 8
    print(f"\n{ours.name}: {ours.kind}, {ours.params:,} params, sha256 {ours.sha256}...")


def test_registry_models_have_the_published_parameter_counts():
  """The configs the registry builds have mmpretrain's counts (which include
  the fixed sin-cos tables it registers as parameters)."""
  for entry in hub.MODELS:
    cfg = entry.model_config()
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(api.param_shapes(cfg, entry.kind)))
    count += cfg.patch_grid ** 2 * cfg.embed_dim
    if entry.kind == "pretrain":
      count += cfg.num_mask_cells * cfg.decoder_dim
    assert count == entry.params, entry.name


def test_names_patterns_and_unknown_names():
  assert hub.list_models("mixmim_") == ["mixmim_mixmim-base_16xb128-coslr-300e_in1k"]
  assert hub.list_models("*coslr-100e") == ["mixmim-base_mixmim-pre_8xb128-coslr-100e_in1k"]
  assert hub.list_models("swin") == []
  assert hub.lookup("MixMIM-Base_mixmim-pre_8xb128-coslr-100e_in1k").kind == "classifier"
  with pytest.raises(hub.UnknownModel) as e:
    hub.lookup("mixmim-base_mixmim-pre_8xb128-coslr-100e")
  assert "the closest are 'mixmim-base_mixmim-pre_8xb128-coslr-100e_in1k'" in str(e.value)
  assert "--list" in str(e.value) and one_sentence(str(e.value))
  # Sources: a near-miss name is an error, paths and far-off words are paths.
  with pytest.raises(hub.UnknownModel):
    hub.entry_for("mixmim_mixmim-base_16xb128-coslr-300e")
  assert hub.entry_for("runs/ft") is None and hub.entry_for("model.msgpack") is None
  assert hub.entry_for("mixmim_mixmim-base_16xb128-coslr-300e_in1k").kind == "pretrain"


# ------------------------------------------------------------------ downloads

def test_good_file_is_cached_converted_and_not_fetched_again(server, checkpoints, home,
                                                           monkeypatch, tmp_path, capsys):
  entry = publish(server, monkeypatch, CLS, "classifier", checkpoints["classifier"])
  before = len(server.requests)
  loaded = hub.get_model(CLS)
  pth, converted = hub.cache_paths(entry)
  assert cache_files(home) == sorted(f"checkpoints/{p.name}" for p in (pth, converted))
  assert pth.read_bytes() == checkpoints["classifier"]
  assert server.requests[before:] == ["/" + entry.url.split("/", 3)[3]]
  err = capsys.readouterr().err
  assert f"downloading {pth.name}" in err and "MiB" in err and "converted once" in err
  # What was converted is what the converter makes of the file, with its class names.
  direct = tmp_path / "direct.pth"
  direct.write_bytes(checkpoints["classifier"])
  expected, _ = sources.read(str(direct))
  assert loaded.kind == "classifier" and loaded.config == expected.config
  assert loaded.classes == hf.FASHION == expected.classes
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(expected.params)):
    np.testing.assert_array_equal(a, b)
  # Again, and by the generic reader: no request, the params file is read.
  again = hub.get_model(CLS)
  also, where = sources.read(CLS)
  assert len(server.requests) == before + 1 and where == f"published model {CLS}"
  assert again.classes == also.classes == hf.FASHION
  for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(loaded.params)):
    np.testing.assert_array_equal(a, b)


def test_a_hash_mismatch_is_refused_and_nothing_is_cached(server, checkpoints, home,
                                                         monkeypatch):
  publish(server, monkeypatch, CLS, "classifier", checkpoints["classifier"], wrong_hash=True)
  with pytest.raises(downloads.ChecksumMismatch) as e:
    hub.get_model(CLS, progress=False)
  message = str(e.value)
  print(f"\n{message}")
  assert "not the published file" in message and "nothing was cached" in message
  assert one_sentence(message)
  assert cache_files(home) == []


@pytest.mark.parametrize("stop", ["cut", "ctrl-c", "disk-full"])
def test_a_stopped_download_leaves_nothing(server, checkpoints, home, monkeypatch, stop):
  entry = publish(server, monkeypatch, f"{CLS}-{stop}", "classifier", checkpoints["classifier"],
                  mode="cut" if stop == "cut" else "ok")
  seen = []

  def progress(done, total):
    seen.append((done, total))
    assert any(p.name.startswith(".") and ".part-" in p.name for p in home.rglob("*"))
    if stop == "ctrl-c":
      raise KeyboardInterrupt
    if stop == "disk-full":
      raise OSError(errno.ENOSPC, "No space left on device")

  if stop == "ctrl-c":
    with pytest.raises(KeyboardInterrupt):
      hub.get_model(entry.name, progress=progress)
  else:
    with pytest.raises(downloads.DownloadError) as e:
      hub.get_model(entry.name, progress=progress)
    print(f"\n{e.value}")
    assert "stopped after" in str(e.value) and "nothing was kept" in str(e.value)
    if stop == "disk-full":
      assert "No space left on device" in str(e.value)
  assert seen and seen[0][1] == len(checkpoints["classifier"])
  assert cache_files(home) == []
  assert list(home.rglob("*.part-*")) == []


def test_sigint_to_a_downloading_process_leaves_nothing(server, checkpoints, tmp_path,
                                                       monkeypatch):
  """Ctrl-C as a user sends it: SIGINT to a process stalled mid-file."""
  entry = publish(server, monkeypatch, f"{CLS}-sigint", "classifier",
                  checkpoints["classifier"], mode="stall")
  home = tmp_path / "cache"
  env = dict(os.environ, PYTHONPATH=f"{ROOT}:{TESTS}", **{hub.HOME_ENV: str(home)})
  env.pop(downloads.MIRROR_ENV, None)
  proc = subprocess.Popen([sys.executable, os.path.join(TESTS, "hub_worker.py"), "get",
                           json.dumps(dataclasses.asdict(entry))], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
        p.stat().st_size > 0 for p in home.rglob("*.part-*")):
      assert proc.poll() is None, proc.communicate()
      time.sleep(0.05)
    partial = [p.stat().st_size for p in home.rglob("*.part-*")]
    assert partial and 0 < partial[0] < len(checkpoints["classifier"])
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode != 0 and "KeyboardInterrupt" in err
  assert cache_files(home) == []


def test_a_killed_downloads_temporary_file_goes_with_the_next_download(server, checkpoints,
                                                                      home, monkeypatch):
  """SIGKILL (or a trainer's second Ctrl-C, which ends the process at once)
  leaves no chance to clean up: the next download of the file does it."""
  entry = publish(server, monkeypatch, CLS, "classifier", checkpoints["classifier"])
  pth, _ = hub.cache_paths(entry)
  pth.parent.mkdir(parents=True)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  left = pth.parent / f".{pth.name}.part-{socket.gethostname()}-{dead.pid}"
  left.write_bytes(b"half a file")
  elsewhere = pth.parent / f".{pth.name}.part-another-host-{os.getpid()}"
  elsewhere.write_bytes(b"maybe still downloading there")
  hub.get_model(CLS, progress=False)
  assert not left.exists() and elsewhere.exists()
  os.utime(elsewhere, (time.time() - 2 * downloads.STALE_S,) * 2)
  pth.unlink()
  hub.get_model(CLS, progress=False)          # from the params file: nothing to download
  assert elsewhere.exists()
  hub.cache_paths(entry)[1].unlink()
  hub.get_model(CLS, progress=False)
  assert not elsewhere.exists()


def test_no_network_and_no_cache_says_what_to_put_where(home, monkeypatch, tmp_path):
  # The real classifier, with its mirror an empty folder (this machine cannot
  # reach download.openmmlab.com, and the tests never try).
  empty = tmp_path / "empty_mirror"
  empty.mkdir()
  monkeypatch.setenv(downloads.MIRROR_ENV, str(empty))
  name = "mixmim-base_mixmim-pre_8xb128-coslr-100e_in1k"
  entry = hub.lookup(name)
  with pytest.raises(downloads.DownloadError) as e:
    hub.get_model(name, progress=False)
  message = str(e.value)
  print(f"\n{message}")
  assert entry.file_name in message and entry.url in message
  assert f"put that file into {home / 'checkpoints'}/" in message
  assert downloads.MIRROR_ENV in message and "pretrained=PATH" in message
  assert one_sentence(message) and cache_files(home) == []
  # Without a mirror: the URL's own host (here a local port nothing listens on).
  monkeypatch.delenv(downloads.MIRROR_ENV)
  monkeypatch.setitem(hub.REGISTRY, CLS.lower(), hf.entry(
      CLS, "classifier", f"http://127.0.0.1:{hf.free_port()}/x/{CLS}_20991231-0badf00d.pth"))
  with pytest.raises(downloads.DownloadError, match=r"cannot download .* put that file into"):
    hub.get_model(CLS, progress=False)
  assert cache_files(home) == []


def test_mirror_as_a_folder_and_as_a_url(server, checkpoints, home, monkeypatch, tmp_path):
  entry = publish(server, monkeypatch, PRE, "pretrain", checkpoints["pretrain"])
  folder = tmp_path / "mirror"
  folder.mkdir()
  (folder / entry.file_name).write_bytes(checkpoints["pretrain"])
  monkeypatch.setenv(downloads.MIRROR_ENV, str(folder))
  before = len(server.requests)
  loaded = hub.get_model(PRE, progress=False)
  assert len(server.requests) == before            # the URL's host was never asked
  assert loaded.kind == "pretrain" and loaded.config.decoder_heads == 2   # from meta['cfg']
  # A mirror URL replaces the host and path of the published URL.
  for p in home.rglob("*"):
    if p.is_file():
      p.unlink()
  server.serve(f"/our-mirror/{entry.file_name}", checkpoints["pretrain"])
  monkeypatch.setenv(downloads.MIRROR_ENV, server.url("/our-mirror/"))
  hub.get_model(PRE, progress=False)
  assert server.requests[before:] == [f"/our-mirror/{entry.file_name}"]


def test_a_file_put_into_the_cache_by_hand_is_checked(checkpoints, home, monkeypatch):
  entry = hf.entry(CLS, "classifier", f"http://127.0.0.1:{hf.free_port()}/x/"
                   + hf.published_name(CLS, checkpoints["classifier"], wrong_hash=True))
  monkeypatch.setitem(hub.REGISTRY, CLS.lower(), entry)
  pth, converted = hub.cache_paths(entry)
  pth.parent.mkdir(parents=True)
  pth.write_bytes(checkpoints["classifier"])
  with pytest.raises(downloads.ChecksumMismatch, match="is not the published file of"):
    hub.get_model(CLS)
  assert pth.exists() and not converted.exists()     # the user's file is left to the user


def test_pretrained_path_is_used_unchecked_and_must_be_that_model(checkpoints, tmp_path,
                                                                 monkeypatch, home):
  monkeypatch.setitem(hub.REGISTRY, CLS.lower(), hf.entry(CLS, "classifier", "http://x/a-0.pth"))
  monkeypatch.setitem(hub.REGISTRY, PRE.lower(), hf.entry(PRE, "pretrain", "http://x/b-0.pth"))
  path = tmp_path / "any_name.pth"
  path.write_bytes(checkpoints["classifier"])
  loaded = hub.get_model(CLS, pretrained=str(path))
  assert loaded.kind == "classifier" and loaded.classes == hf.FASHION
  with pytest.raises(ValueError, match=r"holds a classifier model, but test-tiny-pre_in1k is "
                                       r"a pretrain model"):
    hub.get_model(PRE, pretrained=path)
  fresh = hub.get_model(PRE, pretrained=False)
  assert fresh.kind == "pretrain" and fresh.config == hf.TINY_PRE
  assert cache_files(home) == []


def test_conversion_without_torch_says_how(server, checkpoints, home, monkeypatch):
  entry = publish(server, monkeypatch, CLS, "classifier", checkpoints["classifier"])
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ValueError, match=r"downloaded but not yet converted, which needs torch "
                                       r"once"):
    hub.get_model(CLS, progress=False)
  assert cache_files(home) == [f"checkpoints/{entry.file_name}"]   # the checked download stays


def test_a_cached_model_loads_where_torch_cannot_be_imported(server, checkpoints, home,
                                                           monkeypatch, tmp_path):
  skimage_data = pytest.importorskip("skimage.data")
  from PIL import Image  # pylint: disable=import-outside-toplevel
  photo = str(tmp_path / "chelsea.jpg")
  Image.fromarray(skimage_data.chelsea()).save(photo, quality=95)
  entry = publish(server, monkeypatch, CLS, "classifier", checkpoints["classifier"])
  from mixmim_jax import inference  # pylint: disable=import-outside-toplevel
  here = inference.inference_model(CLS, photo)         # downloads and converts (with torch)
  requests = len(server.requests)
  env = dict(os.environ, PYTHONPATH=f"{ROOT}:{TESTS}", JAX_PLATFORMS="cpu",
             **SUBPROCESS_CACHE_ENV, **{hub.HOME_ENV: str(home)})
  out = subprocess.run([sys.executable, os.path.join(TESTS, "hub_worker.py"), "infer",
                        json.dumps(dataclasses.asdict(entry)), photo, "--no-torch"],
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  there = json.loads(out.stdout.strip().splitlines()[-1])
  assert there["torch_importable"] is False and there["torch_loaded"] is False
  assert len(server.requests) == requests
  assert there["pred_label"] == here["pred_label"] and there["pred_class"] == here["pred_class"]
  np.testing.assert_allclose(there["pred_scores"], here["pred_scores"], rtol=0, atol=1e-6)
