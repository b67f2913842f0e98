"""The gcloud command lines for one TPU slice, built as argv lists.

Nothing here runs anything: each function returns the commands, so
`--dry-run` can print exactly what would run and the tests can compare them.
Flag names follow the gcloud reference pages for `compute tpus
queued-resources create|describe|delete` and `compute tpus tpu-vm
create|describe|delete|ssh|scp`.

On every worker the launcher owns one folder, $HOME/mixmim:
  code-<sha>/       the project at one commit (from `git archive`), never
                    changed once unpacked
  venv-<env>/       Python 3.11 (uv-managed) with jax[tpu] at the pinned version
                    and requirements.txt; <env> hashes the Python version, the jax
                    pin and requirements.txt, so a commit that changes none of them
                    reuses it. Never changed once `.mixmim-ready` is in it.
  logs/train-<hostname>.log   that worker's log, appended across restarts
  train.pid         process-group id of the running trainer (for stop)
  exit_code         written when the trainer exits (for watch)

The remote scripts are one line each (gcloud passes --command to the worker's
shell) and print machine-readable lines that tpu_watch.py parses:
  MIXMIM_JOB RUNNING|ABSENT|EXITED <code> <hostname>       (probe)
  MIXMIM_STOP <hostname> NOT_RUNNING|STOPPED_BY_TERM <s>|KILLED|STILL_ALIVE   (stop)
"""

import dataclasses
import hashlib
import os
import shlex
from typing import List, Optional, Sequence

from launch.accelerators import Accelerator

Command = List[str]

GCLOUD_TPUS = ["gcloud", "compute", "tpus"]
REMOTE_ROOT = '"$HOME/mixmim"'   # expanded by the worker's shell
ENTRY = "mixmim_jax.main"
UV_VERSION = "0.13.9"            # installed from PyPI on the workers
READY_MARK = ".mixmim-ready"     # written into a venv once its install succeeded
# `stop` waits this long after SIGTERM before SIGKILL. The trainer answers SIGTERM by
# saving a checkpoint and exiting 75; on a multi-host slice JAX's preemption notifier
# first agrees on a step with every host. Spot gives a VM 30 s; a planned stop can wait
# for a checkpoint of MixMIM-B (about 1 GB to GCS), and longer buys nothing when a peer
# is dead and the others will never reach the agreed step.
STOP_GRACE_S = 120
KILL_WAIT_S = 10                 # after SIGKILL, how long until we call a process stuck


@dataclasses.dataclass(frozen=True)
class Slice:
  """Which TPU, where, and how it is provisioned."""
  name: str
  zone: str
  project: str
  accelerator: Accelerator
  runtime_version: str
  spot: bool = False
  queued: bool = False


@dataclasses.dataclass(frozen=True)
class Code:
  """One commit of the project, packed locally and shipped to every worker."""
  repo: str            # local checkout
  sha: str             # full commit id, resolved once
  jax_version: str     # pinned in requirements.txt at that commit
  staging_dir: str     # where the local archive is written
  python: str = "3.11"     # the Python version uv installs on the workers
  requirements: str = ""   # requirements.txt at that commit (names the venv)

  @property
  def archive_name(self) -> str:
    return f"mixmim_jax-{self.sha}.tar.gz"

  @property
  def local_archive(self) -> str:
    return os.path.join(self.staging_dir, self.archive_name)

  @property
  def remote_dir(self) -> str:
    return f"{REMOTE_ROOT}/code-{self.sha}"

  @property
  def env_id(self) -> str:
    text = f"python {self.python}\njax {self.jax_version}\n{self.requirements}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]

  @property
  def venv(self) -> str:
    return f"{REMOTE_ROOT}/venv-{self.env_id}"


@dataclasses.dataclass(frozen=True)
class Job:
  """What to train and where the data and checkpoints live."""
  config: str
  workdir: str
  data_dir: str
  overrides: Sequence[str] = ()


def _where(s: Slice) -> Command:
  return [f"--zone={s.zone}", f"--project={s.project}"]


# --- the slice ---------------------------------------------------------------

def create(s: Slice) -> List[Command]:
  if s.queued:
    cmd = GCLOUD_TPUS + [
        "queued-resources", "create", s.name, f"--node-id={s.name}", *_where(s),
        f"--accelerator-type={s.accelerator.type}",
        f"--runtime-version={s.runtime_version}"]
  else:
    # tpu-vm create calls the runtime flag --version.
    cmd = GCLOUD_TPUS + [
        "tpu-vm", "create", s.name, *_where(s),
        f"--accelerator-type={s.accelerator.type}", f"--version={s.runtime_version}"]
  if s.spot:
    cmd.append("--spot")
  return [cmd]


