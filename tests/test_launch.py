"""Tests for launch/: exact gcloud commands, input checks, the watch policy.

Pure Python and bash; no JAX, no cloud. Recorded gcloud output lives in
tests/launch_fixtures/ (`... describe --format=json` and the probe's lines).
The remote scripts run for real on a fake worker home (a temporary $HOME);
the command line runs against FakeShell, which records every argv list and
answers with canned output per worker.
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from launch import cost, tpu, tpu_commands as tc, tpu_watch as tw  # noqa: E402
from launch.accelerators import LaunchError, parse_accelerator  # noqa: E402

FIXTURES = ROOT / "tests" / "launch_fixtures"
WHERE = ["--zone=us-central2-b", "--project=my-project"]
ENV = {
    "TPU_NAME": "my-tpu", "TPU_ZONE": "us-central2-b", "GCP_PROJECT": "my-project",
    "TPU_ACCELERATOR_TYPE": "v4-32", "TPU_SPOT": "1", "TPU_QUEUED": "1",
    "MIXMIM_WORKDIR": "gs://my-bucket/mixmim/base_pretrain",
    "MIXMIM_DATA_DIR": "gs://my-bucket/tensorflow_datasets",
}
ALL_ENV = list(ENV) + ["TPU_RUNTIME_VERSION", "MIXMIM_CONFIG"]


@pytest.fixture
def env(monkeypatch):
  for k in ALL_ENV:
    monkeypatch.delenv(k, raising=False)
  for k, v in ENV.items():
    monkeypatch.setenv(k, v)
  return monkeypatch


@pytest.fixture
def repo(tmp_path):
  """A clean git checkout whose requirements.txt pins jax like ours does."""
  r = tmp_path / "repo"
  r.mkdir()
  (r / "requirements.txt").write_text("jax==0.10.2\njaxlib==0.10.2\nflax==0.12.8\n")
  (r / "README.md").write_text("x\n")
  git = ["git", "-C", str(r), "-c", "user.name=t", "-c", "user.email=t@example.com"]
  subprocess.run(git[:3] + ["init", "-q"], check=True)
  subprocess.run(git + ["add", "."], check=True)
  subprocess.run(git + ["commit", "-qm", "init"], check=True)
  sha = subprocess.run(["git", "-C", str(r), "rev-parse", "HEAD"], capture_output=True,
                       text=True, check=True).stdout.strip()
  return r, sha


def dry_run(capsys, *argv):
  """Run the CLI with --dry-run; return (exit code, printed argv lists, stderr)."""
  rc = tpu.main(list(argv[:1]) + ["--dry-run"] + list(argv[1:]))
  out, err = capsys.readouterr()
  commands = [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]
  return rc, commands, err


def remote(cmd):
  """The shell text a `tpu-vm ssh --command=...` would run."""
  [flag] = [a for a in cmd if a.startswith("--command=")]
  return flag[len("--command="):]


# --- accelerators -----------------------------------------------------------------

@pytest.mark.parametrize("name,gcloud_type,chips,hosts,runtime", [
    ("v4-8", "v4-8", 4, 1, "tpu-ubuntu2204-base"),
    ("v4-32", "v4-32", 16, 4, "tpu-ubuntu2204-base"),
    ("v5e-64", "v5litepod-64", 64, 16, "v2-alpha-tpuv5-lite"),
    ("v5litepod-8", "v5litepod-8", 8, 1, "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v5p-8", 4, 1, "v2-alpha-tpuv5"),
    ("v5p-128", "v5p-128", 64, 16, "v2-alpha-tpuv5"),
    ("v6e-16", "v6e-16", 16, 4, "v2-alpha-tpuv6e"),
])
def test_accelerator_table(name, gcloud_type, chips, hosts, runtime):
  a = parse_accelerator(name)
  assert (a.type, a.chips, a.hosts, a.default_runtime) == (gcloud_type, chips, hosts, runtime)


@pytest.mark.parametrize("name", ["v9-32", "v4-12", "v5litepod-12", "v6e", "tpu-v4-32", ""])
def test_unknown_accelerator_is_named(name):
  with pytest.raises(LaunchError, match=f"Unknown accelerator type {name!r}; .*expected|takes"):
    parse_accelerator(name)


# --- dry-run commands ----------------------------------------------------------------

def test_create_v4_32_spot_through_queued_resources(env, capsys):
  rc, cmds, _ = dry_run(capsys, "create")
  assert rc == 0
  assert cmds == [[
      "gcloud", "compute", "tpus", "queued-resources", "create", "my-tpu",
      "--node-id=my-tpu", *WHERE, "--accelerator-type=v4-32",
      "--runtime-version=tpu-ubuntu2204-base", "--spot"]]


def test_create_direct_on_demand_v5e_flags_override_env(env, capsys):
  rc, cmds, _ = dry_run(capsys, "create", "--no-spot", "--no-queued",
                        "--accelerator-type=v5e-64", "--name=other-tpu",
                        "--runtime-version=v2-alpha-tpuv5-lite")
  assert rc == 0
  # tpu-vm create names the runtime flag --version.
  assert cmds == [[
      "gcloud", "compute", "tpus", "tpu-vm", "create", "other-tpu", *WHERE,
      "--accelerator-type=v5litepod-64", "--version=v2-alpha-tpuv5-lite"]]


def test_delete_and_stop_and_logs(env, capsys):
  assert dry_run(capsys, "delete")[1] == [[
      "gcloud", "compute", "tpus", "queued-resources", "delete", "my-tpu", *WHERE,
      "--force", "--quiet"]]
  env.setenv("TPU_QUEUED", "0")
  assert dry_run(capsys, "delete")[1] == [[
      "gcloud", "compute", "tpus", "tpu-vm", "delete", "my-tpu", *WHERE, "--quiet"]]
  [stop] = dry_run(capsys, "stop")[1]
  assert stop[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", *WHERE][:7]
  assert "--worker=all" in stop and 'kill -s "$1" -- "-$pgid"' in remote(stop)
  assert 'while alive && [ "$waited" -lt 120 ]' in remote(stop)   # the default grace
  [stop] = dry_run(capsys, "stop", "--grace=30")[1]
  assert 'while alive && [ "$waited" -lt 30 ]' in remote(stop)
  [logs] = dry_run(capsys, "logs", "--worker=all", "--follow", "--lines=50")[1]
  assert logs == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", *WHERE,
                  "--worker=all", '--command=tail -F -n 50 "$HOME/mixmim"/logs/train-*.log']


def test_setup_ships_one_commit_to_every_worker(env, capsys, repo, tmp_path):
  r, sha = repo
  rc, cmds, _ = dry_run(capsys, "setup", f"--repo={r}", f"--staging-dir={tmp_path}")
  assert rc == 0
  archive = f"mixmim_jax-{sha}.tar.gz"
  pack, copy, install = cmds
  assert pack == ["git", "-C", str(r), "archive", "--format=tar.gz", f"--prefix=code-{sha}/",
                  f"--output={tmp_path / archive}", sha]
  assert copy == ["gcloud", "compute", "tpus", "tpu-vm", "scp", str(tmp_path / archive),
                  f"my-tpu:{archive}", *WHERE, "--worker=all"]
  assert install[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", *WHERE,
                         "--worker=all"]
  script = remote(install)
  venv = re.search(r'"\$HOME/mixmim"/venv-[0-9a-f]{12}', script).group(0)
  assert f'tar -xzf "$HOME/{archive}" -C "$unpack"' in script
  assert f'python3 -m pip install -q --user uv=={tc.UV_VERSION}' in script
  assert (f'"$HOME/.local/bin/uv" venv -q --clear --managed-python --python 3.11 {venv}; '
          f'"$HOME/.local/bin/uv" pip install -q --python {venv}/bin/python '
          f"'jax[tpu]==0.10.2' -r \"$HOME/mixmim\"/code-{sha}/requirements.txt") in script
  assert "apt" not in script and "rm -rf" not in script
  assert script.split("; ")[-1] == f'echo {sha} > "$HOME/mixmim"/COMMIT'
  assert not (tmp_path / archive).exists()   # dry run: nothing packed


def test_setup_archive_really_holds_the_commit(env, capsys, repo, tmp_path):
  r, sha = repo
  _, (pack, _, _), _ = dry_run(capsys, "setup", f"--repo={r}", f"--staging-dir={tmp_path}")
  (r / "README.md").write_text("edited after the commit\n")   # must not be shipped
  subprocess.run(pack, check=True)
  listing = subprocess.run(["tar", "-xzOf", pack[-2].split("=", 1)[1],
                            f"code-{sha}/README.md"], capture_output=True, text=True)
  assert listing.stdout == "x\n"


def test_dirty_tree_is_refused_unless_allowed(env, capsys, repo, tmp_path):
  r, sha = repo
  (r / "requirements.txt").write_text("jax==0.10.2\nnumpy\n")
  rc, cmds, err = dry_run(capsys, "setup", f"--repo={r}", f"--staging-dir={tmp_path}")
  assert rc == 2 and cmds == []
  assert f"has uncommitted changes (requirements.txt); the workers get commit {sha[:12]}" in err
  assert "--allow-dirty" in err
  rc, cmds, err = dry_run(capsys, "setup", f"--repo={r}", f"--staging-dir={tmp_path}",
                          "--allow-dirty")
  assert rc == 0 and err.startswith("warning: ") and cmds[0][-1] == sha


def test_commit_must_pin_jax(env, capsys, repo, tmp_path):
  r, _ = repo
  (r / "requirements.txt").write_text("flax==0.12.8\n")
  subprocess.run(["git", "-C", str(r), "-c", "user.name=t", "-c", "user.email=t@example.com",
                  "commit", "-qam", "unpin"], check=True)
  rc, _, err = dry_run(capsys, "setup", f"--repo={r}")
  assert rc == 2 and "pins no jax version; expected a line like jax==0.10.2" in err
  rc, _, err = dry_run(capsys, "setup", f"--repo={r}", "--commit=no-such-branch")
  assert rc == 2 and "Commit 'no-such-branch' is not in the git repository" in err


def test_start_carries_config_workdir_and_data_on_all_workers(env, capsys, repo):
  r, sha = repo
  rc, cmds, _ = dry_run(capsys, "start", f"--repo={r}", "--",
                        "--config.total_epochs=300")
  assert rc == 0
  [start] = cmds
  assert start[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", *WHERE,
                       "--worker=all"]
  script = remote(start)
  assert f'cd "$HOME/mixmim"/code-{sha};' in script
  venv = re.search(r"venv-[0-9a-f]{12}", script).group(0)
  assert f'if [ ! -f "$HOME/mixmim"/{venv}/.mixmim-ready ]' in script
  assert ("setsid nohup bash -c '\"$HOME/mixmim\"/" + venv + "/bin/python -m mixmim_jax.main "
          "--config=configs/base_pretrain.py --workdir=gs://my-bucket/mixmim/base_pretrain "
          "--config.data.data_dir=gs://my-bucket/tensorflow_datasets "
          "--config.total_epochs=300; echo $? > \"$HOME/mixmim\"/exit_code' "
          '>> "$HOME/mixmim"/logs/train-"$(hostname)".log 2>&1 < /dev/null '
          '& echo $! > "$HOME/mixmim"/train.pid') in script
  subprocess.run(["bash", "-n", "-c", script], check=True)


@pytest.mark.parametrize("argv,unset,message", [
    (["start"], "MIXMIM_WORKDIR", "MIXMIM_WORKDIR is not set; pass --workdir or export "
     "MIXMIM_WORKDIR (expected gs://BUCKET/PATH for checkpoints)."),
    (["start"], "MIXMIM_DATA_DIR", "MIXMIM_DATA_DIR is not set; pass --data-dir"),
    (["start", "--workdir=/home/me/ckpt"], None, "Workdir '/home/me/ckpt' is not on GCS, but "
     "v4-32 has 4 hosts that must all read and write the same files; expected gs://"),
    (["start", "--data-dir=/data/tfds"], None, "Data dir '/data/tfds' is not on GCS"),
    (["start", "--workdir=gs://"], None, "Workdir 'gs://' is not a valid GCS path"),
    (["watch", "--accelerator-type=v4-8", "--workdir=/home/me/ckpt"], None,
     "Workdir '/home/me/ckpt' is not on GCS, but watch recreates the VM"),
    (["watch", "--accelerator-type=v4-8", "--data-dir=/data/tfds"], None,
     "Data dir '/data/tfds' is not on GCS, but watch recreates the VM after a preemption "
     "and a local data dir is lost with it"),
    (["setup", "--python=python3.11"], None, "--python 'python3.11' is not a Python "
     "version; expected one uv can install on the workers, such as 3.11."),
    (["stop", "--grace=-1"], None, "--grace -1 is negative"),
    (["watch", "--backoff=0"], None, "--backoff 0 and --backoff-cap 1800 are not valid"),
    (["watch", "--max-capacity-retries=-1"], None, "--max-capacity-retries -1 is too small"),
    (["create", "--accelerator-type=v4-33"], None, "Unknown accelerator type 'v4-33'"),
    (["create"], "TPU_ACCELERATOR_TYPE", "TPU_ACCELERATOR_TYPE is not set"),
    (["create"], "TPU_NAME", "TPU_NAME is not set; pass --name or export TPU_NAME"),
    (["create", "--zone=us_central2"], None, "--zone 'us_central2' is not valid; expected "
     "a zone such as us-central2-b."),
    (["create"], "GCP_PROJECT", "GCP_PROJECT is not set"),
])
def test_bad_inputs_get_one_clear_sentence(env, capsys, repo, argv, unset, message):
  if unset:
    env.delenv(unset)
  extra = [] if argv[0] in ("create", "stop") else [f"--repo={repo[0]}"]
  rc, cmds, err = dry_run(capsys, *argv, *extra)
  assert rc == 2 and cmds == []
  assert err.startswith("error: ") and message in err
  assert err.count("\n") == 1


def test_single_host_may_use_a_local_workdir(env, capsys, repo):
  rc, cmds, _ = dry_run(capsys, "start", "--accelerator-type=v4-8",
                        "--workdir=/home/me/ckpt", "--data-dir=/data/tfds", f"--repo={repo[0]}")
  assert rc == 0 and "--workdir=/home/me/ckpt" in remote(cmds[0])


def test_dry_run_never_calls_gcloud(tmp_path, repo):
  marker = tmp_path / "called"
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "gcloud").write_text(f"#!/bin/sh\ntouch {marker}\n")
  (fake / "gcloud").chmod(0o755)
  environ = dict(os.environ, **ENV, PATH=f"{fake}:{os.environ['PATH']}")
  for command in ["create", "setup", "start", "watch", "status", "logs", "stop", "delete"]:
    extra = [f"--repo={repo[0]}"] if command in ("setup", "start", "watch") else []
    out = subprocess.run([sys.executable, "-m", "launch.tpu", command, "--dry-run", *extra],
                         cwd=ROOT, env=environ, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(("gcloud ", "git ", "# "))
  assert not marker.exists()


def test_watch_dry_run_lists_poll_and_recovery(env, capsys, repo):
  tpu.main(["watch", "--dry-run", f"--repo={repo[0]}"])
  out = capsys.readouterr().out
  sections = [line for line in out.splitlines() if line.startswith("#")]
  assert sections == ["# every 300 s: poll", "# on RECREATE: delete", "# on RECREATE: create",
                      "# on START: stop", "# on START: verify", "# on START: setup",
                      "# on START: start"]
  assert "gcloud compute tpus queued-resources describe my-tpu --zone=us-central2-b " \
         "--project=my-project --format=json" in out


# --- the remote scripts, run for real on a fake worker home ----------------------------

def _sh(script, home, shell="bash", **extra):
  return subprocess.run([shell, "-c", script], env=dict(os.environ, HOME=str(home), **extra),
                        capture_output=True, text=True, timeout=30)


@pytest.fixture(params=["bash", "dash"])
def sh(request):
  """Run a remote script as a worker would; in bash, and in dash (POSIX sh) to show
  the scripts need nothing bash-only, whatever the worker's login shell."""
  if shutil.which(request.param) is None:
    pytest.skip(f"{request.param} not on PATH")
  return lambda script, home, **extra: _sh(script, home, request.param, **extra)


