"""The gcloud command lines for one TPU slice, built as argv lists.

Nothing here runs anything: each function returns the commands, so
`--dry-run` can print exactly what would run and the tests can compare them.
Flag names follow the gcloud reference pages for `compute tpus
queued-resources create|describe|delete` and `compute tpus tpu-vm
create|describe|delete|ssh|scp`.

On every worker the launcher owns one folder, $HOME/mixmim:
  code-<sha>/    the project at one commit (from `git archive`)
  venv/          Python with jax[tpu] at the version requirements.txt pins
  logs/train-<hostname>.log   that worker's log, appended across restarts
  train.pid      process-group id of the running trainer (for stop)
  exit_code      written when the trainer exits (for watch)
"""

import dataclasses
import os
import shlex
from typing import List, Optional, Sequence

from launch.accelerators import Accelerator

Command = List[str]

GCLOUD_TPUS = ["gcloud", "compute", "tpus"]
REMOTE_ROOT = '"$HOME/mixmim"'   # expanded by the worker's shell
ENTRY = "mixmim_jax.main"


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
  python: str = "python3.11"

  @property
  def archive_name(self) -> str:
    return f"mixmim_jax-{self.sha}.tar.gz"

  @property
  def local_archive(self) -> str:
    return os.path.join(self.staging_dir, self.archive_name)

  @property
  def remote_dir(self) -> str:
    return f"{REMOTE_ROOT}/code-{self.sha}"


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


# --- code and environment on every worker -------------------------------------

def setup(s: Slice, code: Code) -> List[Command]:
  """Pack the commit, copy it to all workers, unpack it and install the venv.

  Idempotent: a second run re-extracts the same commit and pip finds the
  pinned packages already there.
  """
  pack = ["git", "-C", code.repo, "archive", "--format=tar.gz",
          f"--prefix=code-{code.sha}/", f"--output={code.local_archive}", code.sha]
  venv = f"{REMOTE_ROOT}/venv"
  remote = "; ".join([
      "set -e",
      f"mkdir -p {REMOTE_ROOT}",
      f"rm -rf {code.remote_dir}",
      f'tar -xzf "$HOME/{code.archive_name}" -C {REMOTE_ROOT}',
      f'rm -f "$HOME/{code.archive_name}"',
      # Ubuntu 22.04 TPU images ship Python 3.10; our pins need >= 3.11.
      f"if ! command -v {code.python} >/dev/null; then sudo apt-get update -q"
      f" && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q"
      f" {code.python} {code.python}-venv; fi",
      f"if [ ! -x {venv}/bin/python ]; then {code.python} -m venv {venv}; fi",
      f"{venv}/bin/pip install -q --upgrade pip",
      f"{venv}/bin/pip install -q {shlex.quote(f'jax[tpu]=={code.jax_version}')}"
      f" -r {code.remote_dir}/requirements.txt",
      f"echo {code.sha} > {REMOTE_ROOT}/COMMIT",
  ])
  return [pack, scp(s, code.local_archive, code.archive_name), ssh(s, remote)]


# --- the training job ----------------------------------------------------------

def train_argv(job: Job, python: str = f"{REMOTE_ROOT}/venv/bin/python") -> str:
  args = [f"--config={job.config}", f"--workdir={job.workdir}",
          f"--config.data.data_dir={job.data_dir}", *job.overrides]
  return " ".join([python, "-m", ENTRY] + [shlex.quote(a) for a in args])


def start(s: Slice, code: Code, job: Job) -> List[Command]:
  """Start the trainer on every worker, detached from the ssh session.

  setsid + nohup + redirected stdin/stdout mean the ssh returns at once and a
  dropped connection does not kill training; the trainer's exit status lands
  in exit_code so `watch` can tell a finished run from a crashed one.
  """
  pid = f"{REMOTE_ROOT}/train.pid"
  log = f'{REMOTE_ROOT}/logs/train-"$(hostname)".log'
  inner = f"{train_argv(job)}; echo $? > {REMOTE_ROOT}/exit_code"
  remote = "; ".join([
      "set -e",
      f"cd {code.remote_dir}",
      f"mkdir -p {REMOTE_ROOT}/logs",
      f'if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then'
      f' echo "mixmim: training is already running on $(hostname); run stop first" >&2;'
      " exit 1; fi",
      f"rm -f {REMOTE_ROOT}/exit_code",
      f'echo "=== mixmim start $(date -u +%Y-%m-%dT%H:%M:%SZ) commit {code.sha} ===" >> {log}',
      # $! is setsid's pid, which becomes the session and process-group leader.
      f"setsid nohup bash -c {shlex.quote(inner)} >> {log} 2>&1 < /dev/null & echo $! > {pid}",
  ])
  return [ssh(s, remote)]


def stop(s: Slice) -> List[Command]:
  """Kill the trainer's process group on every worker (by its recorded id)."""
  pid = f"{REMOTE_ROOT}/train.pid"
  remote = (f'if [ -f {pid} ]; then kill -TERM -- "-$(cat {pid})" 2>/dev/null || true;'
            f" rm -f {pid}; fi")
  return [ssh(s, remote)]


# The probe prints one line per worker; see tpu_watch.parse_probe.
PROBE = (f"if [ -f {REMOTE_ROOT}/exit_code ]; then echo \"MIXMIM_JOB EXITED $(cat {REMOTE_ROOT}/exit_code)\";"
         f" elif [ -f {REMOTE_ROOT}/train.pid ] && kill -0 \"$(cat {REMOTE_ROOT}/train.pid)\" 2>/dev/null;"
         " then echo 'MIXMIM_JOB RUNNING'; else echo 'MIXMIM_JOB ABSENT'; fi")


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