def delete(s: Slice) -> List[Command]:
  # --force deletes the queued resource's node too, whatever its state.
  if s.queued:
    return [GCLOUD_TPUS + ["queued-resources", "delete", s.name, *_where(s),
                           "--force", "--quiet"]]
  return [GCLOUD_TPUS + ["tpu-vm", "delete", s.name, *_where(s), "--quiet"]]


def describe_queued(s: Slice) -> Command:
  return GCLOUD_TPUS + ["queued-resources", "describe", s.name, *_where(s),
                        "--format=json"]


def describe_node(s: Slice) -> Command:
  return GCLOUD_TPUS + ["tpu-vm", "describe", s.name, *_where(s), "--format=json"]


def describe(s: Slice) -> List[Command]:
  return ([describe_queued(s)] if s.queued else []) + [describe_node(s)]


def ssh(s: Slice, command: str, worker: str = "all") -> Command:
  return GCLOUD_TPUS + ["tpu-vm", "ssh", s.name, *_where(s), f"--worker={worker}",
                        f"--command={command}"]


def scp(s: Slice, local: str, remote: str, worker: str = "all") -> Command:
  return GCLOUD_TPUS + ["tpu-vm", "scp", local, f"{s.name}:{remote}", *_where(s),
                        f"--worker={worker}"]


# --- finding a trainer on a worker ------------------------------------------------

# Shell functions for start, stop and the probe. A trainer is the process group that
# train.pid names (checked to still run mixmim_jax.main, so a reused id after a reboot
# is not taken for one), or a "stray": any process running one of our venvs' python on
# mixmim_jax.main outside that group, e.g. one whose train.pid was deleted. The
# [.] keeps pgrep from matching the shell that runs this text.
TRAINER_FUNCTIONS = "; ".join([
    'root="$HOME/mixmim"',
    'pgid="$(cat "$root/train.pid" 2>/dev/null || true)"',
    'case "$pgid" in ""|*[!0-9]*) pgid="";; esac',
    'group_alive() { [ -n "$pgid" ] && pgrep -g "$pgid" -f "mixmim_jax[.]main" >/dev/null; }',
    'strays() { for p in $(pgrep -f "$root/venv[^ ]*/bin/python -m mixmim_jax[.]main");'
    ' do [ "$(ps -o pgid= -p "$p" | tr -d " ")" = "$pgid" ] || echo "$p"; done; }',
    'alive() { group_alive || [ -n "$(strays)" ]; }',
])


# --- code and environment on every worker -------------------------------------

def setup(s: Slice, code: Code) -> List[Command]:
  """Pack the commit, copy it to all workers, unpack it and build its venv.

  Idempotent, and safe next to a running trainer: the code is unpacked into a
  temporary folder and renamed into place, so code-<sha> is either absent or
  whole and is never deleted; a venv marked ready is never touched again.
  Python comes from uv (installed from PyPI), not apt: Ubuntu 22.04's only
  python3.11 package is 3.11.0~rc1, and apt fails while unattended-upgrades
  holds the dpkg lock on a fresh VM.
  """
  pack = ["git", "-C", code.repo, "archive", "--format=tar.gz",
          f"--prefix=code-{code.sha}/", f"--output={code.local_archive}", code.sha]
  code_dir, venv, archive = code.remote_dir, code.venv, f'"$HOME/{code.archive_name}"'
  uv = '"$HOME/.local/bin/uv"'
  remote = "; ".join([
      "set -e",
      f"mkdir -p {REMOTE_ROOT}",
      f"if [ ! -d {code_dir} ]; then unpack=\"$(mktemp -d {REMOTE_ROOT}/.unpack-XXXXXX)\";"
      f' tar -xzf {archive} -C "$unpack"; mv "$unpack/code-{code.sha}" {code_dir};'
      ' rmdir "$unpack"; fi',
      f"rm -f {archive}",
      # uv from PyPI; uv's own installer (same version) where the image has no pip.
      f'if [ "$({uv} --version 2>/dev/null | cut -d" " -f2)" != {UV_VERSION} ]; then'
      f" python3 -m pip install -q --user uv=={UV_VERSION} ||"
      f" curl -LsSf https://astral.sh/uv/{UV_VERSION}/install.sh | env UV_NO_MODIFY_PATH=1 sh;"
      " fi",
      f"if [ ! -f {venv}/{READY_MARK} ]; then"
      f" {uv} venv -q --clear --managed-python --python {shlex.quote(code.python)} {venv};"
      f" {uv} pip install -q --python {venv}/bin/python"
      f" {shlex.quote(f'jax[tpu]=={code.jax_version}')} -r {code_dir}/requirements.txt;"
      f" touch {venv}/{READY_MARK}; fi",
      f"echo {code.sha} > {REMOTE_ROOT}/COMMIT",
  ])
  return [pack, scp(s, code.local_archive, code.archive_name), ssh(s, remote)]


# --- the training job ----------------------------------------------------------