def _wait_for(predicate, timeout=5.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.05)
  return False


def _alive(pid):
  """Running, not a zombie waiting for a parent that may never reap it."""
  try:
    return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


SLICE1 = tc.Slice("my-tpu", "us-central2-b", "my-project", parse_accelerator("v4-8"),
                  "tpu-ubuntu2204-base")
CODE = tc.Code("unused", "c0ffee", "0.10.2", "unused")
JOB = tc.Job("configs/base_pretrain.py", "gs://my-bucket/w", "gs://my-bucket/d")
HOST = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
# Fake trainers (the venv's "python"), ready once their trap is set. Bash runs a trap
# only between commands, hence the short sleeps.
QUITS_ON_TERM = ('trap "echo got TERM; exit 75" TERM; touch "$HOME/ready"\n'
                 'echo "args: $*"; echo "cwd: $PWD"\nfor i in $(seq 600); do sleep 0.05; done\n')
IGNORES_TERM = ('trap "echo TERM >> $HOME/terms" TERM; touch "$HOME/ready"\n'  # as a multi-host
                "for i in $(seq 600); do sleep 0.05; done\n")    # trainer stuck in a collective
EXITS = 'echo "args: $*"; echo "cwd: $PWD"; exit "${FAKE_EXIT:-0}"\n'


