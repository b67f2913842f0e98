"""How a trainer's process ends, for people and for launch/tpu_watch.py (which
reads these without importing JAX).

  0   finished: every step done
  1   refused or failed: a sentence on the log says why (a bad config, missing
      data, a damaged dataset, a non-finite loss); restarting will not help
  75  stopped early and resumable: a preemption notice, SIGTERM or Ctrl-C (the
      last checkpoint is safe; rerunning the same command resumes). 75 is
      EX_TEMPFAIL of sysexits.h: "try again later".
"""
FINISHED = 0
ERROR = 1
STOPPED = 75
