"""How the measurement tools hand back a result: the command that made it,
report lines on stdout, and the whole record as JSON when asked for."""
from __future__ import annotations

import json

from etils import epath


def publish(result: dict, lines: list[str], command: str, json_path: str | None) -> dict:
  result["command"] = command
  print("\n".join(lines), flush=True)
  if json_path:
    epath.Path(json_path).write_text(json.dumps(result, indent=2, sort_keys=True))
  return result