def fake_worker(home, trainer):
  """$HOME/mixmim with code-c0ffee and a ready venv whose python runs `trainer`."""
  (home / "mixmim" / "code-c0ffee").mkdir(parents=True, exist_ok=True)
  venv = home / "mixmim" / f"venv-{CODE.env_id}"
  (venv / "bin").mkdir(parents=True, exist_ok=True)
  (venv / ".mixmim-ready").touch()
  python = venv / "bin" / "python"
  python.write_text("#!/bin/bash\n" + trainer)
  python.chmod(0o755)
  return home / "mixmim"


@pytest.fixture
def started(tmp_path, sh):
  """Start a fake trainer on a fake worker; kill whatever is left at the end."""
  pids = []

  def start(trainer, **env):
    root = fake_worker(tmp_path, trainer)
    result = sh(remote(tc.start(SLICE1, CODE, JOB)[0]), tmp_path, **env)
    assert result.returncode == 0, result.stderr
    pids.append(int((root / "train.pid").read_text()))
    assert _wait_for((tmp_path / "ready").exists)
    return root, pids[-1]

  yield start
  for pid in pids:
    subprocess.run(["kill", "-KILL", "--", f"-{pid}"], capture_output=True)


def test_start_probe_stop_on_a_fake_worker(tmp_path, started, sh):
  root, pid = started(QUITS_ON_TERM)
  start = remote(tc.start(SLICE1, CODE, JOB)[0])
  assert sh(tc.PROBE, tmp_path).stdout == f"MIXMIM_JOB RUNNING {HOST}\n"
  again = sh(start, tmp_path)
  assert again.returncode == 1 and "already running" in again.stderr

  stop = sh(tc.stop_script(grace_s=10), tmp_path)
  assert re.fullmatch(rf"MIXMIM_STOP {HOST} STOPPED_BY_TERM \d+\n", stop.stdout)
  assert stop.returncode == 0 and not _alive(pid) and not (root / "train.pid").exists()
  assert sh(tc.PROBE, tmp_path).stdout == f"MIXMIM_JOB ABSENT {HOST}\n"

  fake_worker(tmp_path, EXITS)
  assert sh(start, tmp_path, FAKE_EXIT="3").returncode == 0
  assert _wait_for((root / "exit_code").exists)
  assert _wait_for(lambda: sh(tc.PROBE, tmp_path).stdout == f"MIXMIM_JOB EXITED 3 {HOST}\n")
  [log] = (root / "logs").glob("train-*.log")
  text = log.read_text()
  assert text.count("=== mixmim start") == 2 and "commit c0ffee" in text
  assert "got TERM" in text
  assert ("args: -m mixmim_jax.main --config=configs/base_pretrain.py "
          "--workdir=gs://my-bucket/w --config.data.data_dir=gs://my-bucket/d") in text
  assert f"cwd: {root}/code-c0ffee" in text


