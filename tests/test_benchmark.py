"""The step and input benchmarks run end to end on a tiny model and report sane numbers."""
from __future__ import annotations

import collections
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixmim_jax import cli
from mixmim_jax.model import arch, layers
from mixmim_jax.model.decoder import MixMIMPretrainModel
from mixmim_jax.tools import benchmark, chips, input_bench, kernel_bench, profile_ops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(REPO, "configs", "base_pretrain.py")
FINETUNE = os.path.join(REPO, "configs", "base_finetune.py")


def test_step_benchmark_json(tmp_path):
  """Two timed steps of JAX (on 2 of the 8 fake devices) and of mmpretrain,
  alternating. The tiny arch at 32 px (patch 4: mmpretrain's masking assumes it)."""
  out = tmp_path / "bench.json"
  benchmark.main([f"--config={BASE}", "--arch=tiny", "--image-size=32", "--batch=4",
                  "--num-devices=2", "--steps=2", "--warmup=1", "--rounds=2",
                  "--matmul-size=128", "--reference", f"--json={out}"])
  r = json.loads(out.read_text())
  assert r["kind"] == "train_step" and r["backend"] == "cpu" and r["num_devices"] == 2
  assert r["batch"] == 4 and r["image_size"] == 32 and r["dtype"] == "float32"
  assert r["model"]["embed_dim"] == 32 and r["model"]["decoder_depth"] == 1
  assert r["step"]["n"] == 2 and 0 < r["step"]["min_s"] <= r["step"]["median_s"] <= \
      r["step"]["max_s"]
  assert r["images_per_s"] == pytest.approx(4 / r["step"]["median_s"])
  assert r["compile_s"] > 0 and r["lower_s"] > 0
  # XLA's count covers forward, backward and AdamW: more than 3 x 2 x params per image.
  assert r["flops_per_step"] > 6 * r["num_params"] * 4
  assert r["flops_per_step"] == pytest.approx(2 * r["flops_per_step_per_device"])
  assert r["flops_per_s_per_device"] > 0 and "mfu" not in r   # no MFU on a CPU
  assert r["memory"]["peak_bytes_per_device"] > 0
  host = r["host_per_step"]
  assert host["user_s"] > 0 and host["system_s"] >= 0 and host["minor_faults"] >= 0
  assert host["page_bytes"] >= 4096
  assert r["matmul"]["size"] == 128 and r["matmul"]["flops_per_s"] > 0
  assert r["step_vs_matmul_flops"] > 0
  ref = r["reference"]
  assert ref["step"]["n"] == 2 and ref["threads"] == r["host_threads"]
  # Same model: the trained parameters agree exactly.
  assert ref["num_params"] == r["num_params"]
  assert r["jax_over_torch_step_time"] == pytest.approx(
      r["step"]["median_s"] / ref["step"]["median_s"])
  assert len(r["round_ratios"]) == 2
  for loss in (r["loss"], ref["loss"]):
    assert 0.1 < loss < 10          # norm-pix MSE of random images is about 1
  assert benchmark.report_lines(r)[-2].startswith("JAX / PyTorch step time:")


def test_reference_in_its_own_process_runs_without_ld_preload(monkeypatch):
  """--reference-allocator=glibc: the torch reference steps in a child process
  started without LD_PRELOAD (this process keeps its own) and computes what
  the in-process reference computes, step for step."""
  monkeypatch.setenv("LD_PRELOAD", "/nonexistent/libmalloc_for_this_test.so")
  args, overrides = benchmark.parse_args([f"--config={BASE}", "--arch=tiny", "--image-size=32",
                                          "--batch=2", "--reference",
                                          "--reference-allocator=glibc"])
  assert args.reference_allocator == "glibc"
  config = benchmark.build_config(args, overrides)
  plan = benchmark.make_plan(config, num_examples=2000, num_devices=1)
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  child = benchmark.TorchStepProcess(config, plan, images, threads=1)
  try:
    assert os.environ["LD_PRELOAD"] == "/nonexistent/libmalloc_for_this_test.so"
    assert child.child_ld_preload is None and child.allocator == "glibc (own process)"
    child_times = child.run(2)
    child_loss = child.last_loss
  finally:
    child.close()
  here = benchmark.TorchStep(config, plan, images, threads=1)
  here.run(2)
  assert len(child_times) == 2 and min(child_times) > 0
  assert child.num_params == here.num_params and child.framework == here.framework
  assert child_loss == pytest.approx(here.last_loss, rel=1e-6)


