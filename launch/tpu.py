r"""Cloud TPU launcher for MixMIM pretraining (stdlib only; run it where gcloud is).

  python -m launch.tpu create  [--spot] [--queued]   # the slice
  python -m launch.tpu setup                         # venv + this commit on every worker
  python -m launch.tpu start   [-- --config.x=y ...] # train on every worker, detached
  python -m launch.tpu watch                         # resume after preemption, bounded
  python -m launch.tpu status | logs [--worker=N|all] [--follow]
  python -m launch.tpu stop [--grace=120]            # SIGTERM, grace, SIGKILL; every worker
  python -m launch.tpu delete

Every value comes from a flag or, failing that, an environment variable:
  --name TPU_NAME   --zone TPU_ZONE   --project GCP_PROJECT
  --accelerator-type TPU_ACCELERATOR_TYPE   --runtime-version TPU_RUNTIME_VERSION
  --spot TPU_SPOT=1   --queued TPU_QUEUED=1
  --workdir MIXMIM_WORKDIR (gs://...)   --data-dir MIXMIM_DATA_DIR (gs://...)
  --config MIXMIM_CONFIG (default configs/base_pretrain.py)
Arguments after `--` go to the trainer unchanged.
`--dry-run` checks the inputs and prints the gcloud commands instead of running them.
See launch/README.md, "Train on Cloud TPU".
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Optional, Sequence, Tuple

from launch import tpu_commands as tc
from launch import tpu_watch
from launch.accelerators import LaunchError, parse_accelerator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = "configs/base_pretrain.py"
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
_PROJECT = re.compile(r"[a-z][-a-z0-9]{4,28}[a-z0-9]")
_GCS = re.compile(r"gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/.*)?")
_PYTHON = re.compile(r"3\.[0-9]+(\.[0-9]+)?")


# --- inputs ------------------------------------------------------------------------

def _env_bool(name: str) -> bool:
  value = os.environ.get(name, "").strip().lower()
  if value in ("", "0", "false", "no"):
    return False
  if value in ("1", "true", "yes"):
    return True
  raise LaunchError(f"{name}={os.environ[name]!r} is not a yes/no value; expected 1 or 0.")


def _value(args, attr: str, env: str, default: Optional[str] = None) -> Optional[str]:
  v = getattr(args, attr, None)
  if v is None:
    v = os.environ.get(env) or default
  return v


def _required(args, attr: str, env: str, hint: str, pattern=None) -> str:
  v = _value(args, attr, env)
  flag = "--" + attr.replace("_", "-")
  if not v:
    raise LaunchError(f"{env} is not set; pass {flag} or export {env} ({hint}).")
  if pattern is not None and not pattern.fullmatch(v):
    raise LaunchError(f"{flag} {v!r} is not valid; expected {hint}.")
  return v


def make_slice(args, need_accelerator: bool) -> tc.Slice:
  name = _required(args, "name", "TPU_NAME",
                   "a TPU name: lowercase letters, digits and hyphens", _NAME)
  zone = _required(args, "zone", "TPU_ZONE", "a zone such as us-central2-b", _ZONE)
  project = _required(args, "project", "GCP_PROJECT", "a Google Cloud project id", _PROJECT)
  accel_name = _value(args, "accelerator_type", "TPU_ACCELERATOR_TYPE")
  if need_accelerator and not accel_name:
    raise LaunchError("TPU_ACCELERATOR_TYPE is not set; pass --accelerator-type or export "
                      "TPU_ACCELERATOR_TYPE (e.g. v4-32, v5litepod-64, v5p-8, v6e-16).")
  accel = parse_accelerator(accel_name) if accel_name else None
  runtime = _value(args, "runtime_version", "TPU_RUNTIME_VERSION",
                   accel.default_runtime if accel else "")
  spot = args.spot if getattr(args, "spot", None) is not None else _env_bool("TPU_SPOT")
  queued = (args.queued if getattr(args, "queued", None) is not None
            else _env_bool("TPU_QUEUED"))
  return tc.Slice(name, zone, project, accel, runtime, spot=spot, queued=queued)


def _gcs_or_local(path: str, what: str, flag: str, env: str, example: str,
                  s: tc.Slice, must_be_gcs_reason: Optional[str]) -> str:
  if not path:
    raise LaunchError(f"{env} is not set; pass {flag} or export {env} (expected {example}).")
  if path.startswith("gs://"):
    if not _GCS.fullmatch(path):
      raise LaunchError(f"{what} {path!r} is not a valid GCS path; expected {example}.")
    return path
  if must_be_gcs_reason:
    raise LaunchError(f"{what} {path!r} is not on GCS, but {must_be_gcs_reason}; "
                      f"expected {example}.")
  return path


def make_job(args, s: tc.Slice, watching: bool) -> tc.Job:
  hosts = s.accelerator.hosts
  multi = (f"{s.accelerator.type} has {hosts} hosts that must all read and write the same "
           "files") if hosts > 1 else None
  lost = ("watch recreates the VM after a preemption and a local {} is lost with it"
          if watching else None)
  workdir = _gcs_or_local(
      _value(args, "workdir", "MIXMIM_WORKDIR"), "Workdir", "--workdir", "MIXMIM_WORKDIR",
      "gs://BUCKET/PATH for checkpoints", s, multi or (lost and lost.format("workdir")))
  data_dir = _gcs_or_local(
      _value(args, "data_dir", "MIXMIM_DATA_DIR"), "Data dir", "--data-dir",
      "MIXMIM_DATA_DIR", "gs://BUCKET/tensorflow_datasets holding imagenet2012", s,
      multi or (lost and lost.format("data dir")))
  config = _value(args, "config", "MIXMIM_CONFIG", DEFAULT_CONFIG)
  return tc.Job(config, workdir, data_dir, tuple(args.overrides))


def _git(repo: str, *argv: str) -> str:
  out = subprocess.run(["git", "-C", repo, *argv], capture_output=True, text=True)
  if out.returncode != 0:
    raise LaunchError(f"git {' '.join(argv)} failed in {repo!r}: {out.stderr.strip()}")
  return out.stdout


def make_code(args) -> tc.Code:
  """Resolve the commit once; refuse a dirty tree unless --allow-dirty."""
  repo = args.repo or REPO
  commit = args.commit or "HEAD"
  probe = subprocess.run(["git", "-C", repo, "rev-parse", "--verify", "--quiet",
                          f"{commit}^{{commit}}"], capture_output=True, text=True)
  if probe.returncode != 0:
    raise LaunchError(f"Commit {commit!r} is not in the git repository {repo!r}; expected "
                      "a commit id, branch or tag there.")
  sha = probe.stdout.strip()
  dirty = [line for line in _git(repo, "status", "--porcelain", "--untracked-files=no")
           .splitlines() if line.strip()]
  if dirty:
    shown = ", ".join(line[3:] for line in dirty[:3]) + (", ..." if len(dirty) > 3 else "")
    msg = (f"The working tree of {repo!r} has uncommitted changes ({shown}); the workers "
           f"get commit {sha[:12]} without them")
    if not args.allow_dirty:
      raise LaunchError(msg + ". Commit them, or pass --allow-dirty.")
    print(f"warning: {msg}.", file=sys.stderr)
  reqs = subprocess.run(["git", "-C", repo, "show", f"{sha}:requirements.txt"],
                        capture_output=True, text=True)
  if reqs.returncode != 0:
    raise LaunchError(f"Commit {sha[:12]} has no requirements.txt; expected the pinned "
                      "requirements there (the TPU workers install from it).")
  m = re.search(r"^jax==([0-9][^\s;#]*)", reqs.stdout, re.M)
  if not m:
    raise LaunchError(f"requirements.txt at commit {sha[:12]} pins no jax version; expected "
                      "a line like jax==0.10.2 (the TPU workers install jax[tpu] at it).")
  if not _PYTHON.fullmatch(args.python):
    raise LaunchError(f"--python {args.python!r} is not a Python version; expected one uv "
                      "can install on the workers, such as 3.11.")
  staging = args.staging_dir or tempfile.gettempdir()
  if not args.dry_run:
    os.makedirs(staging, exist_ok=True)
  return tc.Code(repo, sha, m.group(1), staging, python=args.python,
                 requirements=reqs.stdout)


# --- running -------------------------------------------------------------------------

class Shell:
  """Runs commands. Tests pass a fake with the same two methods that records the
  argv lists and answers with canned output per worker."""

  def run(self, cmd: tc.Command) -> int:
    """Run with output to the terminal; the exit code."""
    print("+ " + tc.render([cmd]), file=sys.stderr, flush=True)
    return subprocess.run(cmd).returncode

  def capture(self, cmd: tc.Command) -> Tuple[int, str, str]:
    """Run quietly; (exit code, stdout, stderr)."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    return out.returncode, out.stdout, out.stderr