def test_stop_sends_one_sigterm_then_sigkill_after_the_grace(tmp_path, started, sh):
  """A trainer that ignores SIGTERM (by design on a multi-host slice) gets exactly one,
  then SIGKILL once the grace is over; train.pid goes only when it is gone."""
  root, pid = started(IGNORES_TERM)
  t0 = time.time()
  stop = sh(tc.stop_script(grace_s=1), tmp_path)
  assert stop.stdout == f"MIXMIM_STOP {HOST} KILLED\n" and stop.returncode == 0
  assert 1 <= time.time() - t0 < 10
  assert not _alive(pid) and not (root / "train.pid").exists()
  assert (tmp_path / "terms").read_text() == "TERM\n"


def test_stop_finds_a_trainer_that_train_pid_lost_and_spares_others(tmp_path, started, sh):
  root, pid = started(IGNORES_TERM)
  (root / "train.pid").unlink()   # what the old `stop` did before its trainer was gone
  # Someone else's process whose command line looks like a trainer, outside our venvs.
  decoy = subprocess.Popen(["bash", "-c", 'exec -a "/usr/bin/python -m mixmim_jax.main" '
                            "sleep 30"])
  try:
    assert sh(tc.PROBE, tmp_path).stdout == f"MIXMIM_JOB RUNNING {HOST}\n"
    again = sh(remote(tc.start(SLICE1, CODE, JOB)[0]), tmp_path)
    assert again.returncode == 1 and "already running" in again.stderr
    assert sh(tc.stop_script(grace_s=1), tmp_path).stdout == f"MIXMIM_STOP {HOST} KILLED\n"
    assert _wait_for(lambda: not _alive(pid))
    assert decoy.poll() is None   # not ours: untouched
  finally:
    decoy.kill()
    decoy.wait()


def test_stop_with_no_trainer_or_a_reused_pid(tmp_path, sh):
  (tmp_path / "mixmim").mkdir()
  assert sh(tc.stop_script(), tmp_path).stdout == f"MIXMIM_STOP {HOST} NOT_RUNNING\n"
  # After a reboot train.pid may name a group that now runs something else.
  other = subprocess.Popen(["setsid", "sleep", "30"])
  try:
    (tmp_path / "mixmim" / "train.pid").write_text(f"{other.pid}\n")
    assert sh(tc.PROBE, tmp_path).stdout == f"MIXMIM_JOB ABSENT {HOST}\n"
    assert sh(tc.stop_script(), tmp_path).stdout == f"MIXMIM_STOP {HOST} NOT_RUNNING\n"
    assert other.poll() is None and not (tmp_path / "mixmim" / "train.pid").exists()
  finally:
    other.kill()
    other.wait()


def test_start_needs_the_commits_environment(tmp_path, sh):
  root = fake_worker(tmp_path, EXITS)
  (root / f"venv-{CODE.env_id}" / ".mixmim-ready").unlink()
  result = sh(remote(tc.start(SLICE1, CODE, JOB)[0]), tmp_path)
  assert result.returncode == 1 and not (root / "train.pid").exists()
  assert "has no environment for commit c0ffee; run setup first" in result.stderr


FAKE_TOOLS = {
    # pip installs uv into ~/.local/bin; uv records its calls and makes a venv.
    "python3": ('echo "python3 $*" >> "$HOME/calls"\n'
                'if [ "$1 $2 $3" = "-m pip install" ]; then mkdir -p "$HOME/.local/bin";'
                ' cp "$(dirname "$0")/uv" "$HOME/.local/bin/uv"; fi\n'),
    "uv": ('[ "$1" = --version ] && { echo "uv %s (fake)"; exit 0; }\n'
           'echo "uv $*" >> "$HOME/calls"\n'
           'if [ "$1" = venv ]; then for last in "$@"; do :; done; mkdir -p "$last/bin"; fi\n'
           % tc.UV_VERSION),
    "apt-get": 'echo "apt-get $*" >> "$HOME/calls"; exit 100\n',
    "sudo": 'echo "sudo $*" >> "$HOME/calls"; exit 1\n',
    "curl": 'echo "curl $*" >> "$HOME/calls"; exit 1\n',
}


def test_setup_on_a_fake_worker_uses_uv_and_keeps_a_running_trainers_files(tmp_path, repo, sh):
  r, sha = repo
  code = tc.Code(str(r), sha, "0.10.2", str(tmp_path), python="3.11",
                 requirements=(r / "requirements.txt").read_text())
  pack, _, install = tc.setup(SLICE1, code)
  subprocess.run(pack, check=True)
  home, tools = tmp_path / "home", tmp_path / "tools"
  home.mkdir()
  tools.mkdir()
  for name, body in FAKE_TOOLS.items():
    (tools / name).write_text("#!/bin/bash\n" + body)
    (tools / name).chmod(0o755)
  path = f"{tools}:{os.environ['PATH']}"

  shutil.copy(code.local_archive, home)   # what scp does
  first = sh(remote(install), home, PATH=path)
  assert first.returncode == 0, first.stderr
  root = home / "mixmim"
  venv = root / f"venv-{code.env_id}"
  assert (root / f"code-{sha}" / "README.md").read_text() == "x\n"
  assert (venv / ".mixmim-ready").exists() and (root / "COMMIT").read_text() == sha + "\n"
  assert not list(root.glob(".unpack-*")) and not (home / code.archive_name).exists()
  assert (home / "calls").read_text().splitlines() == [
      f"python3 -m pip install -q --user uv=={tc.UV_VERSION}",
      f"uv venv -q --clear --managed-python --python 3.11 {venv}",
      f"uv pip install -q --python {venv}/bin/python jax[tpu]==0.10.2 "
      f"-r {root}/code-{sha}/requirements.txt"]   # no apt, no sudo: no dpkg lock to wait on

  # Again, as watch does after a preemption on a VM that kept its disk, while a
  # trainer uses the code: nothing it uses is deleted, nothing is reinstalled.
  in_use = root / f"code-{sha}" / "in-use"
  in_use.touch()
  shutil.copy(code.local_archive, home)
  (home / "calls").unlink()
  assert sh(remote(install), home, PATH=path).returncode == 0
  assert in_use.exists() and not (home / "calls").exists()
  assert not list(root.glob(".unpack-*"))


# --- parsing recorded gcloud output --------------------------------------------------------

def recorded(name):
  """(returncode, stdout, stderr) as gcloud gave them for a fixture."""
  path = FIXTURES / name
  if path.suffix == ".stderr":
    return 1, "", path.read_text()
  if path.suffix == ".json":
    return 0, path.read_text(), ""
  err = FIXTURES / (path.stem + ".stderr")
  stderr = err.read_text() if err.exists() else ""
  return (1 if "failed with exit status" in stderr else 0), path.read_text(), stderr