def test_finetune_step_benchmark(tmp_path):
  """A fine-tuning config times the fine-tuning step (mixup, label smoothing,
  layer-wise lr decay); --reference is refused in one sentence."""
  config = os.path.join(REPO, "configs", "base_finetune.py")
  args = [f"--config={config}", "--arch=tiny", "--image-size=32", "--batch=4",
          "--num-devices=2", "--steps=2", "--warmup=1", "--matmul-size=0"]
  out = tmp_path / "ft.json"
  r = benchmark.main(args + [f"--json={out}", "--config.num_classes=10"])
  assert json.loads(out.read_text())["kind"] == r["kind"] == "finetune_step"
  assert r["step"]["n"] == 2 and r["images_per_s"] > 0 and "reference" not in r
  # Forward, backward and AdamW of the classifier: more than 3 x 2 x params per image.
  assert r["flops_per_step"] > 6 * r["num_params"] * 4
  assert 1.0 < r["loss"] < 5.0      # soft cross-entropy over 10 classes starts near ln 10
  with pytest.raises(ValueError, match="--reference times mmpretrain's pretraining step"):
    benchmark.main(args + ["--reference"])


def test_input_benchmark_on_synthetic_jpegs(tmp_path):
  out = tmp_path / "input.json"
  benchmark.main([f"--config={BASE}", "--input-only", "--synthetic-jpegs=8", "--batch=4",
                  "--steps=2", "--warmup=1", "--image-size=32",
                  "--config.data.num_parallel_calls=2", f"--json={out}"])
  r = json.loads(out.read_text())
  assert r["kind"] == "input_pipeline" and r["source"] == "folder"
  assert r["num_examples"] == 8 and r["batch"] == 4
  assert r["images_per_s"] > 0
  assert r["images_per_s_per_core"] == pytest.approx(r["images_per_s"] / r["host_threads"])


# mmpretrain's MixMIM recipes, as their train_pipeline lists the transforms.
RECIPE_TRANSFORMS = {
    "pretrain": ["LoadImageFromFile", "RandomResizedCrop", "RandomFlip", "PackInputs"],
    "finetune": ["LoadImageFromFile", "RandomResizedCrop", "RandomFlip", "RandAugment",
                 "RandomErasing", "PackInputs"],
}


@pytest.mark.parametrize("pipeline", ["pretrain", "finetune"])
def test_input_benchmark_against_mmpretrain(tmp_path, pipeline):
  """Two rounds of ours and of mmpretrain's own train_pipeline (built from its
  recipe file through its registry, in a DataLoader) on the same 16 JPEGs; the
  pretraining run also profiles our stages."""
  config = BASE if pipeline == "pretrain" else FINETUNE
  profile = ["--profile-input"] if pipeline == "pretrain" else []
  out = tmp_path / "input.json"
  benchmark.main([f"--config={config}", "--input-only", "--reference", f"--pipeline={pipeline}",
                  "--synthetic-jpegs=16", "--batch=4", "--steps=1", "--warmup=1", "--rounds=2",
                  "--image-size=32", "--config.data.num_parallel_calls=2", f"--json={out}"]
                 + profile)
  r = json.loads(out.read_text())
  assert r["kind"] == "input_pipeline" and r["pipeline"] == pipeline and r["num_examples"] == 16
  assert len(r["load_start"]) == len(r["load_end"]) == 3
  ref = r["reference"]
  assert ref["transforms"] == RECIPE_TRANSFORMS[pipeline]
  assert all(m.split(".")[0] in ("mmpretrain", "mmcv") for m in ref["transform_modules"])
  assert ref["recipe"].startswith("mixmim/") and ref["workers"] == r["host_threads"]
  for side in (r, ref):
    assert side["images_per_s"] > 0 and side["batch_time"]["n"] == 2
    assert side["images_per_s_per_core"] == pytest.approx(side["images_per_s"] /
                                                          r["host_threads"])
  assert r["ours_over_reference"] == pytest.approx(r["images_per_s"] / ref["images_per_s"])
  assert len(r["round_ratios"]) == 2          # a second round starts afresh
  lines = benchmark.report_lines(r)
  assert any(line.startswith("  ours / reference images/s:") for line in lines)
  if profile:
    stages = {s["key"]: s for s in r["profile_input"]["stages"]}
    assert set(stages) == {"read", "decode", "crop", "partial", "view", "pipeline", "floor"}
    assert all(s["images_per_s_per_core"] > 0 for s in stages.values())
    assert any(line.startswith("  share of the whole pipeline's CPU time: read + decode")
               for line in lines)
    ref_ms = 1e3 / ref["images_per_s_per_core"]
    bound = ref_ms / stages["floor"]["cpu_ms_per_image"]
    assert lines[-1].startswith(f"  the reference spends {ref_ms:.2f} ms of a core per image: "
                                f"any pipeline making these pixels is at most {bound:.2f}x")


