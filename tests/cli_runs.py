"""Running `python -m mixmim_jax.main` as a user does, in tests: the
environment, a tiny config's arguments, and a trainer in the background whose
output is read line by line."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import conftest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "fashion_mnist_pretrain.py")
# Subprocesses share the tests' compilation cache: after the first, a run of the
# same tiny model starts in seconds. (The compile-interrupting test goes without.)
NO_CACHE_ENV = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=conftest.FAST_COMPILE,
                    JAX_PLATFORMS="cpu")
ENV = dict(NO_CACHE_ENV, **conftest.SUBPROCESS_CACHE_ENV)


def tiny_args(data_dir, steps=4, **extra):
  """The Fashion-MNIST recipe shrunk to seconds per step, on synthetic files."""
  args = {
      "data.fashion_mnist_dir": data_dir, "data.image_size": 32, "data.num_parallel_calls": 2,
      "model.embed_dim": 16, "model.depths": "(1,1,1,1)", "model.num_heads": "(1,1,2,2)",
      "model.window_sizes": "(4,4,2,1)", "model.decoder_dim": 32, "model.decoder_depth": 1,
      "model.decoder_heads": 2, "batch_size": 8, "num_train_steps": steps,
      "log_every_steps": 1, "image_every_steps": 0, "checkpoint_every_steps": 2,
      "checkpoint_keep": 20, "evals.knn.every_steps": -1, "evals.fewshot.every_steps": -1}
  args.update(extra)
  return [f"--config={CONFIG}"] + [f"--config.{k}={v}" for k, v in args.items()]


def run_cli(argv, timeout=600, env=None):
  return subprocess.run([sys.executable, "-m", "mixmim_jax.main"] + argv, env=env or ENV,
                        cwd=REPO, capture_output=True, text=True, timeout=timeout)


class Trainer:
  """`python -m mixmim_jax.main` in the background; a thread collects its
  output, so several can run at once."""

  def __init__(self, argv, env=None, own_session=False):
    # own_session: for a trainer a test stops with SIGSTOP. A stopped process in
    # the test runner's process group makes that group one with a stopped job:
    # once it counts as orphaned, the kernel sends SIGHUP to the whole group
    # (POSIX), which ends the pytest worker.
    self.proc = subprocess.Popen([sys.executable, "-u", "-m", "mixmim_jax.main"] + argv,
                                 env=env or ENV, cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True,
                                 start_new_session=own_session)
    self.lines: list[str] = []
    self._seen = 0                   # wait_for goes on after its last match
    self._changed = threading.Condition()
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stdout:
      with self._changed:
        self.lines.append(line)
        self._changed.notify_all()
    with self._changed:
      self.lines.append("")          # end of output
      self._changed.notify_all()

  def wait_for(self, text, timeout=300):
    """The next line holding `text` (waiting for it)."""
    deadline = time.time() + timeout
    with self._changed:
      while True:
        for i in range(self._seen, len(self.lines)):
          self._seen = i + 1
          if text in self.lines[i]:
            return self.lines[i]
        ended = self.lines and self.lines[-1] == ""
        left = deadline - time.time()
        if ended or left <= 0:
          raise AssertionError(f"never printed {text!r}:\n" + "".join(self.lines[-40:]))
        self._changed.wait(left)

  def finish(self, timeout=300):
    """(exit code, the whole output) once the process has ended."""
    self.proc.wait(timeout=timeout)
    self._reader.join(timeout=30)
    return self.proc.returncode, "".join(self.lines)