@pytest.mark.parametrize("name,state", [
    ("qr_waiting_for_resources.json", "WAITING_FOR_RESOURCES"),
    ("qr_provisioning.json", "PROVISIONING"), ("qr_active.json", "ACTIVE"),
    ("qr_suspending.json", "SUSPENDING"), ("qr_suspended.json", "SUSPENDED"),
    ("qr_failed.json", "FAILED"), ("qr_not_found.stderr", "NOT_FOUND"),
    ("node_creating.json", "CREATING"), ("node_ready.json", "READY"),
    ("node_preempted.json", "PREEMPTED"), ("node_not_found.stderr", "NOT_FOUND"),
])
def test_parse_describe(name, state):
  assert tw.parse_describe(*recorded(name)) == state


def test_parse_describe_other_errors_are_raised():
  with pytest.raises(RuntimeError, match="PERMISSION_DENIED"):
    tw.parse_describe(1, "", "ERROR: (gcloud) PERMISSION_DENIED: tpu.nodes.get")


@pytest.mark.parametrize("qr,node,condition", [
    ("WAITING_FOR_RESOURCES", "NOT_FOUND", tw.PROVISIONING),
    ("ACTIVE", "CREATING", tw.PROVISIONING), ("ACTIVE", "READY", tw.READY),
    ("ACTIVE", "PREEMPTED", tw.PREEMPTED), ("ACTIVE", "NOT_FOUND", tw.PREEMPTED),
    ("SUSPENDED", "NOT_FOUND", tw.PREEMPTED), ("FAILED", "NOT_FOUND", tw.FAILED),
    ("NOT_FOUND", "NOT_FOUND", tw.GONE),
    (None, "READY", tw.READY), (None, "PREEMPTED", tw.PREEMPTED),
    (None, "TERMINATED", tw.PREEMPTED), (None, "NOT_FOUND", tw.GONE),
])
def test_slice_condition(qr, node, condition):
  assert tw.slice_condition(node, qr) == condition


@pytest.mark.parametrize("name,job", [
    ("probe_running.stdout", tw.RUNNING), ("probe_absent.stdout", tw.ABSENT),
    ("probe_crashed.stdout", tw.CRASHED), ("probe_finished.stdout", tw.FINISHED),
    ("probe_partial.stdout", tw.UNREACHABLE), ("probe_stopped.stdout", tw.STOPPED),
])
def test_parse_probe(name, job):
  rc, out, _ = recorded(name)
  assert tw.parse_probe(rc, out, hosts=4).job == job


# --- the decision, from recorded output ----------------------------------------------------

POLL = {   # a short name for each recorded poll: (queued resource, node, probe)
    "waiting": ("qr_waiting_for_resources.json", "node_not_found.stderr", None),
    "provisioning": ("qr_provisioning.json", "node_not_found.stderr", None),
    "booting": ("qr_active.json", "node_creating.json", None),
    "absent": ("qr_active.json", "node_ready.json", "probe_absent.stdout"),
    "running": ("qr_active.json", "node_ready.json", "probe_running.stdout"),
    "partial": ("qr_active.json", "node_ready.json", "probe_partial.stdout"),
    "crashed": ("qr_active.json", "node_ready.json", "probe_crashed.stdout"),
    "finished": ("qr_active.json", "node_ready.json", "probe_finished.stdout"),
    "stopped": ("qr_active.json", "node_ready.json", "probe_stopped.stdout"),
    "node_preempted": ("qr_active.json", "node_preempted.json", None),
    "suspending": ("qr_suspending.json", "node_preempted.json", None),
    "suspended": ("qr_suspended.json", "node_not_found.stderr", None),
    "failed": ("qr_failed.json", "node_not_found.stderr", None),
    "deleted": ("qr_not_found.stderr", "node_not_found.stderr", None),
}


def observation(poll):
  qr, node, probe = POLL[poll]
  cond = tw.slice_condition(tw.parse_describe(*recorded(node)),
                            tw.parse_describe(*recorded(qr)))
  if cond != tw.READY:
    return tw.Observation(cond, tw.UNKNOWN, poll)
  return tw.parse_probe(*recorded(probe)[:2], hosts=4)


def replay(polls, **limits):
  """Feed the polls to decide(), acting as the loop would; return the actions."""
  history, actions = [], []
  for poll in polls:
    history.append(observation(poll))
    d = tw.decide(history, tw.Limits(**limits))
    actions.append(d.action)
    if d.action not in (tw.WAIT, tw.DONE, tw.GIVE_UP):
      history.append(tw.Taken(d.action))
  return actions, d


def test_preempted_then_recreated_then_resumed_then_done():
  actions, final = replay(["running", "running", "suspending", "suspended", "waiting",
                           "provisioning", "booting", "absent", "running", "finished"])
  assert actions == [tw.WAIT, tw.WAIT, tw.RECREATE, tw.RECREATE, tw.WAIT, tw.WAIT,
                     tw.WAIT, tw.START, tw.WAIT, tw.DONE]
  assert "every worker" in final.reason


def test_recreations_are_bounded():
  # Each preemption costs one recreation; the bound stops a run that keeps losing its slice.
  actions, final = replay(["suspended", "suspended", "suspended"], max_recreates=2)
  assert actions == [tw.RECREATE, tw.RECREATE, tw.GIVE_UP]
  assert "--max-recreates=2 is reached" in final.reason


def test_capacity_failures_are_retried_with_backoff_up_to_the_bound():
  """FAILED queued resources (no Spot capacity) are common: each one is retried after
  base x 2^(n-1) seconds, capped, and only a run of more than the bound stops watch."""
  limits = tw.Limits(max_capacity_retries=4, backoff_s=60, backoff_cap_s=200)
  history, decisions = [], []
  for poll in ["running", "node_preempted", "failed", "failed", "failed", "failed", "failed"]:
    history.append(observation(poll))
    decisions.append(tw.decide(history, limits))
    if decisions[-1].action == tw.RECREATE:
      history.append(tw.Taken(tw.RECREATE))
  assert [d.action for d in decisions] == [tw.WAIT] + [tw.RECREATE] * 5 + [tw.GIVE_UP]
  assert [d.wait_s for d in decisions] == [0, 0, 60, 120, 200, 200, 0]
  assert decisions[3].reason.endswith("capacity retry 2 of 4, recreating in 120 s")
  assert "(failed)" in decisions[3].reason
  assert decisions[-1].reason.startswith("creating the slice failed 5 times in a row")
  assert "--max-capacity-retries=4 is reached" in decisions[-1].reason


def test_capacity_retries_and_preemption_recreations_have_separate_bounds():
  actions, final = replay(["suspended", "failed", "failed", "failed", "waiting", "absent",
                           "running", "suspended"], max_recreates=1, max_capacity_retries=3)
  assert actions == [tw.RECREATE, tw.RECREATE, tw.RECREATE, tw.RECREATE, tw.WAIT, tw.START,
                     tw.WAIT, tw.GIVE_UP]
  assert "--max-recreates=1 is reached" in final.reason