def run_all(commands: Sequence[tc.Command], dry_run: bool, comment: Optional[str] = None,
            check: bool = True, shell: Optional[Shell] = None) -> bool:
  if dry_run:
    print(tc.render(commands, comment))
    return True
  shell = shell or Shell()
  for cmd in commands:
    rc = shell.run(cmd)
    if rc != 0:
      if check:
        raise LaunchError(f"This command failed with exit code {rc}: {tc.render([cmd])}")
      return False
  return True


def _hosts(s: tc.Slice) -> int:
  return s.accelerator.hosts if s.accelerator else 1


def observe(s: tc.Slice, capture=None) -> tpu_watch.Observation:
  """One poll: the slice's state, then (if READY) the trainer's on every worker."""
  capture = capture or Shell().capture
  try:
    described = capture(tc.describe_queued(s)) if s.queued else None
    qr = tpu_watch.parse_describe(*described) if described else None
    node = tpu_watch.parse_describe(*capture(tc.describe_node(s)))
  except RuntimeError as e:   # an API hiccup: report it, decide to wait
    return tpu_watch.Observation("UNKNOWN", tpu_watch.UNKNOWN, str(e))
  cond = tpu_watch.slice_condition(node, qr)
  detail = (f"queued resource {qr}, node {node}" if s.queued else f"node {node}")
  if qr == "FAILED" and tpu_watch.failure_message(described[1]):
    detail += f": {tpu_watch.failure_message(described[1])}"
  if cond != tpu_watch.READY:
    return tpu_watch.Observation(cond, tpu_watch.UNKNOWN, detail)
  rc, out, err = capture(tc.probe(s))
  job = tpu_watch.parse_probe(rc, out, _hosts(s))
  return tpu_watch.Observation(job.slice, job.job, f"{detail}; {job.detail}")