def test_library_floor_makes_our_pretraining_views(tmp_path):
  """The profile's floor (the library calls alone) makes the very pixels of our
  pretraining view given its crop window and flip, so it times the same work."""
  # pylint: disable=import-outside-toplevel
  from mixmim_jax.data import augment, seeds
  from mixmim_jax.data import config as config_lib
  from mixmim_jax.data.tf_cpu import tf
  # pylint: enable=import-outside-toplevel
  root = input_bench.write_synthetic_jpegs(str(tmp_path), 1)
  path = os.path.join(root, "train", "class0", "000000.jpg")
  cfg = cli.load_config(BASE).data
  resample = augment.pillow_filter(config_lib.INTERPOLATIONS[cfg.interpolation])
  flips = set()
  for index in range(6):
    key = seeds.example_key(0, 0, index, False)
    ours = augment.pretrain_view(tf.constant(path), key, "path", cfg).numpy()
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2, alg=seeds.ALG))
    window = [int(v) for v in augment.sample_crop_window(
        crop_key, 375, 500, tuple(cfg.crop_scale), tuple(cfg.crop_ratio))]
    flip = bool(tf.random.stateless_uniform([], flip_key, alg=seeds.ALG) < 0.5)
    flips.add(flip)
    floor = input_bench.pillow_view(path, window, flip, cfg.image_size, resample)
    np.testing.assert_array_equal(floor, ours)
  assert flips == {True, False}


# A batched product as XLA:CPU's passes leave it in the step's compiled HLO:
# no metadata on the fusion nor on the dot inside.
_UNNAMED_BATCHED_DOT = """
%fused_computation.123 (param_0.170: f32[8,16,32,196], param_1.190: f32[8,16,196,196]) -> f32[8,16,32,196] {
  %param_0.170 = f32[8,16,32,196]{3,2,1,0} parameter(0)
  %param_1.190 = f32[8,16,196,196]{3,2,1,0} parameter(1)
  ROOT %dot.849 = f32[8,16,32,196]{3,2,1,0} dot(%param_0.170, %param_1.190), lhs_batch_dims={0,1}, lhs_contracting_dims={3}, rhs_batch_dims={0,1}, rhs_contracting_dims={2}
}

ENTRY %main.2 (a: f32[8,16,32,196], b: f32[8,16,196,196], c: f32[4]) -> f32[8,16,32,196] {
  %a = f32[8,16,32,196]{3,2,1,0} parameter(0), metadata={op_name="a"}
  %b = f32[8,16,196,196]{3,2,1,0} parameter(1), metadata={op_name="b"}
  %c = f32[4]{0} parameter(2), metadata={op_name="c"}
  %add.7 = f32[4]{0} add(%c, %c)
  %multiply.3 = f32[4]{0} multiply(%c, %c), metadata={op_name="jit(wrapped)/mul"}
  ROOT %ynn_fusion.123 = f32[8,16,32,196]{3,2,1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation.123, backend_config={"fusion_config":{"kind":"__ynn_fusion"},"outer_dimension_partitions":[]}
}
"""


def test_profile_names_the_batched_products_xla_leaves_unnamed():
  """The op profile puts XLA-made ops without metadata apart, the batched
  matmuls (attention's) by name, instead of counting them as optimizer time."""
  ops = profile_ops.hlo_ops(_UNNAMED_BATCHED_DOT)
  assert ops["ynn_fusion.123"]["batched_dot"] and ops["dot.849"]["batched_dot"]
  assert not ops["add.7"]["batched_dot"]
  assert profile_ops.classify("ynn_fusion.123", ops["ynn_fusion.123"]) == (
      "matmul", "batched matmuls without a name (attention)", "unknown")
  assert profile_ops.classify("add.7", ops["add.7"]) == (
      "elementwise/reduce", "ops without a name", "unknown")
  assert profile_ops.classify("multiply.3", ops["multiply.3"]) == (
      "elementwise/reduce", "optimizer / other", "optimizer / other")


def test_input_benchmark_refuses_a_pipeline_the_config_lacks():
  with pytest.raises(ValueError, match="--pipeline=finetune times the finetune input"):
    benchmark.main([f"--config={BASE}", "--input-only", "--pipeline=finetune",
                    "--synthetic-jpegs=4"])