def test_failure_counter_resets_after_a_healthy_slice():
  actions, _ = replay(["suspended", "failed", "waiting", "absent", "running",
                       "suspended", "failed", "waiting"])
  assert actions == [tw.RECREATE, tw.RECREATE, tw.WAIT, tw.START, tw.WAIT,
                     tw.RECREATE, tw.RECREATE, tw.WAIT]


def test_training_crash_restarts_once_then_stops_and_reports():
  actions, final = replay(["running", "crashed", "running", "crashed"])
  assert actions == [tw.WAIT, tw.START, tw.WAIT, tw.GIVE_UP]
  assert final.reason.startswith("training failed twice on this slice (exit code 1")
  assert "logs" in final.reason


def test_a_trainer_stopped_for_preemption_resumes_and_is_no_crash():
  """Exit code 75 (mixmim_jax/exit_codes.py: a preemption notice, SIGTERM,
  Ctrl-C; the checkpoint is saved): started again, never counted as a failure."""
  actions, final = replay(["running", "stopped", "running", "stopped", "running", "finished"])
  assert actions == [tw.WAIT, tw.START, tw.WAIT, tw.START, tw.WAIT, tw.DONE]
  actions, final = replay(["stopped", "stopped", "stopped"], max_recreates=2)
  assert actions == [tw.START, tw.START, tw.GIVE_UP]
  assert "--max-recreates=2 is reached" in final.reason


def test_a_start_that_does_not_take_counts_as_a_failure():
  actions, _ = replay(["absent", "absent", "absent"])
  assert actions == [tw.START, tw.START, tw.GIVE_UP]


def test_crashes_on_different_slices_are_preemptions_not_bugs():
  # A peer host vanishing can crash the trainer before the slice reads PREEMPTED.
  actions, _ = replay(["running", "crashed", "suspended", "waiting", "absent", "crashed",
                       "running"])
  assert actions == [tw.WAIT, tw.START, tw.RECREATE, tw.WAIT, tw.START, tw.START, tw.WAIT]


def test_deleted_outside_watch_stops():
  actions, final = replay(["running", "deleted"])
  assert actions == [tw.WAIT, tw.GIVE_UP] and "does not exist" in final.reason


def test_unreachable_workers_wait_then_report():
  actions, final = replay(["partial"] * tw.UNREACHABLE_POLLS)
  assert actions == [tw.WAIT] * (tw.UNREACHABLE_POLLS - 1) + [tw.GIVE_UP]
  assert "did not answer" in final.reason


# --- the loop itself, against a fake gcloud that replays recorded output ----------------------

def test_watch_loop_recreates_and_resumes_with_the_same_commands(env, repo):
  s = tpu.make_slice(type("A", (), {})(), need_accelerator=True)
  polls = iter(["running", "suspended", "waiting", "absent", "running", "finished"])
  calls, acted, current = [], [], {}

  def capture(cmd):
    calls.append(cmd)
    if cmd == tc.describe_queued(s):
      current["poll"] = next(polls)
      return recorded(POLL[current["poll"]][0])
    if cmd == tc.describe_node(s):
      return recorded(POLL[current["poll"]][1])
    assert cmd == tc.probe(s)
    return recorded(POLL[current["poll"]][2])

  lines = []
  final = tw.watch(poll=lambda: tpu.observe(s, capture),
                   act=lambda a: acted.append(a) or tw.Taken(a),
                   sleep=lambda _: None, log=lines.append)
  assert final.action == tw.DONE
  assert acted == [tw.RECREATE, tw.START]
  assert calls[:3] == [
      ["gcloud", "compute", "tpus", "queued-resources", "describe", "my-tpu", *WHERE,
       "--format=json"],
      ["gcloud", "compute", "tpus", "tpu-vm", "describe", "my-tpu", *WHERE, "--format=json"],
      tc.probe(s)]
  assert lines[1].startswith("[watch] slice PREEMPTED, job UNKNOWN: RECREATE - preempted "
                             "(queued resource SUSPENDED, node NOT_FOUND)")

  # And the action commands the loop would run: recreate = delete + create; start =
  # stop + verify + setup + start, all at the commit resolved when watch began.
  args = type("A", (), {"repo": str(repo[0]), "commit": None, "allow_dirty": False,
                        "staging_dir": "/tmp", "python": "3.11",
                        "overrides": [], "dry_run": True})()
  code = tpu.make_code(args)
  job = tpu.make_job(type("A", (), {"overrides": []})(), s, watching=True)
  steps = tpu.action_steps(tw.RECREATE, s, code, job, 120)
  assert [c for _, cmds in steps for c in cmds] == tc.delete(s) + tc.create(s)
  steps = tpu.action_steps(tw.START, s, code, job, 120)
  flat = [c for _, cmds in steps for c in cmds]
  assert flat == tc.stop(s, 120) + [tc.probe(s)] + tc.setup(s, code) + tc.start(s, code, job)
  assert all(code.sha in shlex.join(c) for c in flat[2:])


# --- the command line against a fake shell -------------------------------------------------

W = [f"t1v-n-4242abcd-w-{i}" for i in range(4)]   # the four workers of a v4-32


def lines(prefix, *items):
  return "".join(f"{prefix} {item}\n" for item in items)


class FakeShell:
  """Records every argv list (and every sleep) in order; answers each command by its
  kind with the next canned reply of that kind (the last one repeats)."""

  def __init__(self, **replies):
    self.calls = []   # (kind, argv or seconds, reply)
    self.replies = {kind: list(r) for kind, r in replies.items()}

  @staticmethod
  def kind(cmd):
    text = shlex.join(cmd)
    for kind, marker in [("describe_qr", "queued-resources describe"),
                         ("describe_node", "tpu-vm describe"), ("stop", "MIXMIM_STOP"),
                         ("probe", "MIXMIM_JOB"), ("start", "setsid nohup"),
                         ("pack", " archive "), ("copy", "tpu-vm scp"),
                         ("setup", "--managed-python"),
                         ("delete", "queued-resources delete"),
                         ("create", "queued-resources create")]:
      if marker in text:
        return kind
    raise AssertionError(f"unexpected command: {text}")

  def capture(self, cmd):
    kind = self.kind(cmd)
    queue = self.replies.get(kind, [])
    reply = (queue.pop(0) if len(queue) > 1 else queue[0]) if queue else ""
    reply = recorded(reply) if reply.endswith((".json", ".stderr", ".stdout")) else (0, reply, "")
    self.calls.append((kind, cmd, reply[1]))
    return reply

  def run(self, cmd):
    return self.capture(cmd)[0]

  def sleep(self, seconds):
    self.calls.append(("sleep", seconds, ""))

  def kinds(self):
    return [k if k != "sleep" else f"sleep {c:g}" for k, c, _ in self.calls]