def stop_all(s: tc.Slice, grace_s: int, shell: Shell) -> tpu_watch.StopReport:
  """SIGTERM, grace_s seconds, SIGKILL on every worker; what each one reported."""
  [cmd] = tc.stop(s, grace_s)
  print("+ " + tc.render([cmd]), file=sys.stderr, flush=True)
  _, out, _ = shell.capture(cmd)
  return tpu_watch.parse_stop(out, _hosts(s), grace_s)


def action_steps(action: str, s: tc.Slice, code: tc.Code, job: tc.Job, grace_s: int):
  """(what, commands) for each step of an action, in order."""
  if action == tpu_watch.RECREATE:
    return [("delete", tc.delete(s)), ("create", tc.create(s))]
  if action == tpu_watch.START:
    return [("stop", tc.stop(s, grace_s)), ("verify", [tc.probe(s)]),
            ("setup", tc.setup(s, code)), ("start", tc.start(s, code, job))]
  raise ValueError(action)


def act(action: str, s: tc.Slice, code: tc.Code, job: tc.Job, grace_s: int,
        shell: Shell, log: Callable[[str], None]) -> tpu_watch.Taken:
  """Carry out one action. START never sets up or starts while a worker has a
  trainer: it stops every worker, then checks them all, and holds back if any
  still has one (or does not answer)."""
  if action == tpu_watch.RECREATE:
    run_all(tc.delete(s), dry_run=False, check=False, shell=shell)
    return tpu_watch.Taken(action, run_all(tc.create(s), dry_run=False, check=False,
                                           shell=shell))
  report = stop_all(s, grace_s, shell)
  log(f"[watch] stop: {report.summary()}")
  _, out, _ = shell.capture(tc.probe(s))
  live = tpu_watch.live_trainers(out, _hosts(s))
  if live:
    return tpu_watch.Taken(action, ok=False, blocked=live)
  for commands in (tc.setup(s, code), tc.start(s, code, job)):
    if not run_all(commands, dry_run=False, check=False, shell=shell):
      return tpu_watch.Taken(action, ok=False)
  return tpu_watch.Taken(action)


# --- subcommands ----------------------------------------------------------------------

