"""Loading a configs/*.py file with `--config.KEY=VALUE` overrides, for the
argparse-based tools (benchmark, aot). `main.py` uses absl's config_flags."""
from __future__ import annotations

import ast
import importlib.util
import os


def load_config(spec: str):
  """'configs/x.py' or 'configs/x.py:arg' -> the file's get_config() / get_config(arg)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config={spec!r}: no file {path!r}; expected a configs/*.py file.")
  module_spec = importlib.util.spec_from_file_location(
      "config_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string such as --config.data.source=folder


def apply_overrides(config, overrides: list[str]):
  """Applies ['--config.a.b=1', ...]; an unknown key or a value of the wrong type
  is an error naming it."""
  for item in overrides:
    if not item.startswith("--config.") or "=" not in item:
      raise ValueError(f"unexpected argument {item!r}; expected --config.KEY=VALUE.")
    key, _, text = item[len("--config."):].partition("=")
    *parents, leaf = key.split(".")
    target = config
    for p in parents:
      if p not in target:
        raise ValueError(f"--config.{key}: the config has no section {p!r}.")
      target = target[p]
    if leaf not in target:
      raise ValueError(f"--config.{key}: the config has no key {leaf!r}.")
    value = _parse_value(text)
    if isinstance(value, list):
      value = tuple(value)
    target[leaf] = value
  return config