def cli(argv, shell, capsys):
  logged = []
  rc = tpu.main(argv, shell=shell, sleep=shell.sleep, log=logged.append)
  out, err = capsys.readouterr()
  return rc, out, err, logged


def test_stop_reports_which_workers_needed_sigkill(env, capsys):
  shell = FakeShell(stop=[lines("MIXMIM_STOP", f"{W[0]} STOPPED_BY_TERM 12", f"{W[1]} KILLED",
                                f"{W[2]} NOT_RUNNING", f"{W[3]} KILLED")])
  rc, out, err, _ = cli(["stop", "--grace=30"], shell, capsys)
  assert rc == 0, err
  [(kind, cmd, _)] = shell.calls
  assert kind == "stop" and "--worker=all" in cmd
  assert 'while alive && [ "$waited" -lt 30 ]' in remote(cmd)
  assert f"{W[1]}: KILLED\n" in out and f"{W[0]}: STOPPED_BY_TERM\n" in out
  assert (f"stopped on all 4 workers: still running 30 s after SIGTERM, killed with SIGKILL "
          f"on {W[1]}, {W[3]}; stopped by SIGTERM on {W[0]}; no trainer on {W[2]}") in out


@pytest.mark.parametrize("reply,message", [
    (lines("MIXMIM_STOP", f"{W[0]} KILLED", f"{W[1]} NOT_RUNNING", f"{W[2]} NOT_RUNNING",
           f"{W[3]} STILL_ALIVE"), f"still alive after SIGKILL on {W[3]}"),
    (lines("MIXMIM_STOP", *(f"{w} NOT_RUNNING" for w in W[:3])), "only 3 of 4 workers answered"),
])
def test_stop_fails_when_a_worker_may_still_have_a_trainer(env, capsys, reply, message):
  rc, _, err, _ = cli(["stop"], FakeShell(stop=[reply]), capsys)
  last = err.splitlines()[-1]
  assert rc == 2 and message in last
  assert last.startswith("error: Stop did not reach a stopped trainer on every worker: ")


def test_parse_stop_and_live_trainers():
  report = tw.parse_stop("Using ssh batch size of 4.\n" + lines(
      "MIXMIM_STOP", f"{W[0]} STOPPED_BY_TERM 3", f"{W[1]} KILLED"), hosts=2, grace_s=120)
  assert report.outcomes == {W[0]: tw.STOPPED_BY_TERM, W[1]: tw.KILLED} and report.complete
  assert report.on(tw.KILLED) == [W[1]]
  _, crashed, _ = recorded("probe_crashed.stdout")
  assert tw.live_trainers(crashed, hosts=4) == f"live trainer on {W[0]}, {W[2]}, {W[3]}"
  assert tw.live_trainers(recorded("probe_stopped.stdout")[1], hosts=4) == ""
  assert tw.live_trainers(recorded("probe_partial.stdout")[1], hosts=4).startswith(
      "live trainer on")
  assert (tw.live_trainers(lines("MIXMIM_JOB", f"ABSENT {W[0]}"), hosts=4)
          == "only 1 of 4 workers answered")


def _never_starts_over_a_live_trainer(calls):
  """No setup or start while the last probe seen reported a live trainer."""
  live = False
  for kind, _, reply in calls:
    if kind == "probe":
      live = " RUNNING" in reply
    assert not (live and kind in ("pack", "copy", "setup", "start")), calls


def test_watch_holds_setup_and_start_until_no_worker_has_a_trainer(env, capsys, repo):
  """A crash on one worker leaves the others in a collective. START stops every worker;
  one trainer survives SIGKILL, so nothing is set up or started until a later stop
  gets it and every worker answers that it has none."""
  stuck = lines("MIXMIM_JOB", f"ABSENT {W[0]}", f"EXITED 1 {W[1]}", f"ABSENT {W[2]}",
                f"RUNNING {W[3]}")
  clear = lines("MIXMIM_JOB", f"ABSENT {W[0]}", f"EXITED 1 {W[1]}", f"ABSENT {W[2]}",
                f"ABSENT {W[3]}")
  shell = FakeShell(
      describe_qr=["qr_active.json"], describe_node=["node_ready.json"],
      probe=["probe_crashed.stdout", stuck, stuck, clear, "probe_running.stdout",
             "probe_finished.stdout"],
      stop=[lines("MIXMIM_STOP", f"{W[0]} KILLED", f"{W[1]} NOT_RUNNING", f"{W[2]} KILLED",
                  f"{W[3]} STILL_ALIVE"),
            lines("MIXMIM_STOP", f"{W[0]} NOT_RUNNING", f"{W[1]} NOT_RUNNING",
                  f"{W[2]} NOT_RUNNING", f"{W[3]} KILLED")])
  rc, _, err, logged = cli(["watch", f"--repo={repo[0]}"], shell, capsys)
  assert rc == 0, err
  poll = ["describe_qr", "describe_node", "probe"]
  assert shell.kinds() == (
      poll + ["stop", "probe", "sleep 300"] +                  # START held back
      poll + ["stop", "probe", "pack", "copy", "setup", "start", "sleep 300"] +
      poll + ["sleep 300"] + poll)                             # running, then finished
  _never_starts_over_a_live_trainer(shell.calls)
  assert (f"[watch] stop: still running 120 s after SIGTERM, killed with SIGKILL on {W[0]}, "
          f"{W[2]}; still alive after SIGKILL on {W[3]}; no trainer on {W[1]}") in logged
  assert f"[watch] setup and start held back: live trainer on {W[3]}" in logged
  assert any(f"held back (live trainer on {W[3]}); stopping again (attempt 2 of 3)" in line
             for line in logged)


def test_watch_gives_up_on_a_trainer_that_will_not_die(env, capsys, repo):
  stuck = lines("MIXMIM_JOB", *(f"ABSENT {w}" for w in W[:3]), f"RUNNING {W[3]}")
  shell = FakeShell(describe_qr=["qr_active.json"], describe_node=["node_ready.json"],
                    probe=["probe_crashed.stdout", stuck],
                    stop=[lines("MIXMIM_STOP", f"{W[3]} STILL_ALIVE")])
  rc, _, err, _ = cli(["watch", f"--repo={repo[0]}", "--max-stop-attempts=2"], shell, capsys)
  assert rc == 2 and f"a trainer survived 2 stops (live trainer on {W[3]})" in err
  assert shell.kinds().count("stop") == 2
  assert not {"pack", "copy", "setup", "start"} & set(shell.kinds())


