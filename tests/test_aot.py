"""Collective accounting on known HLO, and ahead-of-time compiles for TPU slices
(libtpu describes the chips; no TPU is needed)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mixmim_jax.tools import hlo_stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu not installed (pip install -r requirements-tpu.txt)")


def test_psum_and_all_gather_bytes_on_cpu_devices():
  """psum of a (16, 32) float32 shard per device: 2048 bytes in and out; a tiled
  all_gather of the same shard: 2048 bytes in, 8 x 2048 out."""
  mesh = Mesh(np.asarray(jax.devices()), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
  f = jax.jit(jax.shard_map(
      lambda a: (jax.lax.psum(a, "x"), jax.lax.all_gather(a, "x", tiled=True)),
      mesh=mesh, in_specs=P("x"), out_specs=(P(), P()), check_vma=False))
  x = jax.ShapeDtypeStruct((8 * 16, 32), jnp.float32, sharding=NamedSharding(mesh, P("x")))
  stats = hlo_stats.collective_stats(f.lower(x).compile().as_text())
  assert (stats["all-reduce"].count, stats["all-reduce"].operand_bytes,
          stats["all-reduce"].result_bytes) == (1, 2048, 2048)
  assert (stats["all-gather"].count, stats["all-gather"].operand_bytes,
          stats["all-gather"].result_bytes) == (1, 2048, 8 * 2048)
  for kind in ("reduce-scatter", "all-to-all", "collective-permute"):
    assert stats[kind].count == 0


def test_collectives_in_a_loop_count_once_per_iteration():
  """A psum inside a 5-step scan (a scanned block stack's gradient all-reduce)
  runs 5 times: 5 x 2048 bytes."""
  mesh = Mesh(np.asarray(jax.devices()), ("x",), axis_types=(jax.sharding.AxisType.Auto,))

  def per_device(a):
    def body(carry, _):
      return carry + jax.lax.psum(jnp.sin(carry), "x"), None
    return jax.lax.scan(body, a, None, length=5)[0]

  f = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("x"), out_specs=P("x"),
                            check_vma=False))
  x = jax.ShapeDtypeStruct((8 * 16, 32), jnp.float32, sharding=NamedSharding(mesh, P("x")))
  stats = hlo_stats.collective_stats(f.lower(x).compile().as_text())
  assert (stats["all-reduce"].count, stats["all-reduce"].operand_bytes,
          stats["all-reduce"].result_bytes) == (5, 5 * 2048, 5 * 2048)


# TPU's compiled HLO gives no known_trip_count: the bound is read from `i < 18`.
TPU_STYLE_LOOP_HLO = """\
HloModule jit_step, is_scheduled=true

%cond (p: (s32[], f32[512])) -> pred[] {
  %c = s32[]{:T(128)} constant(18)
  %p = (s32[]{:T(128)}, f32[512]{0:T(512)}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %c), direction=LT
}

%body (q: (s32[], f32[512])) -> (s32[], f32[512]) {
  %q = (s32[]{:T(128)}, f32[512]{0:T(512)}) parameter(0)
  %j = s32[]{:T(128)} get-tuple-element(%q), index=0
  %g = f32[512]{0:T(512)} get-tuple-element(%q), index=1
  %ar = f32[512]{0:T(512)} all-reduce(%g), channel_id=1, replica_groups={{0,1}}, to_apply=%add
  ROOT %t = (s32[]{:T(128)}, f32[512]{0:T(512)}) tuple(%j, %ar)
}

ENTRY %main (x: f32[512]) -> f32[512] {
  %x = f32[512]{0:T(512)} parameter(0)
  %zero = s32[]{:T(128)} constant(0)
  %init = (s32[]{:T(128)}, f32[512]{0:T(512)}) tuple(%zero, %x)
  %w = (s32[]{:T(128)}, f32[512]{0:T(512)}) while(%init), condition=%cond, body=%body
  ROOT %out = f32[512]{0:T(512)} get-tuple-element(%w), index=1
}
"""


def test_loop_bound_read_from_a_tpu_style_condition():
  s = hlo_stats.collective_stats(TPU_STYLE_LOOP_HLO)
  assert (s["all-reduce"].count, s["all-reduce"].operand_bytes) == (18, 18 * 2048)


# The forms TPU's compiler prints: tiled layouts, async start/done pairs, tuples,
# operands named by a fused computation's parameters, and reduce-scatter written
# as an all-reduce inside an `all-reduce-scatter` fusion.
TPU_STYLE_HLO = """\
HloModule jit_step, is_scheduled=true

%all-reduce-scatter.6 (input_0: f32[32,768], input_1: bf16[64]) -> (f32[16,768], bf16[32]) {
  %input_0 = f32[32,768]{1,0:T(8,128)} parameter(0)
  %input_1 = bf16[64]{0:T(128)} parameter(1)
  %all-reduce.118 = (f32[32,768]{1,0:T(8,128)}, bf16[64]{0:T(128)}) all-reduce(%input_0, /*index=1*/%input_1), channel_id=1, replica_groups={{0,1}}, to_apply=%add
  ROOT %t = (f32[16,768]{1,0}, bf16[32]{0}) tuple(%all-reduce.118)
}

%fused_gather (param_0.1: bf16[64,128]) -> bf16[64,256] {
  %param_0.1 = bf16[64,128]{1,0:T(8,128)(2,1)S(1)} parameter(0)
  ROOT %all-gather.100 = bf16[64,256]{1,0:T(8,128)(2,1)S(1)} all-gather(%param_0.1), channel_id=2, replica_groups=mesh['axis_0'=1,'axis_1'=2] {'axis_1'}, dimensions={1}
}

ENTRY %main.1 (p0: f32[8,4,128], p1: s32[10]) -> f32[8,4,128] {
  %p0 = f32[8,4,128]{2,1,0:T(4,128)} parameter(0)
  %p1 = s32[10]{0} parameter(1)
  %all-reduce-start.3 = f32[8,4,128]{2,1,0:T(4,128)S(1)} all-reduce-start(%p0), channel_id=3, replica_groups={{0,1,2,3}}, to_apply=%add
  %all-reduce-done.3 = f32[8,4,128]{2,1,0:T(4,128)S(1)} all-reduce-done(%all-reduce-start.3)
  %all-gather-start.1 = (s32[10]{0}, s32[40]{0}) all-gather-start(%p1), channel_id=4, dimensions={0}
  %all-gather-done.1 = s32[40]{0} all-gather-done(%all-gather-start.1)
  %collective-permute-start = (f32[8,4,128]{2,1,0}, f32[8,4,128]{2,1,0}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%all-reduce-done.3), source_target_pairs={{0,1},{1,0}}
  %all-to-all.1 = f32[1,2,1,4]{3,2,1,0:T(4,128)} all-to-all(f32[1,2,1,4]{3,2,1,0} %x), dimensions={1}
  ROOT %r = f32[8,4,128]{2,1,0} copy(%all-reduce-done.3)
}
"""


def test_collective_parser_on_tpu_style_text():
  s = hlo_stats.collective_stats(TPU_STYLE_HLO)
  assert (s["all-reduce"].count, s["all-reduce"].operand_bytes, s["all-reduce"].result_bytes) \
      == (1, 8 * 4 * 128 * 4, 8 * 4 * 128 * 4)
  # The fused all-reduce counts as a reduce-scatter to the fusion's (half-size) output.
  assert (s["reduce-scatter"].count, s["reduce-scatter"].operand_bytes,
          s["reduce-scatter"].result_bytes) == (1, 32 * 768 * 4 + 64 * 2, 16 * 768 * 4 + 32 * 2)
  # The operand bytes split by dtype: what precision a gradient is reduced in.
  assert s["reduce-scatter"].operand_dtypes == {"f32": 32 * 768 * 4, "bf16": 64 * 2}
  assert s["all-reduce"].operand_dtypes == {"f32": 8 * 4 * 128 * 4}
  assert (s["all-gather"].count, s["all-gather"].operand_bytes, s["all-gather"].result_bytes) \
      == (2, 64 * 128 * 2 + 10 * 4, 64 * 256 * 2 + 40 * 4)
  assert s["collective-permute"].count == 1
  assert s["collective-permute"].operand_bytes == 8 * 4 * 128 * 4
  assert (s["all-to-all"].count, s["all-to-all"].operand_bytes) == (1, 2 * 4 * 4)
  assert hlo_stats.shape_bytes("(f32[2,3]{1,0}, bf16[4], pred[])") == 24 + 8 + 1


@needs_libtpu
def test_tiny_model_compiles_for_a_v5e_slice(tmp_path):
  """The tests' tiny model, data=2 x fsdp=2 on a v5e 2x2 slice: it fits, XLA counts
  FLOPs, the sharded parameters are gathered and their gradients reduce-scattered."""
  from mixmim_jax.tools import aot  # pylint: disable=import-outside-toplevel
  import train_fixtures  # pylint: disable=import-outside-toplevel
  config = train_fixtures.tiny_config(str(tmp_path))
  config.mesh.update(dict(data=-1, fsdp=2, model=1))
  r = aot.compile_for_topology(config, "v5e:2x2", batch_per_chip=4)
  assert r["chips"] == 4 and r["device_kind"] == "TPU v5 lite"
  assert r["mesh"] == {"data": 2, "fsdp": 2, "model": 1} and r["batch"] == 16
  assert r["fits"] and 0 < r["memory"]["total"] < 2 ** 30
  assert r["flops_per_step"] == pytest.approx(4 * r["flops_per_chip"])
  assert r["train_gflop_per_image"] > 0
  c, checks = r["collectives"], r["checks"]
  assert c["all-gather"]["count"] > 0 and c["reduce-scatter"]["count"] > 0
  assert checks["fsdp_sharded_param_bytes"] > 0
  assert 0 < checks["reduce_scatter_operand_over_sharded"] <= 2.5
  assert 0 < checks["all_reduce_over_param_bytes"] < 2
  lines = aot.report_lines(r)
  assert any("fits with 10 % headroom" in line for line in lines)


@needs_libtpu
def test_programs_started_after_libtpu_loads_take_every_stop_signal():
  """libtpu sets SIGHUP to ignored where it finds the default action, and a
  program started afterwards inherits that (a trainer leaves an ignored signal
  alone): tests that send a trainer SIGHUP failed after a TPU compile test in
  the same pytest process. tests/conftest.py sets handlers first, which libtpu
  keeps and a started program does not inherit."""
  from mixmim_jax.tools import aot  # pylint: disable=import-outside-toplevel
  aot.topology_devices("v5e:2x2")                  # loads libtpu in this process
  script = ("import signal\n"
            "from mixmim_jax.training import stopping\n"
            "print(sorted(signal.Signals(s).name for s in stopping.SIGNALS\n"
            "             if signal.getsignal(s) is signal.SIG_IGN))")
  out = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=REPO),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[]", out.stdout


def test_topology_names():
  from mixmim_jax.tools import aot  # pylint: disable=import-outside-toplevel
  assert aot.parse_topology("v5p:2x2x4") == ("v5p", "v5:2x2x4", (2, 2, 4))
  assert aot.parse_topology("v5e:8x8") == ("v5e", "v5e:8x8", (8, 8))
  with pytest.raises(ValueError, match="'v7:2x2'"):
    aot.parse_topology("v7:2x2")


@pytest.mark.slow
@needs_libtpu
def test_base_model_fits_a_v5e_chip_at_224():
  """MixMIM-B at 224 px, 8 images per chip on v5e 2x2 (pure data parallel): fits,
  all-reduces the gradients once, moves no activations. Run with -m slow."""
  from mixmim_jax import cli  # pylint: disable=import-outside-toplevel
  from mixmim_jax.tools import aot  # pylint: disable=import-outside-toplevel
  config = cli.load_config(os.path.join(REPO, "configs", "base_pretrain.py"))
  r = aot.compile_for_topology(config, "v5e:2x2", batch_per_chip=8)
  assert r["fits"]
  assert 0.95 < r["checks"]["all_reduce_over_param_bytes"] < 1.1
  for kind in ("all-gather", "all-to-all", "collective-permute"):
    assert r["collectives"][kind]["count"] == 0, kind
