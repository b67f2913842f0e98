"""What a restart costs: each command twice from a fresh process, first with an
empty compilation cache (cold), then with the cache the first run filled
(warm), both resuming from the same checkpoint; the time to the first step (or
result) by phase, side by side. And the restore of a train state against
reading the same bytes (cat), from local disk and from a GCS emulator.

  python -m mixmim_jax.tools.restart_bench --cases fashion,base,evaluate,predict
  python -m mixmim_jax.tools.restart_bench --cases restore [--gcs-emulator]

`fashion` is configs/fashion_mnist_pretrain.py; `base` is configs/base_pretrain.py
at 224 px on Fashion-MNIST's images (batch 8: the model is the recipe's, the
data what this machine has); `evaluate` and `predict` run the base classifier
(random weights, 1000 classes) on a folder of 16 synthetic JPEGs and one photo.
Fashion-MNIST comes from Debian's dataset-fashion-mnist.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FASHION = "/usr/share/datasets/fashion-mnist"
LINE = re.compile(r"time to (?:the first step|the result) ([\d.]+) s: (.*)")
STEP = re.compile(r"^step +(\d+)/\d+ .*\| step (\d+) ms", re.M)


def _run(argv, env=None) -> str:
  started = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True,
                        text=True, env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
                                            **(env or {})))
  out = proc.stdout + proc.stderr
  if proc.returncode != 0:
    raise SystemExit(f"{' '.join(argv[:2])} failed ({proc.returncode}):\n{out[-3000:]}")
  return out + f"\nWALL {time.perf_counter() - started:.1f}\n"


def phases(output: str) -> dict[str, float]:
  """{phase: seconds} of the 'time to ...' line, plus its total, the wall time
  of the whole process and the median later step time (trainers)."""
  match = LINE.search(output)
  if match is None:
    raise SystemExit("no 'time to the first step' line in:\n" + output[-3000:])
  out = {name: float(s) for name, s in re.findall(r"(\w[\w ]*?) ([\d.]+) s", match.group(2))}
  out["total"] = float(match.group(1))
  out["wall"] = float(re.search(r"WALL ([\d.]+)", output).group(1))
  later = [int(ms) for step, ms in STEP.findall(output)][1:]
  if later:
    out["later step"] = float(np.median(later)) / 1000
  hits = re.search(r"cache: (\d+) programs loaded, (\d+) compiled", match.group(2))
  out["loaded"], out["compiled"] = int(hits.group(1)), int(hits.group(2))
  return out


def _table(name: str, cold: dict, warm: dict) -> str:
  rows = [f"{name}: phase | cold s | warm s | warm / cold"]
  for key in cold:
    if key in ("loaded", "compiled"):
      continue
    c, w = cold[key], warm.get(key, float("nan"))
    rows.append(f"  {key:<18} {c:8.1f} {w:8.1f}   {w / c if c else float('nan'):6.3f}")
  rows.append(f"  programs: cold {cold['loaded']} loaded / {cold['compiled']} compiled; "
              f"warm {warm['loaded']} loaded / {warm['compiled']} compiled")
  return "\n".join(rows)


def trainer_case(name: str, config_args: list[str], root: str, steps: int) -> str:
  """A run of one step (its final checkpoint), then two restarts from copies of
  its workdir that train to `steps`: cold (empty cache), then warm."""
  base = os.path.join(root, name)
  cache = os.path.join(root, f"{name}-cache")
  # No representation probes: they are not part of a restart's start-up, and
  # the base config's point at ImageNet splits this case does not read.
  common = ["--config.log_every_steps=1", "--config.image_every_steps=0",
            "--config.checkpoint_every_steps=1000", "--config.evals.knn.every_steps=-1",
            "--config.evals.fewshot.every_steps=-1"]
  _run(["mixmim_jax.main", *config_args, *common, "--config.num_train_steps=1",
        f"--workdir={base}", f"--config.compile_cache={root}/{name}-prep-cache"])
  results = []
  for label in ("cold", "warm"):
    work = f"{base}-{label}"
    shutil.copytree(base, work)
    results.append(phases(_run(["mixmim_jax.main", *config_args, *common,
                                f"--config.num_train_steps={steps}", f"--workdir={work}",
                                f"--config.compile_cache={cache}"])))
  return _table(name, *results)


def _synthetic_folder(root: str) -> str:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  for i in range(16):
    folder = os.path.join(root, "folder", "val", f"class{i % 2}")
    os.makedirs(folder, exist_ok=True)
    pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, f"{i}.jpg"), quality=90)
  return os.path.join(root, "folder")


def _base_classifier(root: str) -> str:
  path = os.path.join(root, "base_classifier.msgpack")
  _run(["mixmim_jax.tools.restart_bench", "--write-base-classifier", path])
  return path


def tool_case(name: str, root: str) -> str:
  params = _base_classifier(root)
  cache = os.path.join(root, f"{name}-cache")
  if name == "evaluate":
    argv = ["mixmim_jax.evaluate", f"--config={REPO}/configs/base_finetune.py",
            f"--checkpoint={params}", "--config.data.source=folder",
            f"--config.data.folder={_synthetic_folder(root)}", "--config.data.eval_split=val",
            "--config.eval_batch_size=8", f"--compile_cache={cache}"]
  else:
    from skimage import data as skdata  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel
    photo = os.path.join(root, "chelsea.jpg")
    Image.fromarray(skdata.chelsea()).save(photo)
    argv = ["mixmim_jax.predict", "--checkpoint", params, photo, f"--compile-cache={cache}"]
  return _table(name, phases(_run(argv)), phases(_run(argv)))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m mixmim_jax.tools.restart_bench",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--cases", default="fashion,base,evaluate,predict,restore")
  parser.add_argument("--gcs-emulator", action="store_true",
                      help="also restore from a local GCS emulator (tests/gcs_emulator.py)")
  parser.add_argument("--write-base-classifier", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.write_base_classifier:
    from mixmim_jax.model import api, arch  # pylint: disable=import-outside-toplevel
    from mixmim_jax.weights import params_file  # pylint: disable=import-outside-toplevel
    cfg = arch.model_config("base", num_classes=1000)
    params_file.save_params(args.write_base_classifier, cfg, "classifier",
                            api.init_params(cfg, "classifier"))
    return
  root = tempfile.mkdtemp(prefix="restart_bench-")
  try:
    for case in args.cases.split(","):
      if case == "fashion":
        print(trainer_case("fashion", [f"--config={REPO}/configs/fashion_mnist_pretrain.py"],
                           root, steps=4), flush=True)
      elif case == "base":
        print(trainer_case("base", [
            f"--config={REPO}/configs/base_pretrain.py", "--config.data.source=fashion_mnist",
            f"--config.data.fashion_mnist_dir={FASHION}", "--config.data.split=train",
            "--config.data.image_size=224",
            "--config.batch_size=8", "--config.model.remat=False"], root, steps=3), flush=True)
      elif case in ("evaluate", "predict"):
        print(tool_case(case, root), flush=True)
      elif case == "restore":
        from mixmim_jax.tools import restore_bench  # pylint: disable=import-outside-toplevel
        print(restore_bench.report(root, args.gcs_emulator), flush=True)
      else:
        raise SystemExit(f"unknown case {case!r}; expected fashion, base, evaluate, predict "
                         "or restore.")
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