def test_watch_retries_capacity_failures_with_backoff(env, capsys, repo):
  shell = FakeShell(
      describe_qr=["qr_failed.json", "qr_failed.json", "qr_waiting_for_resources.json",
                   "qr_active.json"],
      describe_node=["node_not_found.stderr", "node_not_found.stderr",
                     "node_not_found.stderr", "node_ready.json"],
      probe=["probe_absent.stdout", "probe_absent.stdout", "probe_finished.stdout"],
      stop=[lines("MIXMIM_STOP", *(f"{w} NOT_RUNNING" for w in W))])
  rc, _, err, logged = cli(["watch", f"--repo={repo[0]}", "--backoff=60"], shell, capsys)
  assert rc == 0, err
  slice_poll = ["describe_qr", "describe_node"]
  assert shell.kinds() == (
      slice_poll + ["sleep 60", "delete", "create", "sleep 300"] +
      slice_poll + ["sleep 120", "delete", "create", "sleep 300"] +
      slice_poll + ["sleep 300"] +
      slice_poll + ["probe", "stop", "probe", "pack", "copy", "setup", "start", "sleep 300"] +
      slice_poll + ["probe"])
  assert "capacity retry 1 of 20, recreating in 60 s" in logged[0]
  assert "There is no more capacity in the zone" in logged[0]
  assert "capacity retry 2 of 20, recreating in 120 s" in logged[1]


# --- GPU ----------------------------------------------------------------------------------

SHA = "0123456789abcdef0123456789abcdef01234567"
GPU = str(ROOT / "launch" / "gpu_multihost.sh")


def gpu(*argv, **environ):
  base = {k: v for k, v in os.environ.items() if not k.startswith("MIXMIM_")}
  return subprocess.run(["bash", GPU, *argv], env=dict(base, **environ),
                        capture_output=True, text=True, timeout=10)


def test_gpu_multihost_dry_run():
  out = gpu("--dry-run", "--workdir=gs://my-bucket/run", f"--commit={SHA}",
            "--remote-dir=/home/me/mixmim_jax", "--", "--config.batch_size=1024",
            MIXMIM_HOSTS="gpu-0 me@gpu-1", MIXMIM_DATA_DIR="gs://my-bucket/tfds")
  assert out.returncode == 0, out.stderr
  lines = [shlex.split(line) for line in out.stdout.splitlines()]
  assert [line[:2] for line in lines] == [["ssh", "gpu-0"], ["ssh", "me@gpu-1"]]
  for i, (_, _, script) in enumerate(lines):
    assert script == (
        f'set -e; cd /home/me/mixmim_jax; if [ "$(git rev-parse HEAD)" != {SHA} ]; then '
        f'echo "$(hostname): checkout is not at commit {SHA}" >&2; exit 1; fi; '
        'mkdir -p "$HOME/mixmim/logs"; '
        f"MIXMIM_COORDINATOR_ADDRESS=gpu-0:8476 MIXMIM_NUM_PROCESSES=2 MIXMIM_PROCESS_ID={i} "
        "setsid nohup /home/me/mixmim_jax/.venv/bin/python -m mixmim_jax.main "
        "--config=configs/base_pretrain.py --workdir=gs://my-bucket/run "
        "--config.data.data_dir=gs://my-bucket/tfds --config.batch_size=1024 "
        f'>> "$HOME/mixmim/logs/train-process-{i}.log" 2>&1 < /dev/null '
        f'& echo $! > "$HOME/mixmim/logs/train-process-{i}.pid"')
    subprocess.run(["bash", "-n", "-c", script], check=True)


@pytest.mark.parametrize("argv,environ,message", [
    ([], {}, "MIXMIM_HOSTS is not set"),
    (["--hosts=a b"], {}, "MIXMIM_WORKDIR is not set"),
    (["--hosts=a b", "--workdir=gs://my-bucket/x", "--port=99999"], {},
     "coordinator port '99999' is not valid; expected a number from 1 to 65535."),
    (["--hosts=a", "--workdir=gs://my-bucket/x", "--data-dir=/d", "--commit=abc"], {},
     "commit 'abc' is not a full 40-hex-digit commit id."),
    (["--bogus"], {}, "unknown argument '--bogus'"),
])
def test_gpu_multihost_bad_inputs(argv, environ, message):
  out = gpu("--dry-run", *argv, **environ)
  assert out.returncode == 2 and out.stdout == ""
  assert out.stderr.startswith("error: ") and message in out.stderr


def test_gpu_multihost_warns_on_unshared_workdir():
  out = gpu("--dry-run", "--hosts=a b", "--workdir=/ckpt", "--data-dir=/d", f"--commit={SHA}")
  assert out.returncode == 0
  assert "warning: workdir '/ckpt' is not on GCS; all 2 hosts must see it" in out.stderr


# --- shell scripts and docs -------------------------------------------------------------------

def test_shellcheck_clean():
  # .ci/run installs shellcheck; locally it is skipped when absent.
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck not on PATH")
  scripts = sorted(str(p) for p in (ROOT / "launch").glob("*.sh"))
  assert scripts
  out = subprocess.run(["shellcheck", "--severity=style", *scripts], capture_output=True,
                       text=True)
  assert out.returncode == 0, out.stdout + out.stderr


def test_readme_cost_table_is_the_computed_one():
  readme = (ROOT / "launch" / "README.md").read_text()
  assert cost.table(["v4-32", "v5e-64"], cost.train_gflop_per_image(), 0.40) in readme
  assert cost.price_table() in readme   # every price with the row it was read from
  assert "assumed here at 40 %" not in readme
  assert "python -m mixmim_jax.aot" in readme
  assert f"{cost.train_gflop_per_image():.1f} GFLOP" in readme


def test_cost_arithmetic():
  dec = cost.decoder_fwd_gflop()
  assert dec["blocks"] == pytest.approx(2 * 49 * 2 * 12 * 512 ** 2 * 8 / 1e9)
  assert sum(dec.values()) == pytest.approx(5.371, abs=1e-3)
  assert cost.train_gflop_per_image() == pytest.approx(3 * (32.7 + 5.371), abs=1e-2)
  r = cost.estimate("v4-32", 114.2, 0.4)
  assert r.seconds_per_epoch == pytest.approx(1_281_167 * 114.2e9 / (16 * 275e12 * 0.4))
  assert r.spot_usd == pytest.approx(r.chip_hours_per_epoch * 0.9215)


def test_every_price_names_its_catalog_row():
  """Each price per chip-hour is the catalog's slice price divided by the slice's chips."""
  for gen, p in cost.PRICES.items():
    slice_name, on_demand, spot, chips = re.fullmatch(
        r"tpu-(\S+): \$([\d,.]+) / \$([\d,.]+), (\d+) chips?", p.row).groups()
    acc = parse_accelerator(slice_name)
    assert acc.generation == gen and acc.chips == int(chips)
    assert float(on_demand.replace(",", "")) / acc.chips == pytest.approx(p.on_demand)
    assert float(spot.replace(",", "")) / acc.chips == pytest.approx(p.spot)
