"""The shape of the package, checked: modules use each other's public names
only, workdir I/O goes through etils.epath (never os.path / open()), the
measurement tools stay out of the runtime, and every config names its trainer."""
from __future__ import annotations

import ast
import glob
import importlib.util
import os
import re

import pytest

from mixmim_jax import cli, recipes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "mixmim_jax")
TOOLS = os.path.join(PACKAGE, "tools")
# `python -m mixmim_jax.benchmark` / `.aot` keep working: two-line entry points.
ENTRY_SHIMS = {os.path.join(PACKAGE, "benchmark.py"), os.path.join(PACKAGE, "aot.py")}


def _modules(root=PACKAGE):
  return sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True))


def _runtime_modules():
  return [p for p in _modules() if not p.startswith(TOOLS + os.sep) and p not in ENTRY_SHIMS]


def _private(name: str) -> bool:
  return name.startswith("_") and not name.startswith("__")


def _private_uses(path: str) -> list[str]:
  """`from mixmim_jax... import _x`, imports of private modules, and `m._x`
  on a name bound to one of our modules."""
  tree = ast.parse(open(path).read(), path)  # noqa: SIM115 (a test reading source)
  modules, found = set(), []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mixmim_jax"):
      if any(_private(part) for part in node.module.split(".")):
        found.append(f"line {node.lineno}: from {node.module}")
      for alias in node.names:
        if _private(alias.name):
          found.append(f"line {node.lineno}: import of {node.module}.{alias.name}")
        modules.add(alias.asname or alias.name)
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("mixmim_jax"):
          if any(_private(part) for part in alias.name.split(".")):
            found.append(f"line {node.lineno}: import {alias.name}")
          modules.add(alias.asname or alias.name.split(".")[0])
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in modules and _private(node.attr)):
      found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
  return found


def test_no_module_uses_another_modules_private_names():
  offenders = {os.path.relpath(p, REPO): uses for p in _modules() if (uses := _private_uses(p))}
  assert not offenders, offenders


def test_the_private_name_check_sees_a_violation(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("from mixmim_jax import train\nfrom mixmim_jax.loop import _x\n"
                 "train._check_finite(1)\n")
  assert len(_private_uses(str(bad))) == 2


# os.path, open(), os.makedirs / replace / remove, shutil: local-only file APIs.
LOCAL_FILE_API = re.compile(r"\bos\.path\b|(?<![\w.])open\(|\bos\.(makedirs|replace|remove|"
                            r"rename|mkdir|listdir)\b|\bshutil\b")


def test_runtime_file_io_goes_through_epath():
  """Workdirs, checkpoints, params files, configs and event files may be gs://:
  the runtime reads and writes them through etils.epath (or TensorFlow's gfile
  for the data tf.data reads). The measurement tools run locally and are exempt."""
  offenders = {}
  for path in _runtime_modules():
    for i, line in enumerate(open(path).read().splitlines(), 1):  # noqa: SIM115
      code = line.split("#")[0]
      if LOCAL_FILE_API.search(code):
        offenders.setdefault(os.path.relpath(path, REPO), []).append(f"{i}: {line.strip()}")
  assert not offenders, offenders


def test_measurement_tools_stay_out_of_the_runtime():
  for name in ("benchmark", "kernel_bench", "profile_ops", "hlo_stats", "aot", "torch_reference",
               "chips", "flops"):
    assert os.path.isfile(os.path.join(TOOLS, f"{name}.py")), name
  for path in _runtime_modules():
    imports = re.findall(r"^\s*(?:from|import) mixmim_jax\.tools\b.*$", open(path).read(),  # noqa: SIM115
                         re.M)
    assert not imports, (os.path.relpath(path, REPO), imports)


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))),
                         ids=os.path.basename)
def test_every_config_names_its_trainer(path):
  config = _load(path).get_config()
  assert config.trainer in cli.TRAINERS
  expected = "finetune" if "task" in config else "pretrain"
  assert config.trainer == expected


def test_one_list_of_trainers():
  assert tuple(cli.TRAINERS) == recipes.TRAINERS


def test_main_runs_the_trainer_the_config_names(monkeypatch):
  from mixmim_jax import finetune, train  # pylint: disable=import-outside-toplevel
  calls = []
  monkeypatch.setattr(train, "train", lambda c, w: calls.append(("pretrain", w)))
  monkeypatch.setattr(finetune, "finetune", lambda c, w: calls.append(("finetune", w)))
  cli.run_trainer(recipes.finetune_defaults(), "a")
  cli.run_trainer(recipes.pretrain_defaults(), "b")
  assert calls == [("finetune", "a"), ("pretrain", "b")]
  config = recipes.pretrain_defaults()
  config.trainer = "distill"
  with pytest.raises(cli.UserError, match="config.trainer='distill'; expected one of"):
    cli.run_trainer(config, "c")
