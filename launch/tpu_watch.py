"""Keep a run alive across Spot preemptions: observe, decide, act.

The decision is a pure function of what has been seen and done so far
(`decide(history)`); parsing gcloud's output into an `Observation` is pure
too. The loop (`watch`) only polls, calls `decide`, sleeps the backoff the
decision asks for, and runs the commands for the chosen action, so the tests
drive the whole policy from recorded gcloud output without a cloud.

Policy:
  slice preempted (queued resource SUSPENDING/SUSPENDED, node PREEMPTED/
    TERMINATED/STOPPED)             -> RECREATE, at most max_recreates times;
  queued resource FAILED (no capacity), or the node missing right after a
    recreate                        -> RECREATE after an exponential backoff;
                                       max_capacity_retries in a row -> GIVE_UP;
  slice READY, trainer not running  -> START: stop (SIGTERM, grace, SIGKILL) and
                                       check every worker; setup + start only if
                                       no worker has a live trainer, else START
                                       again next poll, at most max_stop_attempts;
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
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from mixmim_jax import exit_codes

# Actions.
WAIT, RECREATE, START, DONE, GIVE_UP = "WAIT", "RECREATE", "START", "DONE", "GIVE_UP"

# Slice conditions.
READY, PROVISIONING, PREEMPTED, FAILED, GONE = (
    "READY", "PROVISIONING", "PREEMPTED", "FAILED", "GONE")
# Job conditions (UNKNOWN: not probed because the slice is not READY).
RUNNING, FINISHED, STOPPED, CRASHED, ABSENT, UNREACHABLE, UNKNOWN = (
    "RUNNING", "FINISHED", "STOPPED", "CRASHED", "ABSENT", "UNREACHABLE", "UNKNOWN")
# What `stop` reports for one worker (launch/tpu_commands.py: stop_script).
NOT_RUNNING, STOPPED_BY_TERM, KILLED, STILL_ALIVE = (
    "NOT_RUNNING", "STOPPED_BY_TERM", "KILLED", "STILL_ALIVE")

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
  blocked: str = ""   # START only: which workers still had a trainer, so nothing started


@dataclasses.dataclass(frozen=True)
class Decision:
  action: str
  reason: str
  wait_s: float = 0.0   # sleep this long before acting (capacity backoff)


@dataclasses.dataclass(frozen=True)
class Limits:
  max_recreates: int = 10          # recreations after preemption; resumes after exit 75
  max_capacity_retries: int = 20   # failed creations in a row
  backoff_s: float = 60.0          # first wait after a failed creation, doubled each time
  backoff_cap_s: float = 1800.0    # ... up to this
  max_stop_attempts: int = 3       # STARTs in a row held back by a live trainer


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


def failure_message(stdout: str) -> str:
  """Why a queued resource FAILED, as its describe output says (e.g. no capacity)."""
  try:
    state = json.loads(stdout).get("state")
    return state["failedData"]["error"]["message"]
  except (ValueError, AttributeError, KeyError, TypeError):
    return ""


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


_PROBE_LINE = re.compile(r"^MIXMIM_JOB (RUNNING|ABSENT|EXITED (-?\d+))(?: (\S+))?\s*$", re.M)


def probe_lines(output: str) -> List[Tuple[str, Optional[int], str]]:
  """(RUNNING|ABSENT|EXITED, exit code or None, hostname or '') per worker that answered."""
  return [(state.split()[0], int(code) if code else None, host)
          for state, code, host in _PROBE_LINE.findall(output)]


def parse_probe(returncode: int, output: str, hosts: int) -> Observation:
  """Aggregate the per-worker probe lines into one job condition."""
  found = probe_lines(output)
  codes = [code for state, code, _ in found if state == "EXITED"]
  bad = [c for c in codes if c not in (exit_codes.FINISHED, exit_codes.STOPPED)]
  detail = ", ".join(state if code is None else f"{state} {code}"
                     for state, code, _ in found) or "no answer"
  if bad:
    return Observation(READY, CRASHED, f"exit code {bad[0]} ({detail})")
  if exit_codes.STOPPED in codes:
    return Observation(READY, STOPPED, detail)
  if len(found) < hosts:
    return Observation(READY, UNREACHABLE, f"{len(found)} of {hosts} workers answered ({detail})")
  if all(state == "ABSENT" for state, _, _ in found):
    return Observation(READY, ABSENT, detail)
  if len(codes) == len(found):
    return Observation(READY, FINISHED, detail)
  if any(state == "ABSENT" for state, _, _ in found):
    # Some workers lost their trainer (a host restarted): the run is broken.
    return Observation(READY, ABSENT, detail)
  return Observation(READY, RUNNING, detail)


def live_trainers(output: str, hosts: int) -> str:
  """'' when every worker answered the probe and none has a live trainer; else who."""
  found = probe_lines(output)
  live = [host or "a worker" for state, _, host in found if state == RUNNING]
  if live:
    return "live trainer on " + ", ".join(live)
  if len(found) < hosts:
    return f"only {len(found)} of {hosts} workers answered"
  return ""


_STOP_LINE = re.compile(
    r"^MIXMIM_STOP (\S+) (NOT_RUNNING|STOPPED_BY_TERM|KILLED|STILL_ALIVE)(?: (\d+))?\s*$", re.M)


@dataclasses.dataclass(frozen=True)
class StopReport:
  """What `stop` did on each worker that answered."""
  outcomes: Dict[str, str]   # hostname -> NOT_RUNNING | STOPPED_BY_TERM | KILLED | STILL_ALIVE
  hosts: int
  grace_s: int

  def on(self, outcome: str) -> List[str]:
    return sorted(h for h, o in self.outcomes.items() if o == outcome)

  @property
  def complete(self) -> bool:
    """Every worker answered and none has a trainer left."""
    return len(self.outcomes) >= self.hosts and not self.on(STILL_ALIVE)

  def summary(self) -> str:
    parts = []
    if self.on(KILLED):
      parts.append(f"still running {self.grace_s} s after SIGTERM, killed with SIGKILL on "
                   + ", ".join(self.on(KILLED)))
    if self.on(STILL_ALIVE):
      parts.append("still alive after SIGKILL on " + ", ".join(self.on(STILL_ALIVE)))
    if self.on(STOPPED_BY_TERM):
      parts.append("stopped by SIGTERM on " + ", ".join(self.on(STOPPED_BY_TERM)))
    if self.on(NOT_RUNNING):
      parts.append("no trainer on " + ", ".join(self.on(NOT_RUNNING)))
    if len(self.outcomes) < self.hosts:
      parts.append(f"only {len(self.outcomes)} of {self.hosts} workers answered")
    return "; ".join(parts) or "no worker answered"


def parse_stop(output: str, hosts: int, grace_s: int) -> StopReport:
  return StopReport({host: outcome for host, outcome, _ in _STOP_LINE.findall(output)},
                    hosts, grace_s)


# --- the decision ----------------------------------------------------------------

def backoff_s(attempt: int, limits: Limits) -> float:
  """Wait before capacity retry `attempt` (1, 2, ...): base, 2 x base, ... up to the cap."""
  return min(limits.backoff_cap_s, limits.backoff_s * 2 ** (attempt - 1))


def decide(history: History, limits: Limits = Limits()) -> Decision:
  """What to do after the last observation in `history` (oldest first)."""
  if not history or not isinstance(history[-1], Observation):
    return Decision(WAIT, "nothing observed yet")
  obs = history[-1]

  if obs.slice in (FAILED, GONE):
    failed = _failed_creates(history)
    if obs.slice == GONE and not failed:
      return Decision(GIVE_UP, "the TPU does not exist (deleted outside watch?); "
                      "create it, or stop watching")
    if failed > limits.max_capacity_retries:
      return Decision(GIVE_UP, f"creating the slice failed {failed} times in a row "
                      f"({obs.detail}); the bound --max-capacity-retries="
                      f"{limits.max_capacity_retries} is reached; check quota and capacity "
                      "in this zone")
    wait = backoff_s(failed, limits)
    return Decision(RECREATE, f"creating the slice failed ({obs.detail}); capacity retry "
                    f"{failed} of {limits.max_capacity_retries}, recreating in {wait:g} s",
                    wait_s=wait)

  if obs.slice == PREEMPTED:
    recreates = len(_acted_on(history, lambda h: h.slice == PREEMPTED, RECREATE))
    if recreates >= limits.max_recreates:
      return Decision(GIVE_UP, f"preempted again after {recreates} recreations; the bound "
                      f"--max-recreates={limits.max_recreates} is reached ({obs.detail})")
    return Decision(RECREATE, f"preempted ({obs.detail}); recreating, then resuming "
                    "from the last checkpoint")

  if obs.slice != READY:   # provisioning, or an API error this poll
    return Decision(WAIT, f"slice not ready ({obs.detail})")

  # The slice is READY. A START held back by a live trainer is tried again first.
  held, workers = _held_starts(history)
  if held and obs.job != FINISHED:
    if held >= limits.max_stop_attempts:
      return Decision(GIVE_UP, f"a trainer survived {held} stops ({workers}); end it by "
                      "hand (`python -m launch.tpu stop`, or log in) or delete the slice")
    return Decision(START, f"setup and start were held back ({workers}); stopping again "
                    f"(attempt {held + 1} of {limits.max_stop_attempts})")

  if obs.job == RUNNING:
    return Decision(WAIT, f"training ({obs.detail})")
  if obs.job == FINISHED:
    return Decision(DONE, f"training finished on every worker ({obs.detail})")
  if obs.job == STOPPED:
    resumes = len(_acted_on(history, lambda h: h.job == STOPPED, START))
    if resumes >= limits.max_recreates:
      return Decision(GIVE_UP, f"the trainer stopped early again after {resumes} resumes; the "
                      f"bound --max-recreates={limits.max_recreates} is reached ({obs.detail})")
    return Decision(START, f"the trainer stopped early for a preemption notice or a signal "
                    f"({obs.detail}); resuming from its last checkpoint")
  if obs.job in (UNREACHABLE, UNKNOWN):
    tail = history[len(history) - UNREACHABLE_POLLS:]
    if (len(tail) == UNREACHABLE_POLLS and
        all(isinstance(h, Observation) and h.job == obs.job for h in tail)):
      return Decision(GIVE_UP, f"the slice is READY but its workers did not answer "
                      f"{UNREACHABLE_POLLS} polls in a row ({obs.detail})")
    return Decision(WAIT, f"workers did not answer ({obs.detail})")

  # CRASHED, or ABSENT: count the trainer's failures on this slice, one per run.
  failures = []
  started = counted = False
  for h in _since_last(history, RECREATE):
    if isinstance(h, Taken) and h.action == START and not h.blocked:
      started, counted = True, False
    elif isinstance(h, Observation) and h.slice == READY and not counted and (
        h.job == CRASHED or (h.job == ABSENT and started)):
      failures.append(h.detail if h.job == CRASHED else "trainer not running after start")
      counted = True
  if len(failures) >= 2:
    return Decision(GIVE_UP, "training failed twice on this slice ("
                    + "; then ".join(failures[-2:]) + "); read the logs with "
                    "`python -m launch.tpu logs`")
  if obs.job == CRASHED:
    return Decision(START, f"training exited with an error ({obs.detail}); stopping every "
                    "worker, then restarting once from the last checkpoint")
  return Decision(START, "slice ready, trainer not running; setting up and starting")


def _since_last(history: History, action: str) -> List[Union[Observation, Taken]]:
  for i in range(len(history) - 1, -1, -1):
    if isinstance(history[i], Taken) and history[i].action == action:
      return list(history[i + 1:])
  return list(history)


def _acted_on(history: History, seen: Callable[[Observation], bool],
              action: str) -> List[Observation]:
  """Observations matching `seen` on which `action` was then carried out (not held back)."""
  return [h for h, nxt in zip(history, history[1:])
          if isinstance(h, Observation) and seen(h) and isinstance(nxt, Taken)
          and nxt.action == action and not nxt.blocked]


def _held_starts(history: History) -> Tuple[int, str]:
  """STARTs held back by a live trainer since the last START that ran, and by whom."""
  held, workers = 0, ""
  for h in reversed(history):
    if isinstance(h, Taken):
      if h.action != START or not h.blocked:
        break
      held += 1
      workers = workers or h.blocked
  return held, workers


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

def watch(poll: Callable[[], Observation], act: Callable[[str], Taken],
          sleep: Callable[[float], None], log: Callable[[str], None],
          interval_s: float = 300, limits: Limits = Limits(),
          max_polls: Optional[int] = None) -> Decision:
  """Poll until DONE or GIVE_UP; returns the final decision."""
  history: List[Union[Observation, Taken]] = []
  polls = 0
  while True:
    obs = poll()
    history.append(obs)
    polls += 1
    decision = decide(history, limits)
    log(f"[watch] slice {obs.slice}, job {obs.job}: {decision.action} - {decision.reason}")
    if decision.action in (DONE, GIVE_UP):
      return decision
    if decision.action != WAIT:
      if decision.wait_s > 0:
        sleep(decision.wait_s)
      taken = act(decision.action)
      history.append(taken)
      if taken.blocked:
        log(f"[watch] setup and start held back: {taken.blocked}")
    if max_polls is not None and polls >= max_polls:
      return Decision(WAIT, f"stopped after {polls} polls")
    sleep(interval_s)
