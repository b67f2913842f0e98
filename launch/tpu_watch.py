"""Keep a run alive across Spot preemptions: observe, decide, act.

The decision is a pure function of what has been seen and done so far
(`decide(history)`); parsing gcloud's output into an `Observation` is pure
too. The loop (`watch`) only polls, calls `decide`, and runs the commands
for the chosen action, so the tests drive the whole policy from recorded
gcloud output without a cloud.

Policy:
  slice preempted (queued resource SUSPENDING/SUSPENDED, node PREEMPTED/
    TERMINATED/STOPPED)             -> RECREATE, at most max_recreates times;
  queued resource FAILED, or the node missing right after a recreate
                                    -> RECREATE; twice in a row -> GIVE_UP;
  slice READY, trainer not running  -> START (stop + setup + start; the
                                       trainer resumes from the workdir);
  trainer stopped early, resumable (exit code 75: a preemption notice, SIGTERM,
    Ctrl-C; mixmim_jax/exit_codes.py)
                                    -> START, at most max_recreates times;
  trainer exited non-zero, or missing after a START, twice on one slice
                                    -> GIVE_UP (a bug, not a preemption);
  every worker's trainer exited 0   -> DONE;
  anything provisioning or running  -> WAIT.
"""

import dataclasses
import json
import re
from typing import Callable, List, Optional, Sequence, Union

from mixmim_jax import exit_codes

# Actions.
WAIT, RECREATE, START, DONE, GIVE_UP = "WAIT", "RECREATE", "START", "DONE", "GIVE_UP"

# Slice conditions.
READY, PROVISIONING, PREEMPTED, FAILED, GONE = (
    "READY", "PROVISIONING", "PREEMPTED", "FAILED", "GONE")
# Job conditions (UNKNOWN: not probed because the slice is not READY).
RUNNING, FINISHED, STOPPED, CRASHED, ABSENT, UNREACHABLE, UNKNOWN = (
    "RUNNING", "FINISHED", "STOPPED", "CRASHED", "ABSENT", "UNREACHABLE", "UNKNOWN")

NOT_FOUND = "NOT_FOUND"
UNREACHABLE_POLLS = 5   # a READY slice whose workers don't answer this long is reported

_QR_PROVISIONING = {"CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING",
                    "DELETING", "STATE_UNSPECIFIED"}
_QR_PREEMPTED = {"SUSPENDING", "SUSPENDED"}
_NODE_PROVISIONING = {"CREATING", "STARTING", "RESTARTING", "REPAIRING", "REIMAGING",
                      "DELETING", "STOPPING", "STATE_UNSPECIFIED", "UNHIDING", "HIDING"}
_NODE_PREEMPTED = {"PREEMPTED", "TERMINATED", "STOPPED", "HIDDEN", "UNKNOWN"}


@dataclasses.dataclass(frozen=True)
class Observation:
  slice: str
  job: str
  detail: str = ""


@dataclasses.dataclass(frozen=True)
class Taken:
  action: str
  ok: bool = True


@dataclasses.dataclass(frozen=True)
class Decision:
  action: str
  reason: str


History = Sequence[Union[Observation, Taken]]


# --- parsing gcloud output ---------------------------------------------------

def parse_describe(returncode: int, stdout: str, stderr: str) -> str:
  """State from `... describe --format=json`: 'ACTIVE', 'READY', ..., or NOT_FOUND."""
  if returncode != 0:
    if "NOT_FOUND" in stderr or "was not found" in stderr:
      return NOT_FOUND
    raise RuntimeError(f"gcloud describe failed (exit {returncode}): {stderr.strip()}")
  state = json.loads(stdout).get("state")
  # A queued resource nests it: {"state": {"state": "ACTIVE", ...}}; a node does not.
  if isinstance(state, dict):
    state = state.get("state")
  return state or "STATE_UNSPECIFIED"


def slice_condition(node_state: str, qr_state: Optional[str] = None) -> str:
  """Reduce the (queued resource, node) states to one slice condition."""
  if qr_state is not None:
    if qr_state == NOT_FOUND:
      return GONE
    if qr_state == "FAILED":
      return FAILED
    if qr_state in _QR_PREEMPTED:
      return PREEMPTED
    if qr_state in _QR_PROVISIONING:
      return PROVISIONING
    # ACTIVE: the node decides. A vanished node under an ACTIVE request was reclaimed.
    if node_state == NOT_FOUND:
      return PREEMPTED
  elif node_state == NOT_FOUND:
    return GONE
  if node_state == "READY":
    return READY
  if node_state in _NODE_PREEMPTED:
    return PREEMPTED
  return PROVISIONING


_PROBE_LINE = re.compile(r"^MIXMIM_JOB (RUNNING|ABSENT|EXITED (-?\d+))\s*$", re.M)


def parse_probe(returncode: int, output: str, hosts: int) -> Observation:
  """Aggregate the per-worker probe lines into one job condition."""
  found = _PROBE_LINE.findall(output)
  codes = [int(code) for state, code in found if state.startswith("EXITED")]
  bad = [c for c in codes if c not in (exit_codes.FINISHED, exit_codes.STOPPED)]
  detail = ", ".join(state for state, _ in found) or "no answer"
  if bad:
    return Observation(READY, CRASHED, f"exit code {bad[0]} ({detail})")
  if exit_codes.STOPPED in codes:
    return Observation(READY, STOPPED, detail)
  if len(found) < hosts:
    return Observation(READY, UNREACHABLE, f"{len(found)} of {hosts} workers answered ({detail})")
  if all(state == "ABSENT" for state, _ in found):
    return Observation(READY, ABSENT, detail)
  if len(codes) == len(found):
    return Observation(READY, FINISHED, detail)
  if any(state == "ABSENT" for state, _ in found):
    # Some workers lost their trainer (a host restarted): the run is broken.
    return Observation(READY, ABSENT, detail)
  return Observation(READY, RUNNING, detail)


