"""A workdir belongs to one run with one meaning, through the real command line
(docs/ROBUSTNESS.md lists the same cases): a second run on a busy workdir is
refused naming the first's host and pid; a lock left by a killed run does not
block the next; a resume that would change what a step means is refused
naming the field; a fine-tune keeps its model and saves before its final
evaluation; storage that fails (read-only, full, unreachable) is one sentence.
Every refusal: one sentence, exit code 1, no traceback, the workdir and every
earlier output byte for byte as before, no temporary file left.

The refusals run in one process (tests/commands_worker.py): JAX and
TensorFlow load once, and nothing is refused after compiling."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from mixmim_jax import exit_codes

from cli_runs import ENV, REPO, Trainer, run_cli, tiny_args
from train_fixtures import write_idx_split

FT_CONFIG = os.path.join(REPO, "configs", "fashion_mnist_finetune.py")
HOST = socket.gethostname()


# ------------------------------------------------------------------ helpers

def ft_args(data_dir, steps=3, **extra):
  """The Fashion-MNIST fine-tune shrunk to a tiny model from scratch."""
  args = {"arch": "base", "model.embed_dim": 16, "model.depths": "(1,1,1,1)",
          "model.num_heads": "(1,1,2,2)", "model.window_sizes": "(4,4,2,1)",
          "model.patch_size": 2, "data.fashion_mnist_dir": data_dir, "data.image_size": 32,
          "data.eval_resize": 32, "data.num_parallel_calls": 2, "data.label_fraction": 1.0,
          "batch_size": 16, "eval_batch_size": 16, "num_train_steps": steps,
          "log_every_steps": 1, "checkpoint_every_steps": 2, "optim.layer_decay": 1.0}
  args.update(extra)
  return [f"--config={FT_CONFIG}"] + [f"--config.{k}={v}" for k, v in args.items()]


def run_commands(runs, cwd=None, wrap=None, timeout=600):
  """[(module, argv)] run in one process (commands_worker.py); `wrap(command)`
  gives the shell line to run it under (a mount namespace)."""
  path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"commands-{os.getpid()}.json")
  with open(path, "w") as f:
    json.dump([dict(module=m, argv=a) for m, a in runs], f)
  command = [sys.executable, os.path.join(REPO, "tests", "commands_worker.py"), path]
  if wrap is not None:
    command = ["bash", "-c", wrap(" ".join(command))]
  proc = subprocess.run(command, env=ENV, cwd=cwd or REPO, capture_output=True, text=True,
                        timeout=timeout)
  os.remove(path)
  assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def one_sentence(result, fragment, what):
  """Exit code 1, no traceback, one error line holding `fragment`; returns it."""
  out = result["output"]
  assert result["code"] == exit_codes.ERROR, (what, result["code"], out[-3000:])
  assert "Traceback" not in out and "Event loop is closed" not in out, (what, out[-3000:])
  errors = [line for line in out.splitlines() if " ERROR " in line or line.startswith("error:")]
  assert len(errors) == 1, (what, errors or out[-3000:])
  assert fragment in errors[0], (what, fragment, errors[0])
  return errors[0]


def hashes(root) -> dict[str, str]:
  """sha256 of every file under `root` (by relative path); {} when it is absent."""
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def temporary_files(root) -> list[str]:
  return [os.path.join(folder, n) for folder, dirs, names in os.walk(root)
          for n in names + dirs if ".tmp" in n or "orbax-checkpoint-tmp" in n]


def copy(src, dst) -> str:
  shutil.copytree(src, dst, symlinks=True)
  return str(dst)


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """Fashion-MNIST-format train (64) and test (21) images with labels: the
  pretraining reads the images, the fine-tune both."""
  directory = str(tmp_path_factory.mktemp("fmnist"))
  write_idx_split(directory, "train", 64)
  write_idx_split(directory, "test", 21, seed=1)
  return directory


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
  """A pretraining workdir after 2 of its steps (a checkpoint at step 2)."""
  work = str(tmp_path_factory.mktemp("pre") / "run")
  result = run_cli(tiny_args(data_dir, steps=2) + [f"--workdir={work}"])
  assert result.returncode == 0, result.stdout[-3000:]
  return work


# ------------------------------------------------------------------ the tests

def test_one_run_per_workdir_and_one_meaning_per_run(tmp_path, data_dir, pretrained):
  """A second run on a busy workdir, and every resume or start that cannot
  be right, refused in one sentence; the lock of a SIGKILLed run taken over
  by the next run."""
  # The fine-tune (from scratch) saves its last checkpoint before its final evaluation.
  ft = str(tmp_path / "ft")
  code, out = Trainer(ft_args(data_dir) + [f"--workdir={ft}"]).finish()
  assert code == 0, out[-3000:]
  lines = out.splitlines()
  saved = next(i for i, l in enumerate(lines) if "checkpoint for step 3 written" in l)
  evaluated = next(i for i, l in enumerate(lines) if l.startswith("eval at step 3:"))
  assert saved < evaluated, lines[saved - 2:evaluated + 1]

  # A run that holds its workdir (stopped, so it stays alive and costs nothing).
  work = str(tmp_path / "busy")
  a = Trainer(tiny_args(data_dir, steps=100000, checkpoint_every_steps=100000,
                        log_every_steps=100000) + [f"--workdir={work}"], own_session=True)
  try:
    a.wait_for("step       1/100000")
    a.proc.send_signal(signal.SIGSTOP)
    cases, checks = _refusal_cases(tmp_path, data_dir, pretrained, ft, work, a.proc.pid)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    results = run_commands([(m, argv) for _, m, argv, _ in cases], cwd=str(cwd))
  finally:
    a.proc.kill()
    a.finish()
  for (what, _, argv, fragment), result in zip(cases, results):
    if fragment is None:
      assert result["code"] == 0, (what, result["output"][-3000:])
    else:
      one_sentence(result, fragment, what)
    checks[what](result)
  assert not list(cwd.iterdir())                    # --workdir= wrote nothing here


def _refusal_cases(tmp_path, data_dir, pretrained, ft, busy, busy_pid):
  """(what, module, argv, the sentence's fragment or None for a run that
  goes on), and per case a check of what it left."""
  main, finetune, evaluate = "mixmim_jax.main", "mixmim_jax.finetune", "mixmim_jax.evaluate"
  cases, checks = [], {}

  def case(what, module, argv, fragment, unchanged=(), check=None):
    before = {p: hashes(p) for p in unchanged}
    cases.append((what, module, argv, fragment))

    def verify(result):
      for path, was in before.items():
        assert hashes(path) == was, (what, path)
        assert not temporary_files(path), (what, path)
      if check:
        check(result)
    checks[what] = verify

  # -- one run per workdir
  # (It leaves the lock alone: the run after the SIGKILL below takes over that one.)
  case("busy workdir", main, tiny_args(data_dir) + [f"--workdir={busy}"],
       f"is in use by another run (host {HOST}, pid {busy_pid}")
  case("empty --workdir", main, tiny_args(data_dir) + ["--workdir="], "--workdir='' is empty")
  a_file = tmp_path / "a_file"
  a_file.write_text("not a folder")
  case("workdir is a file", main, tiny_args(data_dir) + [f"--workdir={a_file}"],
       f"--workdir={a_file} is a file, not a directory", unchanged=[str(tmp_path / "a_file")])
  live = _lock_of_another_host(tmp_path / "live", heartbeat_age=5)
  case("a live run on another host", main, tiny_args(data_dir) + [f"--workdir={live}"],
       "is in use by another run (host tpu-vm-7, pid 4242", unchanged=[live])
  dead = _lock_of_another_host(tmp_path / "dead", heartbeat_age=3600)
  case("a dead run's lock on another host", main,
       tiny_args(data_dir, mask_ratio=7) + [f"--workdir={dead}"], "mask_ratio=7",
       check=lambda r: (_said(r, "taking over", "(host tpu-vm-7, pid 4242) has ended (its "
                              "heartbeat stopped 60 min ago"),
                        _gone(os.path.join(dead, "run.lock"))))
  case("the busy run is SIGKILLed", "kill", [str(busy_pid)], None)
  case("a lock left by a SIGKILLed run", main, tiny_args(data_dir, steps=1)
       + [f"--workdir={busy}"], None,
       check=lambda r: (_said(r, "taking over", f"(host {HOST}, pid {busy_pid}) has ended (no "
                              f"process {busy_pid} runs there)"),
                        _gone(os.path.join(busy, "run.lock")),     # released at the end
                        _gone(os.path.join(busy, "checkpoints", "1.orbax-checkpoint-tmp"))))
  case("gs:// without network or credentials", main,
       tiny_args(data_dir) + ["--workdir=gs://mixmim-jax-test-nowhere/run"],
       "cannot use the workdir gs://mixmim-jax-test-nowhere/run")

  # -- a resume means by a step what its workdir recorded
  def resume(what, fragment, steps=2, data=data_dir, **changes):
    work = copy(pretrained, tmp_path / what.replace(" ", "_"))
    case(what, main, tiny_args(data, steps=steps, **changes) + [f"--workdir={work}"],
         fragment, unchanged=[work])
    return work

  resume("another batch", f"with batch_size=16 (its run has 8): that changes what a step "
         "means", batch_size=16)
  resume("another mask ratio and lr", "with mask_ratio=0.6 (its run has 0.5); "
         "optim.base_lr=0.01 (its run has 0.008)", mask_ratio=0.6, **{"optim.base_lr": 0.01})
  resume("another model", "with model.embed_dim=32 (its run has 16)",
         **{"model.embed_dim": 32})
  resume("another schedule", "with warmup_epochs=0.5 (its run has 0.01)", warmup_epochs=0.5)
  resume("a step count below the reached step", "has reached step 2, beyond the end that "
         "num_train_steps=1 sets; to go on, give num_train_steps > 2", steps=1)
  fewer = str(tmp_path / "fewer")
  write_idx_split(fewer, "train", 48)
  resume("other data", "with num_examples=48 (its run has 64: the number of training "
         "examples)", data=fewer)
  resume("a misspelt allowed key", "allow_config_change names 'batchsize'",
         allow_config_change="batchsize")
  broken = copy(pretrained, tmp_path / "broken")
  with open(os.path.join(broken, "config.json"), "r+") as f:
    f.truncate(100)
  case("a truncated config.json", main, tiny_args(data_dir, steps=2) + [f"--workdir={broken}"],
       f"{broken}/config.json cannot be read (", unchanged=[broken])
  done = copy(pretrained, tmp_path / "done")
  case("as many steps as reached", main, tiny_args(data_dir, steps=2) + [f"--workdir={done}"],
       None, check=lambda r: _said(r, "has already done its 2 steps; nothing to train"))
  allowed = copy(pretrained, tmp_path / "allowed")
  case("an allowed change, a longer run", main,
       tiny_args(data_dir, steps=3, batch_size=16, allow_config_change="batch_size")
       + [f"--workdir={allowed}"], None,
       check=lambda r: (_said(r, "is made longer: 3 steps instead of 2; the learning-rate "
                              "schedule is stretched"),
                        _recorded(allowed, "batch_size", 16),
                        _said(r, "checkpoint for step 3 written")))
  case("fewer images than one batch", main, tiny_args(data_dir, batch_size=128)
       + [f"--workdir={tmp_path / 'never'}"],
       "the dataset has 64 examples, fewer than one batch of 128",
       check=lambda r: _gone(str(tmp_path / "never")))

  # -- a fine-tune keeps its model; a workdir is called what it is
  case("a fine-tune resumed with another model", finetune,
       ft_args(data_dir, **{"model.embed_dim": 64}) + [f"--workdir={ft}"],
       "with model.embed_dim=64 (its run has 16)", unchanged=[ft])
  case("... even when the change is allowed", finetune,
       ft_args(data_dir, allow_config_change="model.embed_dim", **{"model.embed_dim": 64})
       + [f"--workdir={ft}"],
       f"the checkpoints in {ft} are of another model (embed_dim=16 there, 64 in the config)",
       unchanged=[ft])
  truncated = copy(ft, tmp_path / "truncated")
  with open(os.path.join(truncated, "model_config.json"), "r+") as f:
    f.truncate(40)
  case("a truncated model_config.json", finetune, ft_args(data_dir) + [
      f"--workdir={truncated}"], f"{truncated}/model_config.json cannot be read",
       unchanged=[truncated])
  missing = copy(ft, tmp_path / "missing")
  os.remove(os.path.join(missing, "model_config.json"))
  case("a missing model_config.json", finetune, ft_args(data_dir) + [f"--workdir={missing}"],
       f"{missing}/model_config.json is missing", unchanged=[missing])
  pre = copy(pretrained, tmp_path / "pre")
  case("a pretraining workdir given to the fine-tune", finetune,
       ft_args(data_dir) + [f"--workdir={pre}"],
       f"{pre} is a pretraining run's workdir (its config.json names trainer 'pretrain'), "
       f"not a fine-tuning run's; to fine-tune from it, pass --config.init_from={pre}",
       unchanged=[pre])
  case("a fine-tune for another class count", finetune,
       ft_args(data_dir, num_classes=3) + [f"--workdir={tmp_path / 'never'}"],
       "the data has 10 classes but config.num_classes=3; set --config.num_classes=10")
  case("a label smoothing of 1", finetune,
       ft_args(data_dir, label_smoothing=1.0) + [f"--workdir={tmp_path / 'never'}"],
       "label_smoothing=1.0; expected a fraction in [0, 1)")
  fresh = str(tmp_path / "fresh")
  case("a start from weights that are not there", finetune,
       ft_args(data_dir, init_from=str(tmp_path / "nowhere.msgpack"))
       + [f"--workdir={fresh}"], f"'{tmp_path / 'nowhere.msgpack'}' does not exist",
       check=lambda r: _gone(fresh))                # no empty workdir or checkpoints/

  # -- numbers that cannot be right (absl keeps its flags: one evaluate, last)
  three = str(tmp_path / "three.msgpack")
  _three_class_classifier(three)
  data_args = [a for a in ft_args(data_dir) if a.startswith(("--config=", "--config.data."))]
  case("a 3-class classifier on 10-class data", evaluate,
       data_args + [f"--checkpoint={three}"],
       "is a 3-class classifier, but the evaluation data (fashion_mnist, split 'test') has "
       "10 classes, whose labels 3-9 it cannot predict")
  return cases, checks


def _lock_of_another_host(folder, heartbeat_age: float) -> str:
  folder.mkdir()
  now = time.time()
  (folder / "run.lock").write_text(json.dumps(dict(
      host="tpu-vm-7", pid=4242, boot_id="x", process_start="1", started=now - 7200,
      heartbeat=now - heartbeat_age, token="theirs", command="python -m mixmim_jax.main")))
  return str(folder)


def _said(result, *fragments):
  line = next((l for l in result["output"].splitlines() if fragments[0] in l), "")
  assert all(f in line for f in fragments), (fragments, result["output"][-3000:])


def _gone(path):
  assert not os.path.exists(path), path


def _recorded(work, key, value):
  with open(os.path.join(work, "config.json")) as f:
    assert json.load(f)[key] == value


def _three_class_classifier(path):
  from mixmim_jax.model import api  # pylint: disable=import-outside-toplevel
  from mixmim_jax.model.arch import model_config  # pylint: disable=import-outside-toplevel
  from mixmim_jax.weights import params_file  # pylint: disable=import-outside-toplevel
  cfg = model_config(dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)),
                     window_sizes=(4, 4, 2, 1), img_size=32, patch_size=2, num_classes=3)
  params_file.save_params(path, cfg, "classifier", api.init_params(cfg, "classifier", 0))


def _unshare_works() -> bool:
  try:
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True,
                          timeout=30).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False


def test_storage_that_fails_is_one_sentence(tmp_path, data_dir, pretrained):
  """A read-only workdir, a disk that fills during a checkpoint save, and an
  export onto a full disk, on small tmpfs mounts of a private mount namespace
  (unshare): one sentence each; the last good checkpoint and no partial file
  is left."""
  if not _unshare_works():
    pytest.skip("needs `unshare -rm` (a user and mount namespace) for small tmpfs mounts")
  ro, small, tiny, out = (tmp_path / n for n in ("ro", "small", "tiny", "out"))
  for d in (ro, small, tiny, out):
    d.mkdir()
  size_kb = sum(os.path.getsize(os.path.join(f, n)) for f, _, ns in os.walk(pretrained)
                for n in ns) // 1024 + 1024       # room for the logs, not a second checkpoint
  before = hashes(pretrained)
  work = f"{small}/run"
  runs = [("read-only workdir", "mixmim_jax.main", tiny_args(data_dir) + [f"--workdir={ro}/run"],
           f"cannot use the workdir {ro}/run: Read-only file system"),
          ("disk full during a save", "mixmim_jax.main",
           tiny_args(data_dir, steps=4) + [f"--workdir={work}"],
           f"saving the checkpoint for step 4 to {work}/checkpoints failed (No space left on "
           "device); the checkpoint for step 2 is kept"),
          ("export onto a full disk", "mixmim_jax.export",
           [f"--checkpoint={pretrained}", f"--out={tiny}/model.msgpack"],
           f"cannot write '{tiny}/model.msgpack': No space left on device; nothing was written")]

  def wrap(command):
    return (f"mount -t tmpfs -o ro,size=64k tmpfs {ro} && "
            f"mount -t tmpfs -o size={size_kb}k tmpfs {small} && "
            f"mount -t tmpfs -o size=128k tmpfs {tiny} && cp -a {pretrained} {work} && "
            f"{command} && (cd {work} && find . -type f -exec sha256sum {{}} +) > {out}/hashes "
            f"&& find {small} {tiny} -mindepth 1 > {out}/listing")

  prefix = ["unshare", "-rm"]
  results = run_commands([(m, a) for _, m, a, _ in runs],
                         wrap=lambda c: " ".join(prefix) + " bash -c '" + wrap(c) + "'")
  for (what, _, _, fragment), result in zip(runs, results):
    one_sentence(result, fragment, what)
  listing = [os.path.relpath(p, tmp_path) for p in (out / "listing").read_text().split()]
  assert not [n for n in listing if "tmp" in n], listing   # no partial save, no .NAME.tmp-PID
  after = {line.split()[1][2:]: line.split()[0] for line in (out / "hashes").read_text()
           .splitlines()}
  kept = {k: v for k, v in before.items() if k.startswith("checkpoints/2/")}
  assert kept and all(after[k] == v for k, v in kept.items())     # step 2 as it was
  assert not any(k.startswith("checkpoints/4") for k in after), sorted(after)
  assert "small/run/checkpoints/2" in listing and not any("tiny/" in p for p in listing)


def test_every_stop_signal_asks_for_a_save_and_a_stop_at_once_releases_the_lock(tmp_path):
  """SIGTERM (Spot VMs, kill, Kubernetes), SIGINT (Ctrl-C), SIGHUP (a closed
  terminal), SIGUSR1/2 (Slurm's --signal, SGE, LSF) and SIGXCPU (a CPU-time
  limit) each ask the run to save and stop; a stop at once (a signal before
  the first step) still removes the workdir's lock."""
  script = (
      "import os, signal, sys, time\n"
      "from mixmim_jax.training import stopping, workdir_lock\n"
      "names = sorted(signal.Signals(s).name for s in stopping.SIGNALS)\n"
      "assert names == ['SIGHUP', 'SIGINT', 'SIGTERM', 'SIGUSR1', 'SIGUSR2', 'SIGXCPU'], names\n"
      "for sig in stopping.SIGNALS:\n"
      "  with stopping.StopSignals() as s:\n"
      "    s.progress()\n"
      "    os.kill(os.getpid(), sig)\n"
      "    deadline = time.time() + 10\n"
      "    while not s.requested and time.time() < deadline:\n"
      "      time.sleep(0.01)\n"
      "    assert s.requested, sig\n"
      "lock = workdir_lock.take(sys.argv[1], 0, 1)\n"
      "with stopping.StopSignals() as s:\n"
      "  s.before_exit.append(lock.release)\n"
      "  os.kill(os.getpid(), signal.SIGTERM)\n"
      "  time.sleep(30)\n")
  work = str(tmp_path / "run")
  proc = subprocess.run([sys.executable, "-c", script, work], env=ENV, capture_output=True,
                        text=True, timeout=120)
  out = proc.stdout + proc.stderr
  assert proc.returncode == exit_codes.STOPPED, out[-3000:]
  for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGXCPU"):
    assert f"{name} received: saving a checkpoint" in out, (name, out[-3000:])
  assert "SIGTERM received before the first step ended: stopping at once" in out
  assert not os.path.exists(work)              # the lock and the folder it made are gone
