"""Bad input and interruptions, through the real command line: every refusal is
one sentence naming the value and what to do, a non-zero exit, no traceback and
nothing written; SIGTERM and Ctrl-C save and stop (exit code 75) at any moment,
a second one stops at once; a damaged newest checkpoint is set aside and the
run resumes from the one before; SIGKILL at any moment, even during an async
save, loses nothing: the resumed run ends bit for bit where an uninterrupted
one does. docs/ROBUSTNESS.md lists the same cases."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mixmim_jax import exit_codes
from mixmim_jax.training import checkpointing
import train_fixtures

from cli_runs import CONFIG, ENV, NO_CACHE_ENV, REPO, Trainer, run_cli as _run_cli, tiny_args


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return train_fixtures.write_idx_images(str(tmp_path_factory.mktemp("fmnist")), count=64)


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("broken")
  for i in range(20):
    folder = root / "train" / f"class{i % 2}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{i}.jpg").write_bytes(b"not a jpeg at all" * (i + 1))
  return str(root)


# (what a user got wrong, extra arguments, a piece of the one sentence they get)
REFUSALS = [
    ("mask_ratio above 1", ["--config.mask_ratio=1.5"],
     "mask_ratio=1.5; expected a fraction of the cells in [0, 1]"),
    ("mask_ratio below 0", ["--config.mask_ratio=-0.1"], "mask_ratio=-0.1; expected"),
    ("negative learning rate", ["--config.optim.base_lr=-0.001"],
     "optim.base_lr=-0.001; expected a positive learning rate"),
    ("no epochs", ["--config.num_epochs=0", "--config.num_train_steps=-1"],
     "num_epochs=0"),
    ("keep no checkpoints", ["--config.checkpoint_keep=0"], "checkpoint_keep=0; expected 1"),
    ("checkpoint every 0 steps", ["--config.checkpoint_every_steps=0"],
     "checkpoint_every_steps=0; expected 1 or more"),
    ("log every 0 steps", ["--config.log_every_steps=0"], "log_every_steps=0; expected 1"),
    ("empty batch", ["--config.batch_size=0"], "batch_size=0; expected a positive number"),
    ("negative batch", ["--config.batch_size=-4"], "batch_size=-4; expected a positive"),
    ("image size not a multiple of 32", ["--config.data.image_size=48"],
     "data.image_size=48; expected a positive multiple of 32"),
    ("a mesh larger than the machine", ["--config.mesh.data=3"],
     "has 3 devices but 1 are available"),
    ("an Adam decay above 1", ["--config.optim.b1=1.5"],
     "optim.b1=1.5; expected a decay rate in [0, 1)"),
    ("no image pairs to draw", ["--config.num_image_pairs=0"],
     "num_image_pairs=0; expected 1 or more"),
]


def _run_in_one_process(runs, timeout=600):
  """Each argv of `runs` through `python -m mixmim_jax.main`, all in one process
  (tests/commands_worker.py): JAX and TensorFlow load once."""
  path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"refusals-{os.getpid()}.json")
  with open(path, "w") as f:
    json.dump([dict(module="mixmim_jax.main", argv=argv) for argv in runs], f)
  proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "commands_worker.py"),
                         path], env=ENV, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_one_sentence(result, fragment, what):
  out = result["output"]
  assert result["code"] == exit_codes.ERROR, (what, result)
  assert "Traceback" not in out, (what, out[-2000:])
  errors = [line for line in out.splitlines() if " ERROR " in line or line.startswith("error:")]
  assert len(errors) == 1, (what, errors or out[-2000:])
  assert fragment in errors[0], (what, errors[0])


def test_bad_configs_are_refused_in_one_sentence(tmp_path, data_dir, broken_folder):
  syntax = tmp_path / "broken_config.py"
  syntax.write_text("def get_config(:\n  pass\n")
  cases = [(what, tiny_args(data_dir) + extra + [f"--workdir={tmp_path / str(i)}"], fragment)
           for i, (what, extra, fragment) in enumerate(REFUSALS)]
  cases += [
      ("unknown key, --config FILE", ["--config", CONFIG, "--config.optim.lrr=1",
                                      f"--workdir={tmp_path / 'k'}"],
       "unknown config key 'optim.lrr' in --config.optim.lrr: optim has no 'lrr'"),
      ("missing config file", ["--config=configs/nowhere.py", f"--workdir={tmp_path / 'm'}"],
       "config file 'configs/nowhere.py' does not exist"),
      ("config with a syntax error", [f"--config={syntax}", f"--workdir={tmp_path / 's'}"],
       "does not parse: invalid syntax at line 1"),
      ("missing dataset", tiny_args(str(tmp_path / "nowhere")) + [f"--workdir={tmp_path / 'd'}"],
       "Fashion-MNIST train images not found"),
      ("every image corrupt", tiny_args(data_dir) + [
          "--config.data.source=folder", f"--config.data.folder={broken_folder}",
          f"--workdir={tmp_path / 'c'}"],
       "input batch 0: only 0 of its 16 candidate images could be read and decoded"),
  ]
  started = time.time()
  results = _run_in_one_process([argv for _, argv, _ in cases])
  assert time.time() - started < 500          # nothing hangs
  for (what, argv, fragment), result in zip(cases, results):
    _assert_one_sentence(result, fragment, what)
    workdir = next(a for a in argv if a.startswith("--workdir=")).split("=", 1)[1]
    assert not os.path.exists(workdir) or what == "every image corrupt", (what, workdir)


def test_ctrl_c_saves_says_so_and_stops_with_code_75(tmp_path, data_dir):
  work = str(tmp_path / "run")
  args = tiny_args(data_dir, steps=200, checkpoint_every_steps=1000) + [f"--workdir={work}"]
  t = Trainer(args)
  t.wait_for("step       3/200")
  t.proc.send_signal(signal.SIGINT)
  code, out = t.finish()
  assert code == exit_codes.STOPPED, out[-3000:]
  assert "SIGINT received: saving a checkpoint" in out and "Traceback" not in out
  saved = int(out.split("stopped at step ")[1].split()[0])
  assert f"checkpoint for step {saved} written" in out
  assert sorted(int(s) for s in os.listdir(os.path.join(work, "checkpoints"))
                if s.isdigit()) == [saved]


def test_a_second_signal_stops_at_once_inside_a_long_step():
  """While a step runs (a long sleep here), the first Ctrl-C asks for a save;
  the second ends the process at once, from the watcher thread."""
  script = (
      "import os, signal, time\n"
      "from mixmim_jax.training import stopping\n"
      "with stopping.StopSignals() as s:\n"
      "  s.progress()\n"
      "  os.kill(os.getpid(), signal.SIGINT)\n"
      "  time.sleep(1)\n"
      "  assert s.requested\n"
      "  os.kill(os.getpid(), signal.SIGINT)\n"
      "  time.sleep(60)\n")
  started = time.time()
  proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True,
                        text=True, timeout=60)
  assert time.time() - started < 20
  assert proc.returncode == exit_codes.STOPPED, proc.stderr[-2000:]
  out = proc.stdout + proc.stderr
  assert "SIGINT received: saving a checkpoint" in out
  assert "SIGINT received again: stopping at once" in out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_first_compile_stops_at_once(tmp_path, data_dir, sig):
  # Another batch size than the other tests': a program no cache holds.
  t = Trainer(tiny_args(data_dir, steps=4, batch_size=6) + [f"--workdir={tmp_path / 'run'}"],
              env=NO_CACHE_ENV)
  t.wait_for("initialised a new")        # the step compiles next
  t.proc.send_signal(sig)
  started = time.time()
  code, out = t.finish(timeout=60)
  assert time.time() - started < 30
  assert code == exit_codes.STOPPED, out[-3000:]
  assert "before the first step ended: stopping at once" in out and "Traceback" not in out
  assert "Fatal Python error" not in out


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes(tmp_path, data_dir,
                                                                      caplog):
  from mixmim_jax.trainers import pretrain  # pylint: disable=import-outside-toplevel
  # One program for both jobs: the same config, the first stopped after step 4.
  config = train_fixtures.tiny_config(data_dir, num_train_steps=6)
  work = str(tmp_path / "run")
  pretrain.train(config, work, stop_after=4)
  ckpts = os.path.join(work, "checkpoints")
  # Truncate every array file of the newest checkpoint.
  truncated = 0
  for root, _, names in os.walk(os.path.join(ckpts, "4", "state")):
    for name in names:
      if os.sep + "d" in root:
        path = os.path.join(root, name)
        with open(path, "r+b") as f:
          f.truncate(max(1, os.path.getsize(path) // 3))
        truncated += 1
  assert truncated
  with caplog.at_level("INFO"):
    result = pretrain.train(config, work)
  assert result["final_step"] == 6
  log = caplog.text
  assert "the checkpoint for step 4 in" in log and "cannot be read" in log, log[-3000:]
  assert "resumed from step 2" in log
  names = os.listdir(ckpts)
  assert any(n.startswith("4.damaged-") for n in names), names     # kept, not deleted
  assert {"2", "4", "6"} <= set(names)


def _final_params(work, step):
  state, meta, _ = checkpointing.read(os.path.join(work, "checkpoints"), step)
  assert meta["step"] == step
  return state["params"]


def test_sigkill_at_any_moment_resumes_bit_for_bit(tmp_path, data_dir):
  """SIGKILL after a logged step, during an async save (its temporary
  directory exists), and right after a restart; each time the same command
  resumes, and the run ends exactly where an uninterrupted one does."""
  steps = 10
  args = tiny_args(data_dir, steps=steps, checkpoint_every_steps=3)
  full = str(tmp_path / "full")
  assert _run_cli(args + [f"--workdir={full}"]).returncode == 0
  work = str(tmp_path / "killed")
  ckpts = os.path.join(work, "checkpoints")

  t = Trainer(args + [f"--workdir={work}"])          # 1. between two logged steps
  t.wait_for(f"step       2/{steps}")
  t.proc.kill()
  t.finish()

  t = Trainer(args + [f"--workdir={work}"])          # 2. during an async save
  t.wait_for("checkpoint for step 3 written")         # (of step 6: 3 is committed)
  caught = False
  deadline = time.time() + 30
  while time.time() < deadline and not caught:
    caught = os.path.isdir(ckpts) and any("tmp" in n for n in os.listdir(ckpts))
    if not caught:
      time.sleep(0.001)
  t.proc.kill()
  t.finish()
  assert caught, "never saw a save in progress"

  t = Trainer(args + [f"--workdir={work}"])          # 3. right after resuming
  t.wait_for("resumed from step 3")
  t.proc.kill()
  t.finish()

  final = _run_cli(args + [f"--workdir={work}"])
  assert final.returncode == 0, final.stdout[-3000:]
  for a, b in zip(_flatten(_final_params(full, steps)), _flatten(_final_params(work, steps))):
    np.testing.assert_array_equal(a, b)


def _flatten(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return [np.asarray(x) for x in jax.tree.leaves(tree)]