def train_argv(job: Job, python: str) -> str:
  args = [f"--config={job.config}", f"--workdir={job.workdir}",
          f"--config.data.data_dir={job.data_dir}", *job.overrides]
  return " ".join([python, "-m", ENTRY] + [shlex.quote(a) for a in args])


def start(s: Slice, code: Code, job: Job) -> List[Command]:
  """Start the trainer on every worker, detached from the ssh session.

  Refuses on a worker where a trainer is alive (train.pid or a stray), or whose
  venv for this commit is not ready. setsid + nohup + redirected stdin/stdout
  mean the ssh returns at once and a dropped connection does not kill training;
  the trainer's exit status lands in exit_code so `watch` can tell a finished
  run from a crashed one.
  """
  pid = f"{REMOTE_ROOT}/train.pid"
  log = f'{REMOTE_ROOT}/logs/train-"$(hostname)".log'
  inner = f"{train_argv(job, f'{code.venv}/bin/python')}; echo $? > {REMOTE_ROOT}/exit_code"
  remote = "; ".join([
      TRAINER_FUNCTIONS,
      "set -e",
      "if alive; then"
      ' echo "mixmim: training is already running on $(hostname); run stop first" >&2;'
      " exit 1; fi",
      f"if [ ! -f {code.venv}/{READY_MARK} ]; then"
      f' echo "mixmim: $(hostname) has no environment for commit {code.sha[:12]};'
      ' run setup first" >&2; exit 1; fi',
      f"cd {code.remote_dir}",
      f"mkdir -p {REMOTE_ROOT}/logs",
      f"rm -f {REMOTE_ROOT}/exit_code",
      f'echo "=== mixmim start $(date -u +%Y-%m-%dT%H:%M:%SZ) commit {code.sha} ===" >> {log}',
      # $! is setsid's pid, which becomes the session and process-group leader.
      f"setsid nohup bash -c {shlex.quote(inner)} >> {log} 2>&1 < /dev/null & echo $! > {pid}",
  ])
  return [ssh(s, remote)]


def stop_script(grace_s: int = STOP_GRACE_S) -> str:
  """SIGTERM to the trainer, up to grace_s seconds, then SIGKILL; one line of result.

  train.pid is deleted only once no trainer is left, so a trainer that outlives
  the stop can still be found and stopped again.
  """
  wait = 'waited=0; while alive && [ "$waited" -lt {} ]; do sleep 1; waited=$((waited + 1)); done'
  return "; ".join([
      TRAINER_FUNCTIONS,
      'host="$(hostname)"',
      'signal() { if group_alive; then kill -s "$1" -- "-$pgid" 2>/dev/null || true; fi;'
      ' for p in $(strays); do kill -s "$1" "$p" 2>/dev/null || true; done; }',
      'if ! alive; then rm -f "$root/train.pid"; echo "MIXMIM_STOP $host NOT_RUNNING"; exit 0; fi',
      "signal TERM",
      wait.format(int(grace_s)),
      'if ! alive; then rm -f "$root/train.pid";'
      ' echo "MIXMIM_STOP $host STOPPED_BY_TERM $waited"; exit 0; fi',
      "signal KILL",
      wait.format(KILL_WAIT_S),
      'if alive; then echo "MIXMIM_STOP $host STILL_ALIVE"; exit 1; fi',
      'rm -f "$root/train.pid"; echo "MIXMIM_STOP $host KILLED"',
  ])


def stop(s: Slice, grace_s: int = STOP_GRACE_S) -> List[Command]:
  """Stop the trainer on every worker: SIGTERM, grace_s seconds, SIGKILL."""
  return [ssh(s, stop_script(grace_s))]


# The probe prints one line per worker; see tpu_watch.parse_probe. A live trainer
# wins over an old exit_code: it is what `watch` must never start over.
PROBE = "; ".join([
    TRAINER_FUNCTIONS,
    'host="$(hostname)"',
    'if alive; then echo "MIXMIM_JOB RUNNING $host";'
    ' elif [ -f "$root/exit_code" ]; then echo "MIXMIM_JOB EXITED $(cat "$root/exit_code") $host";'
    ' else echo "MIXMIM_JOB ABSENT $host"; fi',
])


def probe(s: Slice) -> Command:
  return ssh(s, PROBE)


def logs(s: Slice, worker: str = "0", lines: int = 100, follow: bool = False) -> List[Command]:
  tail = "tail -F" if follow else "tail"
  return [ssh(s, f"{tail} -n {int(lines)} {REMOTE_ROOT}/logs/train-*.log", worker=worker)]


def render(commands: Sequence[Command], comment: Optional[str] = None) -> str:
  """Shell-quoted, one command a line: what --dry-run prints."""
  lines = [f"# {comment}"] if comment else []
  lines += [shlex.join(c) for c in commands]
  return "\n".join(lines)
