"""Mutation check: does the test suite catch a wrong number?

    make mutants          # or: python tests/mutants.py [--only ID ...] [--markdown docs/MUTANTS.md]

Each mutant below is one hand-picked change to a constant or a formula of the
model, the objective, the optimizer, the schedules, the augmentations, the
batch mixing, the evaluation pipeline or the init: a change that makes us
differ from the references (mmpretrain 1.2.0, mmengine, the authors' code).
One at a time, it is applied to a private copy of the repository (the files
`git ls-files` lists, tracked or new, never the working tree others use), and
the tests that should catch it run there (`pytest -x`). A mutant is caught
when those tests fail; every one must be. The unmutated copy runs the same
tests first, so a failure is the mutant's. Prints a table (mutant, file,
tests, caught, time) and its total time; exit status 1 if any survived.

Compiled programs go to a cache of their own (TMPDIR of the runs), so the
shared test cache never holds a mutant's programs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Test groups (pytest node ids), fastest first within each mutant's list.
PARITY_PRETRAIN = "tests/test_parity.py::test_tiny_pretrain_parity"
PARITY_CLASSIFIER = "tests/test_parity.py::test_tiny_classifier_parity"
CONSTANTS = "tests/test_constants.py"
LN_EPS = "tests/test_constants.py::test_every_layer_norm_eps_is_the_references"
PRETRAIN_RECIPE = "tests/test_constants.py::test_pretraining_recipe_constants"
FINETUNE_RECIPE = "tests/test_constants.py::test_finetuning_recipe_constants"
SCHEDULES = "tests/test_constants.py::test_schedule_equals_the_recipes_schedulers"
RANDAUGMENT = "tests/test_constants.py::test_randaugment_policy_is_mmpretrains_timm_increasing"
CUTMIX = "tests/test_constants.py::test_cutmix_box_and_lam_equal_mmpretrains_on_shared_draws"
MIXUP = "tests/test_constants.py::test_mixup_equals_mmpretrains_on_shared_draws"
INIT = "tests/test_init.py::test_fresh_model_draws_like_mmpretrain"
INIT_CONSTANTS = "tests/test_constants.py::test_init_constants_are_the_recipes"
WD_SPLIT = "tests/test_optim.py::test_mmpretrain_weight_decay_split_matches_mmengine"
LAYER_DECAY = "tests/test_layer_decay.py::test_mmpretrain_rule_matches_constructor_tensor_by_tensor"
GROUP_SCHEDULES = ("tests/test_layer_decay.py::"
                   "test_each_layer_follows_the_recipes_schedule_per_param_group")
LOOP_PRETRAIN = "tests/test_loop_parity.py::test_pretraining_loop_matches_mmpretrain"
LOOP_FINETUNE = "tests/test_loop_parity.py::test_finetuning_loop_matches_mmpretrain"
ERASING = "tests/test_finetune.py::test_erasing_fills_one_box_with_the_recipes_noise"
EVAL_VIEW = "tests/test_eval_pipeline.py"
MASKING = "tests/test_masking.py"
PRECISION = "tests/test_precision.py::test_bfloat16_only_enters_the_matrix_products"


@dataclasses.dataclass(frozen=True)
class Mutant:
  id: str
  file: str
  old: str          # must occur exactly once in `file`
  new: str
  tests: tuple[str, ...]
  what: str


MUTANTS = (
    # ---- model
    Mutant("decoder-ln-eps", "mixmim_jax/model/decoder.py",
           'x = layer_norm(cfg.decoder_ln_eps, "norm")(x)', 'x = layer_norm(1e-5, "norm")(x)',
           (PARITY_PRETRAIN, LN_EPS), "decoder's last LayerNorm eps 1e-6 -> 1e-5 (the issue's 4e-6)"),
    Mutant("decoder-ln-default", "mixmim_jax/model/arch.py",
           "decoder_ln_eps: float = 1e-6", "decoder_ln_eps: float = 1e-5",
           (LN_EPS,), "ModelConfig's decoder LayerNorm eps 1e-6 -> 1e-5"),
    Mutant("encoder-ln-eps", "mixmim_jax/model/encoder.py",
           "ENCODER_LN_EPS = 1e-5", "ENCODER_LN_EPS = 1e-6",
           (PARITY_CLASSIFIER,), "encoder LayerNorm eps 1e-5 -> 1e-6"),
    Mutant("attention-scale", "mixmim_jax/model/layers.py",
           "q = q * jnp.asarray(head_dim ** -0.5, q.dtype)",
           "q = q * jnp.asarray(head_dim ** -0.49, q.dtype)",
           (PARITY_CLASSIFIER,), "attention scale head_dim^-0.5 -> ^-0.49"),
    Mutant("gelu-tanh", "mixmim_jax/model/layers.py",
           "nn.gelu(x, approximate=False)", "nn.gelu(x, approximate=True)",
           (PARITY_CLASSIFIER,), "exact (erf) GELU -> tanh approximation"),
    Mutant("relative-index", "mixmim_jax/model/tables.py",
           "return (dy * (2 * window - 1) + dx).astype(np.int32)",
           "return (dx * (2 * window - 1) + dy).astype(np.int32)",
           (PARITY_CLASSIFIER,), "relative position index: dy and dx swapped"),
    Mutant("sincos-base", "mixmim_jax/model/tables.py",
           "omega = 1.0 / 10000.0 **", "omega = 1.0 / 9000.0 **",
           (PARITY_PRETRAIN,), "sin-cos tables' base 10000 -> 9000"),
    Mutant("mask-logit", "mixmim_jax/model/masking.py",
           "MASK_LOGIT = -1e30", "MASK_LOGIT = -20.0",
           (PARITY_PRETRAIN,), "other-image logit -1e30 -> -20 (weights e^-20)"),
    Mutant("partner", "mixmim_jax/model/masking.py",
           "mixed = x * (1 - m) + jnp.flip(x, axis=1) * m",
           "mixed = x * (1 - m) + jnp.roll(x, 1, axis=1) * m",
           (MASKING, PARITY_PRETRAIN), "mixing partner: reversal -> next image"),
    # ---- objective
    Mutant("norm-pix-eps", "mixmim_jax/model/objective.py",
           "t = (t - mean) / jnp.sqrt(var + 1e-6)", "t = (t - mean) / jnp.sqrt(var + 1e-5)",
           (PARITY_PRETRAIN,), "norm-pix target eps 1e-6 -> 1e-5"),
    Mutant("norm-pix-ddof", "mixmim_jax/model/objective.py",
           "var = t.var(axis=-1, keepdims=True, ddof=1)",
           "var = t.var(axis=-1, keepdims=True, ddof=0)",
           (PARITY_PRETRAIN,), "norm-pix variance without Bessel's correction"),
    Mutant("unmix", "mixmim_jax/model/masking.py",
           "return (s1 * m + jnp.flip(s2, axis=1) * (1 - m)).reshape(seq1.shape)",
           "return (s1 * (1 - m) + jnp.flip(s2, axis=1) * m).reshape(seq1.shape)",
           (PARITY_PRETRAIN,), "unmixing takes the other sequence's cells"),
    Mutant("label-smoothing", "mixmim_jax/training/finetune_step.py",
           "targets = targets * (1 - eps) + eps / k", "targets = targets * (1 - eps) + eps / (k - 1)",
           (LOOP_FINETUNE,), "label smoothing spreads eps over k-1 classes"),
    # ---- optimizer
    Mutant("adamw-b2", "mixmim_jax/training/recipes.py",
           "b1=0.9, b2=0.95, eps=1e-8,", "b1=0.9, b2=0.999, eps=1e-8,",
           (PRETRAIN_RECIPE, LOOP_PRETRAIN), "pretraining AdamW beta2 0.95 -> 0.999"),
    Mutant("wd-split", "mixmim_jax/training/optim.py",
           '"pretrain": frozenset({"bias", "block_norm", "decoder_norm", "relative_position_table"}),',
           '"pretrain": frozenset({"bias", "block_norm", "relative_position_table"}),',
           (LOOP_PRETRAIN, WD_SPLIT), "weight decay on the decoder's final norm (neck.ln1)"),
    Mutant("wd-split-finetune", "mixmim_jax/training/optim.py",
           '"finetune": frozenset({"bias", "block_norm"}),',
           '"finetune": frozenset({"bias", "block_norm", "norm"}),',
           (LAYER_DECAY, LOOP_FINETUNE), "fine-tuning: no weight decay on the final norms"),
    Mutant("layer-id-merge", "mixmim_jax/training/layer_decay.py",
           'return sum(cfg.depths[:s + 1]) + (1 if rule == "authors" else 0)',
           "return sum(cfg.depths[:s + 1]) + 1",
           (LAYER_DECAY,), "patch merging's layer id: the authors' rule under mmpretrain's"),
    Mutant("layer-id-head", "mixmim_jax/training/layer_decay.py",
           'return last if rule == "mmpretrain" else last - 1', "return last - 1",
           (LAYER_DECAY,), "the head one layer down (lr x 0.7)"),
    # ---- schedules
    Mutant("warmup-steps", "mixmim_jax/training/optim.py",
           "step / max(warmup_steps - 1, 1))", "step / max(warmup_steps, 1))",
           (SCHEDULES, LOOP_PRETRAIN), "warmup reaches the lr one step late"),
    Mutant("finetune-floor", "mixmim_jax/training/recipes.py",
           "end_lr=1e-6,                  # CosineAnnealingLR(eta_min=1e-6)",
           "end_lr=0.0,                   # CosineAnnealingLR(eta_min=1e-6)",
           (LOOP_FINETUNE, FINETUNE_RECIPE), "fine-tuning cosine floor 1e-6 -> 0 (the issue's)"),
    Mutant("group-floor", "mixmim_jax/training/optim.py",
           "return warmup_cosine(scale * lr, total_steps, warmup_steps, start_factor, end_lr)",
           "return warmup_cosine(scale * lr, total_steps, warmup_steps, start_factor, scale * end_lr)",
           (GROUP_SCHEDULES, LOOP_FINETUNE), "layer decay scales each group's floor too"),
    Mutant("warmup-factor", "mixmim_jax/training/recipes.py",
           "warmup_start_factor=1e-4,     # warmup from 1e-4 x lr (mmengine LinearLR)",
           "warmup_start_factor=1e-3,     # warmup from 1e-4 x lr (mmengine LinearLR)",
           (PRETRAIN_RECIPE,), "pretraining warmup from 1e-3 x lr"),
    # ---- augmentation
    Mutant("rotate-range", "mixmim_jax/data/randaugment.py",
           '("invert", None, None, False), ("rotate", 0.0, 30.0, True),',
           '("invert", None, None, False), ("rotate", 0.0, 31.5, True),',
           (RANDAUGMENT,), "RandAugment rotate range 30 -> 31.5 degrees"),
    Mutant("brightness-unsigned", "mixmim_jax/data/randaugment.py",
           '("contrast", 0.0, 0.9, True), ("brightness", 0.0, 0.9, True),',
           '("contrast", 0.0, 0.9, True), ("brightness", 0.0, 0.9, False),',
           (RANDAUGMENT,), "RandAugment brightness never darkens"),
    Mutant("sign-threshold", "mixmim_jax/data/randaugment.py",
           "signed, index) & (sign_u < 0.5)", "signed, index) & (sign_u < 0.55)",
           (RANDAUGMENT,), "RandAugment sign flipped with probability 0.55"),
    Mutant("randaugment-std", "mixmim_jax/data/config.py",
           "c.randaugment_std = 0.5", "c.randaugment_std = 0.55",
           (FINETUNE_RECIPE,), "RandAugment magnitude std 0.5 -> 0.55"),
    Mutant("erasing-area", "mixmim_jax/data/randaugment.py",
           "def random_erasing(img, key, prob=0.25, min_area=0.02, max_area=1 / 3,",
           "def random_erasing(img, key, prob=0.25, min_area=0.02, max_area=0.35,",
           (FINETUNE_RECIPE,), "erasing box up to 35 % of the image"),
    Mutant("erasing-noise", "mixmim_jax/data/randaugment.py",
           "noise * tf.constant(std, tf.float32)", "noise * 1.05 * tf.constant(std, tf.float32)",
           (ERASING,), "erasing noise 5 % wider"),
    Mutant("crop-scale", "mixmim_jax/data/config.py",
           "c.crop_scale = (0.2, 1.0)", "c.crop_scale = (0.25, 1.0)",
           (PRETRAIN_RECIPE,), "pretraining crop area from 25 %"),
    # ---- batch mixing
    Mutant("cutmix-side", "mixmim_jax/training/mixup.py",
           "cut_h = jnp.floor(height * ratio).astype(jnp.int32)",
           "cut_h = jnp.round(height * ratio).astype(jnp.int32)",
           (CUTMIX,), "CutMix box side rounded instead of truncated"),
    Mutant("cutmix-lam", "mixmim_jax/training/mixup.py",
           "return (y0, y1, x0, x1), 1.0 - area / (height * width)",
           "return (y0, y1, x0, x1), lam",
           (CUTMIX,), "CutMix lam not corrected to the box's area"),
    Mutant("mixup-alpha", "mixmim_jax/training/recipes.py",
           "c.mixup_alpha = 0.8", "c.mixup_alpha = 0.84",
           (FINETUNE_RECIPE,), "Mixup alpha 0.8 -> 0.84"),
    Mutant("mixup-partner", "mixmim_jax/training/mixup.py",
           "mixed = lam * images + (1 - lam) * images[perm]",
           "mixed = lam * images + (1 - lam) * images[perm[::-1]]",
           (MIXUP,), "Mixup's images and targets mixed with different partners"),
    # ---- evaluation pipeline
    Mutant("eval-resize", "mixmim_jax/data/config.py",
           "c.eval_resize = 256", "c.eval_resize = 248",
           (FINETUNE_RECIPE, EVAL_VIEW), "evaluation short side 256 -> 248"),
    Mutant("eval-long-side", "mixmim_jax/data/labeled.py",
           "new_h = tf.where(w < h, tf.floor(edge * h / w), edge)",
           "new_h = tf.where(w < h, tf.round(edge * h / w), edge)",
           (EVAL_VIEW,), "evaluation long side rounded instead of truncated"),
    Mutant("pixel-mean", "mixmim_jax/data/config.py",
           "c.mean = (123.675, 116.28, 103.53)", "c.mean = (123.675, 116.28, 104.53)",
           (PRETRAIN_RECIPE,), "normalisation mean of blue +1"),
    # ---- init
    Mutant("mask-token-std", "mixmim_jax/model/decoder.py",
           'self.param("mask_token", nn.initializers.normal(0.02),',
           'self.param("mask_token", nn.initializers.normal(0.021),',
           (INIT,), "mask token N(0, 0.02) -> N(0, 0.021): a 5 % std error"),
    Mutant("torch-default-bound", "mixmim_jax/model/init_schemes.py",
           'torch_default_kernel = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")',
           'torch_default_kernel = nn.initializers.variance_scaling(1.1 / 3, "fan_in", "uniform")',
           (INIT,), "torch-default Linear bound x 1.05"),
    Mutant("bias-bound", "mixmim_jax/model/init_schemes.py",
           "return uniform(1 / math.sqrt(fan_in))", "return uniform(1.05 / math.sqrt(fan_in))",
           (INIT,), "torch-default bias bound x 1.05"),
    Mutant("classifier-std", "mixmim_jax/model/init_schemes.py",
           'NORMAL_002 = LinearInit("normal", 0.02)', 'NORMAL_002 = LinearInit("normal", 0.021)',
           (INIT_CONSTANTS, INIT), "classifier Linears N(0, 0.021)"),
    Mutant("table-init", "mixmim_jax/model/init_schemes.py",
           "                      relative_table_std=0.0)",
           "                      relative_table_std=0.02)",
           (INIT,), "mmpretrain's relative tables drawn (they stay zero there)"),
    # ---- precision
    Mutant("bf16-product-output", "mixmim_jax/model/layers.py",
           "  return out, (low_a, low_b)",
           "  return out.astype(dtype).astype(out.dtype), (low_a, low_b)",
           (PRECISION,), "a bfloat16 product's output rounded to bfloat16"),
)


def copy_repository(dest: str) -> int:
  """The files `git ls-files` lists (tracked, and new ones git does not
  ignore) as they are in the working tree, into `dest`."""
  listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          cwd=ROOT, check=True, capture_output=True).stdout.split(b"\0")
  count = 0
  for name in (n.decode() for n in listed if n):
    src = os.path.join(ROOT, name)
    if not os.path.isfile(src):          # deleted in the working tree
      continue
    os.makedirs(os.path.dirname(os.path.join(dest, name)) or dest, exist_ok=True)
    shutil.copy2(src, os.path.join(dest, name))
    count += 1
  return count


def run_tests(copy: str, tests, env, log) -> tuple[int, float, str]:
  """(pytest's exit status, seconds, the first failing test)."""
  cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-m", "slow or not slow", *tests]
  start = time.time()
  proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, check=False)
  seconds = time.time() - start
  log.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
  log.flush()
  failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.M)
  return proc.returncode, seconds, failed[0] if failed else ""


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", nargs="*", help="mutant ids to run (default: all)")
  parser.add_argument("--no-baseline", action="store_true",
                      help="skip the run of the unmutated copy")
  parser.add_argument("--markdown", help="also write the table to this file")
  parser.add_argument("--keep", action="store_true", help="keep the copy and its logs")
  args = parser.parse_args(argv)
  mutants = [m for m in MUTANTS if not args.only or m.id in args.only]
  if args.only and len(mutants) != len(args.only):
    parser.error(f"unknown mutant ids: {sorted(set(args.only) - {m.id for m in MUTANTS})}")

  work = tempfile.mkdtemp(prefix="mixmim_mutants_")
  copy = os.path.join(work, "repo")
  files = copy_repository(copy)
  cache = os.path.join(work, "tmp")
  os.makedirs(cache)
  env = dict(os.environ, TMPDIR=cache, PYTHONDONTWRITEBYTECODE="1")
  env.pop("PYTHONPATH", None)
  where = subprocess.run([sys.executable, "-c", "import mixmim_jax; print(mixmim_jax.__file__)"],
                         cwd=copy, env=env, capture_output=True, text=True, check=True).stdout
  assert where.startswith(copy), f"the copy imports another mixmim_jax: {where}"
  log_path = os.path.join(work, "mutants.log")
  print(f"{files} files copied to {copy}; pytest output in {log_path}", flush=True)
  started = time.time()
  with open(log_path, "w", encoding="utf-8") as log:
    for m in mutants:          # each change must apply exactly once, checked up front
      with open(os.path.join(copy, m.file), encoding="utf-8") as f:
        found = f.read().count(m.old)
      if found != 1:
        raise SystemExit(f"mutant {m.id}: {m.old!r} occurs {found} times in {m.file}")
    if not args.no_baseline:
      tests = sorted({t for m in mutants for t in m.tests})
      rc, seconds, failed = run_tests(copy, tests, env, log)
      print(f"baseline (unmutated): {len(tests)} test groups, exit {rc}, {seconds:.0f} s",
            flush=True)
      if rc != 0:
        raise SystemExit(f"the unmutated copy fails {failed or 'its tests'}: see {log_path}")
    rows = []
    for m in mutants:
      path = os.path.join(copy, m.file)
      with open(path, encoding="utf-8") as f:
        original = f.read()
      with open(path, "w", encoding="utf-8") as f:
        f.write(original.replace(m.old, m.new))
      try:
        rc, seconds, failed = run_tests(copy, m.tests, env, log)
      finally:
        with open(path, "w", encoding="utf-8") as f:
          f.write(original)
      caught = rc == 1
      status = "caught" if caught else ("survived" if rc == 0 else f"error (exit {rc})")
      rows.append((m, status, seconds, failed))
      print(f"{m.id:22s} {status:10s} {seconds:6.0f} s  {failed}", flush=True)
  total = time.time() - started
  table = format_table(rows, total)
  print("\n" + table)
  if args.markdown:
    with open(args.markdown, "w", encoding="utf-8") as f:
      f.write(table + "\n")
  if not args.keep:
    shutil.rmtree(work, ignore_errors=True)
  return 0 if all(status == "caught" for _, status, _, _ in rows) else 1


def format_table(rows, total: float) -> str:
  lines = ["| mutant | change | file | tests run | caught by | result | time |",
           "|---|---|---|---|---|---|---|"]
  for m, status, seconds, failed in rows:
    tests = ", ".join(t.replace("tests/", "") for t in m.tests)
    lines.append(f"| `{m.id}` | {m.what} | `{m.file}` | {tests} | "
                 f"{failed.replace('tests/', '') or '-'} | {status} | {seconds:.0f} s |")
  caught = sum(status == "caught" for _, status, _, _ in rows)
  lines.append("")
  lines.append(f"{caught} of {len(rows)} mutants caught; {total / 60:.1f} min in all "
               f"(baseline run included), {os.cpu_count()} cores.")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