def cmd_create(args):
  s = make_slice(args, need_accelerator=True)
  run_all(tc.create(s), args.dry_run, shell=args.shell)


def cmd_delete(args):
  s = make_slice(args, need_accelerator=False)
  run_all(tc.delete(s), args.dry_run, shell=args.shell)


def cmd_setup(args):
  s = make_slice(args, need_accelerator=False)
  run_all(tc.setup(s, make_code(args)), args.dry_run, shell=args.shell)


def cmd_start(args):
  s = make_slice(args, need_accelerator=True)
  job = make_job(args, s, watching=False)
  run_all(tc.start(s, make_code(args), job), args.dry_run, shell=args.shell)


def cmd_stop(args):
  # The accelerator type tells how many workers must answer.
  s = make_slice(args, need_accelerator=True)
  grace = _grace(args)
  if args.dry_run:
    run_all(tc.stop(s, grace), True)
    return
  report = stop_all(s, grace, args.shell)
  for host, outcome in sorted(report.outcomes.items()):
    print(f"{host}: {outcome}")
  if not report.complete:
    raise LaunchError(f"Stop did not reach a stopped trainer on every worker: "
                      f"{report.summary()}; run stop again, or log in to those workers.")
  print(f"stopped on all {report.hosts} workers: {report.summary()}")


def cmd_logs(args):
  s = make_slice(args, need_accelerator=False)
  run_all(tc.logs(s, worker=args.worker, lines=args.lines, follow=args.follow),
          args.dry_run, check=False, shell=args.shell)


def cmd_status(args):
  s = make_slice(args, need_accelerator=False)
  if args.dry_run:
    run_all(tc.describe(s) + [tc.probe(s)], True)
    return
  obs = observe(s, args.shell.capture)
  print(f"slice {obs.slice}, job {obs.job}: {obs.detail}")


def _grace(args) -> int:
  if args.grace < 0:
    raise LaunchError(f"--grace {args.grace} is negative; expected the seconds to wait "
                      "between SIGTERM and SIGKILL, such as 120.")
  return args.grace


def _limits(args) -> tpu_watch.Limits:
  for flag, value in [("--max-recreates", args.max_recreates),
                      ("--max-capacity-retries", args.max_capacity_retries),
                      ("--max-stop-attempts", args.max_stop_attempts)]:
    if value < (1 if flag == "--max-stop-attempts" else 0):
      raise LaunchError(f"{flag} {value} is too small; expected a count such as 10.")
  if not 0 < args.backoff <= args.backoff_cap:
    raise LaunchError(f"--backoff {args.backoff:g} and --backoff-cap {args.backoff_cap:g} are "
                      "not valid; expected 0 < backoff <= backoff-cap seconds.")
  return tpu_watch.Limits(args.max_recreates, args.max_capacity_retries, args.backoff,
                          args.backoff_cap, args.max_stop_attempts)


def cmd_watch(args):
  s = make_slice(args, need_accelerator=True)
  job = make_job(args, s, watching=True)
  code = make_code(args)   # fixed for the whole watch: every recreation gets this commit
  limits, grace = _limits(args), _grace(args)
  if args.dry_run:
    run_all(tc.describe(s) + [tc.probe(s)], True, comment=f"every {args.interval:g} s: poll")
    for action in (tpu_watch.RECREATE, tpu_watch.START):
      for what, commands in action_steps(action, s, code, job, grace):
        run_all(commands, True, comment=f"on {action}: {what}")
    return
  log = args.log or (lambda line: print(time.strftime("%Y-%m-%d %H:%M:%S ") + line,
                                        flush=True))
  decision = tpu_watch.watch(
      poll=lambda: observe(s, args.shell.capture),
      act=lambda a: act(a, s, code, job, grace, args.shell, log),
      sleep=args.sleep, log=log, interval_s=args.interval, limits=limits)
  if decision.action != tpu_watch.DONE:
    raise LaunchError(f"Watch stopped: {decision.reason}.")


