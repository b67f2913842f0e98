"""What the hub tests share: a local HTTP server on 127.0.0.1 that serves
checkpoint files (whole, cut mid-file, or stalled mid-file), tiny MixMIM
checkpoints built and saved by mmpretrain itself, and registry entries for them.

The server answers at most MAX_REQUESTS requests and holds a stalled answer
at most STALL_S seconds, so a test that goes wrong cannot hang the run."""
from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading

from mixmim_jax.model.arch import model_config
from mixmim_jax.weights import hub

MAX_REQUESTS = 100
STALL_S = 20.0

# The tiny MixMIM of ENVIRONMENT.md: 64 px, a 2 x 2 mask grid (2 of 4 cells masked).
TINY_FIELDS = dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8),
                   window_sizes=(8, 8, 4, 2), img_size=64, decoder_dim=64, decoder_depth=1,
                   decoder_heads=2)
TINY_CLS = model_config(dict(TINY_FIELDS), num_classes=10)
TINY_PRE = model_config(dict(TINY_FIELDS), num_classes=0)
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")


class _Handler(http.server.BaseHTTPRequestHandler):
  timeout = 30

  def log_message(self, *args):  # keep test output quiet
    pass

  def do_GET(self):  # noqa: N802 (the stdlib's name)
    server = self.server
    with server.lock:
      server.requests.append(self.path)
      over = len(server.requests) > MAX_REQUESTS
    body = server.files.get(self.path)
    if over or body is None:
      self.send_error(503 if over else 404)
      return
    mode = server.modes.get(self.path, "ok")
    self.send_response(200)
    self.send_header("Content-Type", "application/octet-stream")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if mode == "ok":
      self.wfile.write(body)
      return
    self.wfile.write(body[:len(body) // 2])
    self.wfile.flush()
    if mode == "stall":
      server.release.wait(STALL_S)
    self.close_connection = True
    self.connection.shutdown(socket.SHUT_RDWR)      # "cut": the connection drops mid-file


class FileServer:
  """serve(path, data, mode) then url(path); `requests` lists every GET."""

  def __init__(self):
    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    self.httpd.daemon_threads = True
    self.httpd.files, self.httpd.modes, self.httpd.requests = {}, {}, []
    self.httpd.lock, self.httpd.release = threading.Lock(), threading.Event()
    self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.1),
                                   daemon=True)
    self.thread.start()

  @property
  def requests(self) -> list[str]:
    return self.httpd.requests

  def serve(self, path: str, data: bytes, mode: str = "ok") -> str:
    self.httpd.files[path], self.httpd.modes[path] = data, mode
    return self.url(path)

  def url(self, path: str) -> str:
    return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

  def stop(self) -> None:
    self.httpd.release.set()
    self.httpd.shutdown()
    self.httpd.server_close()
    self.thread.join(10)


def free_port() -> int:
  """A port nothing listens on (bound, then released)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def published_name(stem: str, data: bytes, wrong_hash: bool = False) -> str:
  """`stem_YYYYMMDD-<8 hex>.pth` as openmmlab names its files."""
  digest = hashlib.sha256(data).hexdigest()[:8]
  if wrong_hash:
    digest = f"{(int(digest, 16) + 1) % 16**8:08x}"
  return f"{stem}_20991231-{digest}.pth"


def entry(name: str, kind: str, url: str) -> hub.ModelEntry:
  cfg = TINY_CLS if kind == "classifier" else TINY_PRE
  fields = {k: getattr(cfg, k) for k in (*TINY_FIELDS, "num_classes")}
  return hub.ModelEntry(name=name, kind=kind, url=url, params=0, flops=0, top1=None, epochs=1,
                        batch_size=1, dataset="test", config_file="", model=fields)


def mmpretrain_checkpoints(seed: int = 0) -> dict[str, bytes]:
  """{'classifier': .pth bytes, 'pretrain': .pth bytes} of the tiny arch, built
  by mmpretrain, random weights, saved as mmengine saves them (a state dict and
  meta: the classifier records its class names, the pretraining model its
  config text, from which the decoder heads are read)."""
  import torch  # pylint: disable=import-outside-toplevel
  from mixmim_jax.tools import torch_reference as ref  # pylint: disable=import-outside-toplevel
  import torch_helpers as th  # pylint: disable=import-outside-toplevel
  out = {}
  for kind, cfg, build, meta in (
      ("classifier", TINY_CLS, ref.build_classifier,
       {"dataset_meta": {"classes": FASHION}}),
      ("pretrain", TINY_PRE, ref.build_pretrain_model,
       {"cfg": "model = dict(neck=dict(type='MixMIMPretrainDecoder', decoder_num_heads=2))"})):
    model = build(cfg)
    th.randomize_(model, seed, "row_col", cfg)
    buffer = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "meta": meta}, buffer)
    out[kind] = buffer.getvalue()
  return out
