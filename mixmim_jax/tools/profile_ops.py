"""Where a compiled step spends its time: trace a few executions with
jax.profiler, then add up the time of each XLA op (thunk on CPU, kernel on
accelerators) and label it with the model scope and the kind of work from the
compiled HLO. `python -m mixmim_jax.benchmark ... --profile=DIR` prints it.

Ops run concurrently on the host's thread pool, so the per-op sums are busy
time, not wall time; their shares say where the work goes.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

_LINE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][a-z0-9\-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_FUSION_KIND = re.compile(r'"kind":"(__\w+)"')
# Parts of a block or stage worth telling apart, first match wins.
_PARTS = (("attention", r"/attn/"), ("mlp", r"/ffn/"), ("layernorm", r"/(ln1|ln2|norm)/"),
          ("patch merging", r"/downsample/"), ("patch embed", r"/patch_embed/"),
          ("mixing / masks", r"mask|mix|_flip|/rev|sort"))


def hlo_ops(hlo_text: str) -> dict[str, dict]:
  """name -> {opcode, op_name, fusion kind, batched_dot} for every instruction;
  batched_dot: a dot with batch dimensions, or a fusion around one."""
  ops, calls, batched_computations, computation = {}, {}, set(), None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      computation = header.group(1)
      continue
    m = _LINE.match(line)
    if not m:
      continue
    name, opcode = m.groups()
    op_name = _OP_NAME.search(line)
    kind = _FUSION_KIND.search(line)
    batched = opcode == "dot" and "lhs_batch_dims=" in line
    if batched and computation:
      batched_computations.add(computation)
    called = _CALLS.search(line)
    if called:
      calls[name] = called.group(1)
    ops[name] = dict(opcode=opcode, op_name=op_name.group(1) if op_name else "",
                     fusion=kind.group(1) if kind else "", batched_dot=batched)
  for name, computation in calls.items():
    ops[name]["batched_dot"] |= computation in batched_computations
  return ops


def classify(name: str, info: dict | None) -> tuple[str, str, str]:
  """(work, scope, pass) of one op: matmul / transpose-copy / other; the model
  part; forward, backward or optimizer."""
  if info is None:
    return "other", "unknown", "unknown"
  op_name, opcode = info["op_name"], info["opcode"]
  # XLA:CPU hands matmuls (with what it fuses into them) to a library as a
  # "__ynn_fusion" / "__onednn" custom fusion; GPUs call cuBLAS.
  if opcode in ("dot", "convolution") or info["fusion"].startswith(("__ynn", "__onednn")) \
      or "cublas" in name or "gemm" in name:
    work = "matmul"
  elif opcode in ("copy", "transpose") or name.startswith(("copy", "transpose")):
    work = "copy/transpose"
  else:
    work = "elementwise/reduce"
  if "MixMIMPretrainModel" in op_name:
    stage = re.search(r"/encoder/layers_(\d)/", op_name)
    where = ("decoder" if "/decoder/" in op_name else f"encoder stage {stage.group(1)}"
             if stage else "encoder" if "/encoder/" in op_name else "model")
    part = next((label for label, pattern in _PARTS if re.search(pattern, op_name)), "")
    scope = f"{where} {part}".strip()
  elif re.search(r"objective|reconstruction|patchify|masking", op_name):
    scope = "loss / masks"
  elif not op_name:
    # XLA's passes make some ops without metadata: on CPU above all the batched
    # products of attention, which are this model's only batched matmuls.
    scope = ("batched matmuls without a name (attention)" if info.get("batched_dot")
             else "ops without a name")
    return work, scope, "unknown"
  else:
    scope = "optimizer / other"
  phase = ("backward" if "transpose(" in op_name else "forward" if "jvp(" in op_name
           else "optimizer / other")
  return work, scope, phase


def profile(run, hlo_text: str, logdir: str, steps: int = 2) -> dict:
  """Traces `run(steps)`, returns busy time per (work, scope, pass) and the top ops."""
  import jax  # pylint: disable=import-outside-toplevel
  os.makedirs(logdir, exist_ok=True)
  with jax.profiler.trace(logdir, create_perfetto_trace=True):
    run(steps)
  traces = sorted(glob.glob(os.path.join(logdir, "**", "*perfetto_trace.json.gz"),
                            recursive=True), key=os.path.getmtime)
  with gzip.open(traces[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  ops = hlo_ops(hlo_text)
  per_op = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in ops:
      per_op[e["name"]] += e.get("dur", 0) / 1e6 / steps
  total = sum(per_op.values())
  by = {k: collections.Counter() for k in ("work", "scope", "phase")}
  for name, t in per_op.items():
    work, scope, phase = classify(name, ops[name])
    by["work"][work] += t
    by["scope"][scope] += t
    by["phase"][phase] += t
  top = [dict(op=n, seconds=t, share=t / total, work=classify(n, ops[n])[0],
              op_name=ops[n]["op_name"][:160]) for n, t in per_op.most_common(15)]
  return dict(trace=traces[-1], busy_s_per_step=total,
              **{f"by_{k}": {a: dict(seconds=t, share=t / total) for a, t in c.most_common()}
                 for k, c in by.items()},
              top_ops=top)


def report_lines(p: dict) -> list[str]:
  lines = [f"profile: {p['busy_s_per_step'] * 1e3:.1f} ms of op time per step ({p['trace']})"]
  for key in ("by_work", "by_phase", "by_scope"):
    lines.append(f"  {key[3:]}: " + ", ".join(
        f"{a} {v['seconds'] * 1e3:.1f} ms ({100 * v['share']:.0f} %)" for a, v in p[key].items()))
  lines.append("  top ops:")
  for o in p["top_ops"]:
    lines.append(f"    {o['seconds'] * 1e3:8.2f} ms {100 * o['share']:5.1f} %  {o['work']:18s} "
                 f"{o['op']}  {o['op_name']}")
  return lines