# --- flags --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--name", help="TPU (and queued resource) name [TPU_NAME]")
  common.add_argument("--zone", help="[TPU_ZONE]")
  common.add_argument("--project", help="[GCP_PROJECT]")
  common.add_argument("--accelerator-type", help="v4-32, v5litepod-64, ... [TPU_ACCELERATOR_TYPE]")
  common.add_argument("--runtime-version", help="default by generation [TPU_RUNTIME_VERSION]")
  common.add_argument("--spot", action=argparse.BooleanOptionalAction, default=None,
                      help="Spot capacity [TPU_SPOT]")
  common.add_argument("--queued", action=argparse.BooleanOptionalAction, default=None,
                      help="create through queued resources [TPU_QUEUED]")
  common.add_argument("--dry-run", action="store_true",
                      help="check inputs and print the commands instead of running them")
  code = argparse.ArgumentParser(add_help=False)
  code.add_argument("--commit", help="commit to ship (default HEAD)")
  code.add_argument("--repo", help="local checkout (default: this one)")
  code.add_argument("--allow-dirty", action="store_true",
                    help="ship the commit even if the tree has uncommitted changes")
  code.add_argument("--staging-dir", help="where the archive is written (default: temp dir)")
  code.add_argument("--python", default="3.11",
                    help="Python version uv installs for the workers' venv")
  stopping = argparse.ArgumentParser(add_help=False)
  stopping.add_argument("--grace", type=int, default=tc.STOP_GRACE_S,
                        help="seconds from SIGTERM to SIGKILL when stopping a trainer")
  job = argparse.ArgumentParser(add_help=False)
  job.add_argument("--workdir", help="checkpoints, gs://... [MIXMIM_WORKDIR]")
  job.add_argument("--data-dir", help="tfds data_dir, gs://... [MIXMIM_DATA_DIR]")
  job.add_argument("--config", help=f"[MIXMIM_CONFIG], default {DEFAULT_CONFIG}")

  parser = argparse.ArgumentParser(prog="python -m launch.tpu", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  sub.add_parser("create", parents=[common], help="create the slice").set_defaults(fn=cmd_create)
  sub.add_parser("setup", parents=[common, code],
                 help="venv + this commit on every worker").set_defaults(fn=cmd_setup)
  sub.add_parser("start", parents=[common, code, job],
                 help="start training on every worker").set_defaults(fn=cmd_start)
  w = sub.add_parser("watch", parents=[common, code, job, stopping],
                     help="keep the run alive across preemptions")
  limits = tpu_watch.Limits()
  w.add_argument("--interval", type=float, default=300, help="seconds between polls")
  w.add_argument("--max-recreates", type=int, default=limits.max_recreates,
                 help="bound on recreations after preemption, and on resumes after exit 75")
  w.add_argument("--max-capacity-retries", type=int, default=limits.max_capacity_retries,
                 help="bound on failed creations (e.g. no Spot capacity) in a row")
  w.add_argument("--backoff", type=float, default=limits.backoff_s,
                 help="seconds before the first capacity retry, doubled each time")
  w.add_argument("--backoff-cap", type=float, default=limits.backoff_cap_s,
                 help="the longest wait between capacity retries")
  w.add_argument("--max-stop-attempts", type=int, default=limits.max_stop_attempts,
                 help="STARTs in a row held back by a trainer that would not stop")
  w.set_defaults(fn=cmd_watch)
  sub.add_parser("status", parents=[common], help="slice and trainer state").set_defaults(
      fn=cmd_status)
  lg = sub.add_parser("logs", parents=[common], help="tail the workers' logs")
  lg.add_argument("--worker", default="0", help="worker index, or all")
  lg.add_argument("--lines", type=int, default=100)
  lg.add_argument("--follow", action="store_true")
  lg.set_defaults(fn=cmd_logs)
  sub.add_parser("stop", parents=[common, stopping],
                 help="stop training on every worker").set_defaults(fn=cmd_stop)
  sub.add_parser("delete", parents=[common], help="delete the slice").set_defaults(
      fn=cmd_delete)
  return parser


def main(argv: Optional[List[str]] = None, shell: Optional[Shell] = None,
         sleep: Callable[[float], None] = time.sleep,
         log: Optional[Callable[[str], None]] = None) -> int:
  """The command line; tests pass a fake shell, sleep and log."""
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides: List[str] = []
  if "--" in argv:
    i = argv.index("--")
    argv, overrides = argv[:i], argv[i + 1:]
  args = build_parser().parse_args(argv)
  args.overrides = overrides
  args.shell, args.sleep, args.log = shell or Shell(), sleep, log
  try:
    args.fn(args)
  except LaunchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
