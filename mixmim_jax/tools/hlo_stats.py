"""What a compiled XLA program costs: FLOPs, memory, collective bytes, and the
peak figures of the chips it may run on. Used by `benchmark.py` and `aot.py`.

Collectives are read from the optimized HLO text (`compiled.as_text()`): every
instruction whose opcode is a collective (or the `-start` half of its async
form) is counted once per execution, with the bytes of its operands and of its
result: an op inside a loop body (a scanned block stack, gradient accumulation)
counts once per iteration, from the loop's `known_trip_count`. TPU's compiler writes a
reduce-scatter as an `all-reduce-scatter` fusion (an all-reduce followed by a
slice, run as one collective); the all-reduce inside such a fusion is counted as
a reduce-scatter whose result is the fusion's output.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute")

# Bytes per element of the HLO primitive types that can appear in a training step.
DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4,
    "u32": 4, "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8,
    "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1,
    "f8e5m2fnuz": 1, "token": 0,
}
_SHAPE = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
# "%name = SHAPE opcode(" where SHAPE may be a (nested) tuple; opcode may be async.
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\((.*)\)\s*->\s*(.*?)\s*\{\s*$")
_PARAM = re.compile(r"([\w.\-]+):\s*((?:\([^)]*\))|[a-z][a-z0-9]*\[[0-9,]*\](?:\{[^}]*\})?)")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\((.*)$")
_CALLEE = re.compile(r"\b(?:body|condition|calls|to_apply)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CONDITION = re.compile(r"\bcondition=%?([\w.\-]+)")
_INT_CONSTANT = re.compile(r"=\s*s32\[\]\S*\s+constant\((\d+)\)")


def shape_bytes(text: str) -> int:
  """Total bytes of every array shape written in `text` (e.g. '(f32[2,3], bf16[4])')."""
  total = 0.0
  for dtype, dims in _SHAPE.findall(text):
    if dtype not in DTYPE_BYTES:
      continue
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * DTYPE_BYTES[dtype]
  return int(total)


def _operands(rest: str) -> list[str]:
  """The operands between an opcode's '(' (already consumed) and its matching ')',
  split at top-level commas."""
  depth, start, out = 1, 0, []
  for i, ch in enumerate(rest):
    if ch in "({[":
      depth += 1
    elif ch in ")}]":
      depth -= 1
      if depth == 0:
        out.append(rest[start:i])
        break
    elif ch == "," and depth == 1:
      out.append(rest[start:i])
      start = i + 1
  return [o.strip() for o in out if o.strip()]


def dtype_bytes(text: str) -> dict[str, int]:
  """Bytes of the array shapes written in `text`, per element type."""
  out: dict[str, int] = {}
  for dtype, dims in _SHAPE.findall(text):
    if dtype in DTYPE_BYTES:
      out[dtype] = out.get(dtype, 0) + shape_bytes(f"{dtype}[{dims}]")
  return out


def _operand_shape(operand: str, shapes: dict, computation: str) -> str:
  """An operand is printed as 'f32[2,3]{1,0} %x' or just '%x' (then its shape is
  the result shape of the instruction, or computation parameter, named x)."""
  if _SHAPE.search(operand):
    return operand
  name = operand.split("*/")[-1].strip().lstrip("%")
  if (computation, name) not in shapes:
    raise ValueError(f"HLO operand {operand!r} of computation {computation!r} has no "
                     "known shape; the HLO text format may have changed.")
  return shapes[(computation, name)]


@dataclasses.dataclass
class CollectiveStats:
  count: int = 0
  operand_bytes: int = 0   # what each device sends in (all-reduce: the buffer reduced)
  result_bytes: int = 0    # what each device holds after (all-gather: the gathered tensor)
  # operand_bytes split by element type ({"f32": ..., "bf16": ...}): the dtype a
  # gradient is reduced in, or a parameter gathered in.
  operand_dtypes: dict[str, int] = dataclasses.field(default_factory=dict)


def _trip_count(while_line: str, computations: dict[str, list[str]]) -> int:
  """Iterations of a while loop: XLA:CPU/GPU annotate `known_trip_count`; TPU's
  compiled HLO does not, so read a `i < N` condition (JAX's loops count from 0)."""
  known = _TRIP_COUNT.search(while_line)
  if known:
    return int(known.group(1))
  cond = _CONDITION.search(while_line)
  lines = computations.get(cond.group(1), []) if cond else []
  bounds = [int(c) for line in lines for c in _INT_CONSTANT.findall(line)]
  if len(bounds) == 1 and any("direction=LT" in line for line in lines):
    return bounds[0]
  return 1


def _executions(calls: dict[str, list[tuple[str, int]]], order: list[str]) -> dict[str, int]:
  """How many times each computation runs per execution of the entry (the last
  one printed: HLO text lists callees before their callers)."""
  runs = dict.fromkeys(order, 0)
  if order:
    runs[order[-1]] = 1
  for comp in reversed(order):
    for callee, times in calls.get(comp, ()):
      runs[callee] = runs.get(callee, 0) + runs[comp] * times
  return runs


def collective_stats(hlo_text: str) -> dict[str, CollectiveStats]:
  """Per collective kind: executed op count and per-device operand / result bytes."""
  stats = {k: CollectiveStats() for k in COLLECTIVES}
  parsed = []          # (instruction match, header match of its computation)
  shapes = {}          # (computation, name) -> result shape; names repeat across computations
  lines = {}           # computation -> its instruction lines
  order = []           # computations in the order printed
  header, comp = None, ""
  for line in hlo_text.splitlines():
    h = _COMPUTATION.match(line)
    if h:
      header, comp = h, h.group(1)
      order.append(comp)
      for pname, pshape in _PARAM.findall(h.group(2)):
        shapes[(comp, pname)] = pshape
      continue
    m = _INSTR.match(line)
    if m:
      parsed.append((m, header))
      shapes[(comp, m.group(1))] = m.group(2)
      lines.setdefault(comp, []).append(line)
  calls = {}           # computation -> [(callee, times per call)]
  for comp, comp_lines in lines.items():
    for line in comp_lines:
      times = _trip_count(line, lines) if " while(" in line else 1
      callees = _CALLEE.findall(line)
      for branches in _BRANCHES.findall(line):
        callees += [b.strip().lstrip("%") for b in branches.split(",") if b.strip()]
      calls.setdefault(comp, []).extend((c, times) for c in callees)
  runs = _executions(calls, order)
  for m, header in parsed:
    _, result_shape, opcode, rest = m.groups()
    kind = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
    if kind not in stats:
      continue
    comp = header.group(1) if header is not None else ""
    times = runs.get(comp, 1) or 1
    if kind == "all-reduce" and comp.startswith("all-reduce-scatter"):
      kind, result_shape, opcode = "reduce-scatter", header.group(3), kind
    operand_shapes = " ".join(_operand_shape(o, shapes, comp) for o in _operands(rest))
    operand_bytes = shape_bytes(operand_shapes)
    s = stats[kind]
    s.count += times
    s.operand_bytes += times * operand_bytes
    for dtype, n in dtype_bytes(operand_shapes).items():
      s.operand_dtypes[dtype] = s.operand_dtypes.get(dtype, 0) + times * n
    if opcode.endswith("-start") and kind != "all-reduce":
      # all-gather-start etc. return (operands, results[, scratch]): the result
      # bytes are the tuple less the operands. all-reduce-start returns the result.
      s.result_bytes += times * max(shape_bytes(result_shape) - operand_bytes, 0)
    else:
      s.result_bytes += times * shape_bytes(result_shape)
  return stats


def cost_flops(program) -> float | None:
  """FLOPs from XLA's cost analysis of a compiled program (per device) or a
  lowered one (the whole, unpartitioned computation); None where the backend
  gives none. A loop body counts once, whatever its trip count."""
  try:
    cost = program.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def memory_bytes(compiled) -> dict[str, int] | None:
  """Per-device sizes from `compiled.memory_analysis()`; `total` is what the
  program needs resident at its peak: arguments + outputs + temporaries, less the
  outputs that reuse donated argument buffers (aliases)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  fields = dict(argument=m.argument_size_in_bytes, output=m.output_size_in_bytes,
                temp=m.temp_size_in_bytes, alias=m.alias_size_in_bytes,
                generated_code=m.generated_code_size_in_bytes)
  fields = {k: int(v) for k, v in fields.items()}
  fields["total"] = fields["argument"] + fields["output"] + fields["temp"] - fields["alias"]
  return fields


def as_dict(stats: dict[str, CollectiveStats]) -> dict[str, dict[str, Any]]:
  return {k: dataclasses.asdict(v) for k, v in stats.items()}