# --- the decision ----------------------------------------------------------------

def decide(history: History, max_recreates: int = 10) -> Decision:
  """What to do after the last observation in `history` (oldest first)."""
  if not history or not isinstance(history[-1], Observation):
    return Decision(WAIT, "nothing observed yet")
  obs = history[-1]
  recreates = sum(isinstance(h, Taken) and h.action == RECREATE for h in history)
  since_recreate = _since_last(history, RECREATE)

  if obs.slice in (FAILED, GONE):
    failed = _failed_creates(history)
    if obs.slice == GONE and not failed:
      return Decision(GIVE_UP, "the TPU does not exist (deleted outside watch?); "
                      "create it, or stop watching")
    if failed >= 2:
      return Decision(GIVE_UP, f"creating the slice failed twice in a row ({obs.detail}); "
                      "check quota and capacity in this zone")
    if recreates >= max_recreates:
      return Decision(GIVE_UP, f"creating the slice failed and the bound of "
                      f"{max_recreates} recreations is reached ({obs.detail})")
    return Decision(RECREATE, f"creating the slice failed once ({obs.detail}); trying again")

  if obs.slice == PREEMPTED:
    if recreates >= max_recreates:
      return Decision(GIVE_UP, f"preempted again after {recreates} recreations; the bound "
                      f"--max-recreates={max_recreates} is reached ({obs.detail})")
    return Decision(RECREATE, f"preempted ({obs.detail}); recreating, then resuming "
                    "from the last checkpoint")

  if obs.slice != READY:   # provisioning, or an API error this poll
    return Decision(WAIT, f"slice not ready ({obs.detail})")

  # The slice is READY: look at the trainer.
  if obs.job == RUNNING:
    return Decision(WAIT, f"training ({obs.detail})")
  if obs.job == FINISHED:
    return Decision(DONE, f"training finished on every worker ({obs.detail})")
  if obs.job == STOPPED:
    resumes = sum(isinstance(h, Observation) and h.job == STOPPED for h in history[:-1])
    if resumes >= max_recreates:
      return Decision(GIVE_UP, f"the trainer stopped early again after {resumes} resumes; the "
                      f"bound --max-recreates={max_recreates} is reached ({obs.detail})")
    return Decision(START, f"the trainer stopped early for a preemption notice or a signal "
                    f"({obs.detail}); resuming from its last checkpoint")
  if obs.job in (UNREACHABLE, UNKNOWN):
    tail = history[len(history) - UNREACHABLE_POLLS:]
    if (len(tail) == UNREACHABLE_POLLS and
        all(isinstance(h, Observation) and h.job == obs.job for h in tail)):
      return Decision(GIVE_UP, f"the slice is READY but its workers did not answer "
                      f"{UNREACHABLE_POLLS} polls in a row ({obs.detail})")
    return Decision(WAIT, f"workers did not answer ({obs.detail})")

  # CRASHED, or ABSENT: count the trainer's failures on this slice.
  failures = []
  started = False
  for h in since_recreate:
    if isinstance(h, Taken) and h.action == START:
      started = True
    elif isinstance(h, Observation) and h.slice == READY and (
        h.job == CRASHED or (h.job == ABSENT and started)):
      failures.append(h.detail if h.job == CRASHED else "trainer not running after start")
  if len(failures) >= 2:
    return Decision(GIVE_UP, "training failed twice on this slice ("
                    + "; then ".join(failures[-2:]) + "); read the logs with "
                    "`python -m launch.tpu logs`")
  if obs.job == CRASHED:
    return Decision(START, f"training exited with an error ({obs.detail}); restarting "
                    "once from the last checkpoint")
  return Decision(START, "slice ready, trainer not running; setting up and starting")


def _since_last(history: History, action: str) -> List[Union[Observation, Taken]]:
  for i in range(len(history) - 1, -1, -1):
    if isinstance(history[i], Taken) and history[i].action == action:
      return list(history[i + 1:])
  return list(history)


def _failed_creates(history: History) -> int:
  """Creations in a row whose outcome was FAILED (or no node at all)."""
  count, fresh = 0, False   # fresh: a RECREATE whose outcome is not seen yet
  for h in history:
    if isinstance(h, Taken) and h.action == RECREATE:
      fresh = True
    elif isinstance(h, Observation):
      if h.slice == FAILED or (h.slice == GONE and fresh):
        if fresh or count == 0:
          count += 1
        fresh = False
      elif h.slice == READY:
        count, fresh = 0, False
  return count


# --- the loop ------------------------------------------------------------------

def watch(poll: Callable[[], Observation], act: Callable[[str], bool],
          sleep: Callable[[float], None], log: Callable[[str], None],
          interval_s: float = 300, max_recreates: int = 10,
          max_polls: Optional[int] = None) -> Decision:
  """Poll until DONE or GIVE_UP; returns the final decision."""
  history: List[Union[Observation, Taken]] = []
  polls = 0
  while True:
    obs = poll()
    history.append(obs)
    polls += 1
    decision = decide(history, max_recreates)
    log(f"[watch] slice {obs.slice}, job {obs.job}: {decision.action} - {decision.reason}")
    if decision.action in (DONE, GIVE_UP):
      return decision
    if decision.action != WAIT:
      history.append(Taken(decision.action, act(decision.action)))
    if max_polls is not None and polls >= max_polls:
      return Decision(WAIT, f"stopped after {polls} polls")
    sleep(interval_s)
