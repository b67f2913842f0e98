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

from mixmim_jax import cli
from mixmim_jax.training import recipes

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
  bad.write_text("from mixmim_jax import train\nfrom mixmim_jax.training.loop import _x\n"
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
  from mixmim_jax.trainers import finetune  # pylint: disable=import-outside-toplevel
  from mixmim_jax.trainers import pretrain
  calls = []
  monkeypatch.setattr(pretrain, "train", lambda c, w: calls.append(("pretrain", w)))
  monkeypatch.setattr(finetune, "finetune", lambda c, w: calls.append(("finetune", w)))
  cli.run_trainer(recipes.finetune_defaults(), "a")
  cli.run_trainer(recipes.pretrain_defaults(), "b")
  assert calls == [("finetune", "a"), ("pretrain", "b")]
  config = recipes.pretrain_defaults()
  config.trainer = "distill"
  with pytest.raises(cli.UserError, match="config.trainer='distill'; expected one of"):
    cli.run_trainer(config, "c")


# ------------------------------------------------------------------ layers

# The package's layers, lowest first: a module imports modules of its own layer
# and of the layers below it, never above (README, "Layout").
LAYERS = (
    ("shared", ("exit_codes", "files")),
    ("model", ("model",)),
    ("data", ("data",)),
    ("training", ("training",)),
    ("weights", ("weights",)),
    ("programs", ("evaluation", "trainers", "inference")),
    ("command line", ("cli", "tools")),
    ("entry points", ("main", "finetune", "evaluate", "export", "predict", "convert",
                      "benchmark", "aot")),
)


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _layer(module: str) -> int:
  if module == "mixmim_jax":
    return len(LAYERS)                       # the lazy public surface sits on top
  first = module.split(".")[1]
  for rank, (_, tops) in enumerate(LAYERS):
    if first in tops:
      return rank
  raise AssertionError(f"{module} is in no layer of LAYERS; add it there and to the README.")


def _imports(path: str, known: set[str]) -> set[str]:
  """Our modules `path` imports, at the top or inside functions."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):  # noqa: SIM115
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mixmim_jax"):
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        found.add(sub if sub in known else node.module)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("mixmim_jax"))
  return found


def _graph(paths) -> dict[str, set[str]]:
  names = {_module_name(p): p for p in paths}
  return {m: _imports(p, set(names)) - {m} for m, p in names.items()}


def _layer_violations(graph) -> list[str]:
  return [f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
          for m, deps in sorted(graph.items()) if m != "mixmim_jax"
          for d in sorted(deps) if _layer(d) > _layer(m)]


def _cycles(graph) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_no_layer_imports_a_layer_above_it_and_no_circles():
  graph = _graph(_modules())
  assert not _layer_violations(graph), _layer_violations(graph)
  assert not _cycles(graph), _cycles(graph)


def test_the_layer_check_sees_an_upward_import_and_a_circle(tmp_path):
  pkg = tmp_path / "mixmim_jax"
  (pkg / "model").mkdir(parents=True)
  (pkg / "weights").mkdir()
  (pkg / "model" / "arch.py").write_text("from mixmim_jax.weights import hub\n")
  (pkg / "weights" / "hub.py").write_text("def f():\n  from mixmim_jax.model import arch\n")
  paths = [str(pkg / "model" / "arch.py"), str(pkg / "weights" / "hub.py")]
  names = {p: os.path.relpath(p, str(tmp_path))[:-3].replace(os.sep, ".") for p in paths}
  graph = {names[p]: _imports(p, set(names.values())) - {names[p]} for p in paths}
  assert _layer_violations(graph) == [
      "mixmim_jax.model.arch (model) imports mixmim_jax.weights.hub (weights)"]
  assert _cycles(graph) == [["mixmim_jax.model.arch", "mixmim_jax.weights.hub"]]