def test_synthetic_jpegs_are_imagenet_sized(tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  root = input_bench.write_synthetic_jpegs(str(tmp_path), 3)
  files = sorted(p for p, _, names in os.walk(os.path.join(root, "train")) for _ in names)
  assert len(files) == 3
  name = os.listdir(files[0])[0]
  with Image.open(os.path.join(files[0], name)) as im:
    assert im.size == (500, 375) and im.format == "JPEG"


def test_overrides_name_the_bad_key():
  config = cli.load_config(BASE)
  cli.apply_overrides(config, ["--config.model.remat=True", "--config.mesh.fsdp=2"])
  assert config.model.remat is True and config.mesh.fsdp == 2
  with pytest.raises(cli.UserError, match="model has no 'nope'"):
    cli.apply_overrides(config, ["--config.model.nope=1"])
  with pytest.raises(cli.UserError, match="does not exist"):
    cli.load_config("configs/missing.py")


def test_one_chip_table_for_launcher_benchmark_and_aot():
  """The launcher's generations are the chip table's, so its cost table and the
  benchmark's MFU use the same peaks; JAX's device names map onto it."""
  from launch import accelerators  # pylint: disable=import-outside-toplevel
  assert accelerators.GENERATIONS is chips.TPUS
  assert accelerators.parse_accelerator("v5e-64").peak_bf16_tflops == 197.0
  assert chips.chip_for("TPU v5 lite") == "v5e"
  assert chips.chip_for("TPU v5") == "v5p"
  assert chips.chip_for("TPU v6 lite") == "v6e"
  assert chips.chip_for("NVIDIA H200") == "h200"
  assert chips.peak_flops("TPU v4", "float32") == 275e12
  assert chips.peak_flops("cpu", "float32") is None


def _dense_products_of_the_model(cfg, batch):
  """(m, k, n) of every Linear the pretraining model applies, read from a traced
  forward pass: k and n from the kernel, m from the output's leading axes."""

  model = MixMIMPretrainModel(cfg.replace(scan_blocks=False))
  images = jnp.zeros((batch, cfg.img_size, cfg.img_size, 3))
  mask = jnp.zeros((2, cfg.num_mask_cells), bool)
  found = collections.Counter()

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, layers.Linear):
      kernel = context.module.variables["params"]["kernel"]
      found[(int(np.prod(out.shape[:-1])), kernel.shape[0], kernel.shape[1])] += 1
    return out

  def forward():
    variables = model.init(jax.random.key(0), images, mask)
    found.clear()                      # count the apply only, not init
    with nn.intercept_methods(record):
      return model.apply(variables, images, mask)

  jax.eval_shape(forward)
  return found


def test_kernel_benchmark_lists_the_models_products():
  """The products `--kernels` times are exactly the model's: every Linear with its
  shape and multiplicity, and attention windows as the encoder cuts them."""
  cfg = arch.model_config("base", img_size=64, **benchmark.ARCH_PRESETS["tiny"])
  listed = collections.Counter()
  for layer in kernel_bench.linear_layers(cfg, batch=4):
    listed[(layer.m, layer.k, layer.n)] += layer.count
  assert listed == _dense_products_of_the_model(cfg, batch=4)
  cores = {c.name: c for c in kernel_bench.attention_cores(cfg, batch=4)}
  # 64 px, patch 4: 16x16 tokens in windows of 8 -> 4 windows x 64 tokens, 1 head of 32.
  assert (cores["stage 0"].batch, cores["stage 0"].tokens, cores["stage 0"].head_dim) == \
      (4 * 4 * 1, 64, 32)
  # Decoder: 2 sequences per image, 2 heads of 32, over the 2x2 mask grid.
  assert (cores["decoder"].batch, cores["decoder"].tokens, cores["decoder"].head_dim) == \
      (4 * 2 * 2, 4, 32)


def test_kernel_benchmark_runs_both_frameworks(tmp_path):
  out = tmp_path / "kernels.json"
  benchmark.main([f"--config={BASE}", "--arch=tiny", "--image-size=32", "--batch=2",
                  "--kernels", "--reference", f"--json={out}"])
  r = json.loads(out.read_text())
  assert r["kind"] == "kernels" and r["batch"] == 2
  for row in r["rows"]:
    keys = ({"forward", "grad_input", "grad_weight"} if row["kind"] == "linear"
            else {"qk", "pv", "ptg", "softmax", "softmax_grad"})
    for side in ("jax", "torch"):
      assert set(row[side]) == keys and all(t > 0 for t in row[side].values())
  t = r["totals"]
  assert t["linear_flops"] == sum(x["flops_per_step"] for x in r["rows"]
                                  if x["kind"] == "linear")
  for side in ("jax", "torch"):
    assert t[f"{side}_linear_s"] == pytest.approx(sum(
        sum(x[side].values()) for x in r["rows"] if x["kind"] == "linear"))
    assert 0 < t[f"{side}_call_floor_s"] < 0.01
  lines = benchmark.report_lines(r)
  assert lines[-1].startswith("  per-call floor") and len(lines) == 2 + len(r["rows"]) + 3


def test_kernel_benchmark_refuses_a_finetune_config():
  with pytest.raises(ValueError, match="pretraining config"):
    benchmark.main([f"--config={os.path.join(REPO, 'configs', 'base_finetune.py')}",
                    "--kernels"])
