"""Checkpoint conversion (torch_format.py, torch_io.py, params_file.py): exact round
trips, strict loading into mmpretrain 1.2.0 with equal outputs, the CLI end to
end, the errors a user sees, and arch inference from tensor shapes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mixmim_jax import convert  # noqa: E402
from mixmim_jax.model import api
from mixmim_jax.model.arch import model_config  # noqa: E402
from mixmim_jax.tools import torch_reference as ref  # noqa: E402
from mixmim_jax.weights import torch_format, torch_io
from mixmim_jax.weights.params_file import load_params, save_params  # noqa: E402
import torch_helpers as th  # noqa: E402

MM, OFFICIAL = torch_format.MMPRETRAIN, torch_format.OFFICIAL

# 96 px: a 3x3 mask grid (4 of 9 cells masked) and stages at 24, 12, 6, 3 tokens.
# Windows 4, 4, 3, 3: several windows in stages 0-2, and in stage 2 they straddle
# mask cells, so the same-source bias is exercised inside windows.
CFG = model_config(dict(embed_dim=32, depths=(1, 2, 2, 1), num_heads=(1, 2, 4, 8)),
                   window_sizes=(4, 4, 3, 3), img_size=96, decoder_dim=64,
                   decoder_depth=2, decoder_heads=2, num_classes=10)


def flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = np.asarray(v)
  return out


def assert_trees_equal(a, b):
  fa, fb = flat(a), flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].shape == fb[k].shape, k
    assert np.array_equal(fa[k], fb[k]), f"{'/'.join(k)} differs"


def randomized(params, seed):
  """Init params with every vector and bias table moved off its init value, so each
  tensor (LayerNorm scales, biases, mask token included) shows up in the output."""
  rng = np.random.default_rng(seed)

  def move(path, x):
    x = np.asarray(x, np.float32)
    name = str(path[-1])
    if x.ndim == 1 or "relative_position_bias_table" in name:
      return (x + 0.2 * rng.standard_normal(x.shape)).astype(np.float32)
    return x
  return jax.tree_util.tree_map_with_path(move, jax.device_get(params))


@pytest.fixture(scope="module")
def pretrain_params():
  return randomized(api.init_params(CFG, "pretrain", 1), 1)


@pytest.fixture(scope="module")
def classifier_params(pretrain_params):
  """The pretraining model's encoder plus a random head (saves a second init
  compile); checked against the classifier's own parameter shapes."""
  rng = np.random.default_rng(2)
  params = {"encoder": pretrain_params["encoder"],
            "head": {"kernel": (rng.standard_normal((256, 10)) / 16).astype(np.float32),
                     "bias": (0.2 * rng.standard_normal(10)).astype(np.float32)}}
  shapes = api.param_shapes(CFG, "classifier")
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(params)))
  return params


def torch_tensors(sd):
  return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


def assert_close(ours, theirs, what, rtol=1e-4):
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape, f"{what}: {ours.shape} vs {theirs.shape}"
  err, scale = np.max(np.abs(ours - theirs)), np.max(np.abs(theirs))
  assert err <= rtol * scale, f"{what}: max|diff| {err:.3g} > {rtol} x {scale:.3g}"


# ---------------------------------------------------------------------------
# (a) Flax -> torch state dict -> Flax is exact.

@pytest.mark.parametrize("fmt", [MM, OFFICIAL])
@pytest.mark.parametrize("kind", ["pretrain", "classifier"])
def test_round_trip_exact(kind, fmt, pretrain_params, classifier_params):
  params = pretrain_params if kind == "pretrain" else classifier_params
  sd = torch_format.flax_to_state_dict(params, CFG, kind, fmt)
  cfg, got_kind, back, got_fmt = torch_io.import_state_dict(
      {"state_dict" if fmt == MM else "model": sd}, decoder_heads=CFG.decoder_heads)
  assert (got_kind, got_fmt) == (kind, fmt)
  want_cfg = CFG.replace(decoder_ln_eps=torch_format.DECODER_LN_EPS[fmt], num_classes=0)
  if kind == "classifier":
    # A classifier checkpoint has no decoder: its fields stay at their defaults.
    want_cfg = want_cfg.replace(num_classes=CFG.num_classes, decoder_dim=512, decoder_depth=8)
  assert cfg == want_cfg
  assert_trees_equal(back, params)


def test_official_export_is_mmpretrain_export_in_authors_layout(pretrain_params):
  """The authors' layout from our converter equals mmpretrain's export rewritten
  by an independent key renamer that measures the timm merge order empirically."""
  mm = torch_format.flax_to_state_dict(pretrain_params, CFG, "pretrain", MM)
  off = torch_format.flax_to_state_dict(pretrain_params, CFG, "pretrain", OFFICIAL)
  rewritten = th.to_official_state_dict(mm, CFG)
  assert sorted(rewritten) == sorted(off)
  for k in off:
    np.testing.assert_array_equal(off[k], rewritten[k], err_msg=k)
  # The permutation is not the identity, so the check above has teeth.
  k = "layers.0.downsample.reduction.weight"
  assert not np.array_equal(off[k], mm["backbone." + k])


# ---------------------------------------------------------------------------
# (b) Our export loads strictly into mmpretrain and computes the same thing.

def test_exported_classifier_loads_strict_and_matches_logits(classifier_params):
  sd = torch_format.flax_to_state_dict(classifier_params, CFG, "classifier", MM)
  model = ref.build_classifier(CFG)
  result = model.load_state_dict(torch_tensors(sd), strict=True)
  assert not result.missing_keys and not result.unexpected_keys
  # Every parameter and buffer of the reference was overwritten by ours.
  assert set(sd) == set(model.state_dict())
  images = np.random.default_rng(3).standard_normal((3, 96, 96, 3)).astype(np.float32)
  with torch.no_grad():
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    logits = model.head(model.backbone(x))
  ours = api.classify(CFG, classifier_params, jnp.asarray(images))
  assert_close(ours, logits.numpy(), "logits")
  assert np.max(np.abs(logits.numpy())) > 0.1


def test_exported_pretrain_model_loads_strict_and_matches_decoder(pretrain_params):
  sd = torch_format.flax_to_state_dict(pretrain_params, CFG, "pretrain", MM)
  model = ref.build_pretrain_model(CFG)
  result = model.load_state_dict(torch_tensors(sd), strict=True)
  assert not result.missing_keys and not result.unexpected_keys
  assert set(sd) == set(model.state_dict())
  b = 4
  images = np.random.default_rng(4).standard_normal((b, 96, 96, 3)).astype(np.float32)
  mask = np.zeros(9, np.float32)
  mask[[0, 4, 5, 7]] = 1.0                              # floor(9 * 0.5) = 4 cells
  with torch.no_grad(), th.fixed_mask(mask):
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    latent, mask_s4 = model.backbone(x)
    x_rec = model.neck(latent, mask_s4)
    loss = model.head.loss(x_rec, x, mask_s4)
  np.testing.assert_array_equal(mask_s4.numpy().reshape(-1), mask)
  out = api.pretrain_forward(CFG, pretrain_params, jnp.asarray(images), jnp.asarray(mask)[None])
  assert_close(out["seq1"], x_rec[:b].numpy(), "decoder seq1")
  assert_close(out["seq2"], x_rec[b:].numpy(), "decoder seq2")
  np.testing.assert_allclose(float(out["loss"]), float(loss), rtol=1e-5)


# ---------------------------------------------------------------------------
# (c) The CLI end to end.

def test_cli_import_export_round_trip(tmp_path, pretrain_params, capsys):
  sd = torch_format.flax_to_state_dict(pretrain_params, CFG, "pretrain", MM)
  a, b, c = tmp_path / "a.pth", tmp_path / "b.msgpack", tmp_path / "c.pth"
  torch.save({"state_dict": torch_tensors(sd)}, a)

  assert convert.main([str(a), str(b), "--decoder-heads", "2"]) == 0
  assert "mmpretrain pretrain checkpoint" in capsys.readouterr().out
  loaded = load_params(str(b))
  assert loaded.kind == "pretrain"
  assert loaded.config == CFG.replace(num_classes=0)
  assert_trees_equal(loaded.params, pretrain_params)

  assert convert.main([str(b), str(c)]) == 0
  back = torch.load(c, map_location="cpu", weights_only=True)["state_dict"]
  assert sorted(back) == sorted(sd)
  for k, v in back.items():
    assert v.dtype == (torch.int64 if k.endswith("relative_position_index") else torch.float32)
    np.testing.assert_array_equal(v.numpy(), sd[k], err_msg=k)

  # --format official: keys under 'model' in the authors' names; importing it again
  # gives the same params (and the authors' decoder LayerNorm eps).
  d, e = tmp_path / "d.pth", tmp_path / "e.msgpack"
  assert convert.main([str(b), str(d), "--format", "official"]) == 0
  off = torch.load(d, map_location="cpu", weights_only=True)
  assert "model" in off and "patch_embed.proj.weight" in off["model"]
  assert not any(k.startswith("backbone.") for k in off["model"])
  assert convert.main([str(d), str(e), "--decoder-heads", "2"]) == 0
  again = load_params(str(e))
  assert again.kind == "pretrain"
  assert again.config == CFG.replace(num_classes=0, decoder_ln_eps=1e-5)
  assert_trees_equal(again.params, pretrain_params)


def test_cli_classifier_round_trip(tmp_path, classifier_params):
  b, c = tmp_path / "b.msgpack", tmp_path / "c.pth"
  save_params(str(b), CFG, "classifier", classifier_params)
  assert convert.main([str(b), str(c)]) == 0
  d = tmp_path / "d.msgpack"
  assert convert.main([str(c), str(d)]) == 0
  loaded = load_params(str(d))
  assert loaded.kind == "classifier" and loaded.config.num_classes == 10
  assert_trees_equal(loaded.params, classifier_params)


# ---------------------------------------------------------------------------
# (d) Errors a user can act on.

@pytest.fixture(scope="module")
def classifier_sd(classifier_params):
  return torch_format.flax_to_state_dict(classifier_params, CFG, "classifier", MM)


def test_missing_and_unexpected_keys_are_named(classifier_sd):
  sd = dict(classifier_sd)
  del sd["backbone.layers.2.blocks.1.attn.proj.weight"]
  sd["backbone.layers.2.blocks.1.attn.extra.weight"] = np.zeros((4, 4), np.float32)
  with pytest.raises(torch_format.CheckpointMismatch) as err:
    torch_io.import_state_dict({"state_dict": sd})
  msg = str(err.value)
  assert "missing 1 tensors: ['backbone.layers.2.blocks.1.attn.proj.weight']" in msg
  assert "1 unexpected tensors: ['backbone.layers.2.blocks.1.attn.extra.weight']" in msg
  assert "embed_dim=32" in msg and "depths=(1, 2, 2, 1)" in msg


def test_wrong_shape_is_named(classifier_sd):
  sd = dict(classifier_sd)
  sd["backbone.layers.1.blocks.0.attn.proj.weight"] = np.zeros((64, 32), np.float32)
  with pytest.raises(torch_format.CheckpointMismatch,
                     match=r"1 tensors of the wrong shape.*backbone\.layers\.1\.blocks\.0"
                           r"\.attn\.proj\.weight: \(64, 32\) vs model \(64, 64\)"):
    torch_io.import_state_dict({"state_dict": sd})


def test_checkpoint_of_another_arch_against_expected_shapes(classifier_sd):
  # Other heads in the last stage, another window in stage 1, 1000 classes.
  other = CFG.replace(num_heads=(1, 2, 4, 4), window_sizes=(4, 3, 3, 3), num_classes=1000)
  with pytest.raises(torch_format.CheckpointMismatch) as err:
    torch_format.state_dict_to_flax(classifier_sd, MM, other, "classifier",
                                    expected_shapes=api.param_shapes(other, "classifier"))
  msg = str(err.value)
  assert "num_heads=(1, 2, 4, 4)" in msg
  table = "backbone.layers.{}.blocks.0.attn.relative_position_bias_table: {} vs model {}"
  assert table.format(1, (49, 2), (25, 2)) in msg
  assert table.format(3, (25, 8), (25, 4)) in msg
  assert "head.fc.weight: (10, 256) vs model (1000, 256)" in msg   # the checkpoint's layout
  assert "backbone.layers.1.blocks.0.attn.relative_position_index: differs from the table" in msg
  # Deeper: the extra blocks are missing from the checkpoint.
  deeper = CFG.replace(depths=(1, 2, 3, 1))
  with pytest.raises(torch_format.CheckpointMismatch,
                     match=r"missing \d+ tensors: \['backbone\.layers\.2\.blocks\.2\.ln1\.weight'"):
    torch_format.state_dict_to_flax(classifier_sd, MM, deeper, "classifier",
                                    expected_shapes=api.param_shapes(deeper, "classifier"))


def test_checkpoint_of_a_wider_arch_is_a_mismatch(classifier_sd):
  wider = CFG.replace(embed_dim=64)
  with pytest.raises(torch_format.CheckpointMismatch,
                     match=r"backbone\.patch_embed\.projection\.weight: \(32, 3, 4, 4\) vs "
                           r"model \(64, 3, 4, 4\)"):
    torch_format.state_dict_to_flax(classifier_sd, MM, wider, "classifier",
                                    expected_shapes=api.param_shapes(wider, "classifier"))


def test_missing_first_block_of_a_stage_is_a_mismatch(classifier_sd):
  sd = {k: v for k, v in classifier_sd.items() if not k.startswith("backbone.layers.2.blocks.0.")}
  with pytest.raises(torch_format.CheckpointMismatch, match="backbone.layers.2.blocks.0"):
    torch_io.import_state_dict({"state_dict": sd})


def test_not_a_mixmim_checkpoint(tmp_path):
  other = {"conv1.weight": np.zeros((8, 3, 3, 3), np.float32),
           "fc.weight": np.zeros((10, 8), np.float32)}
  with pytest.raises(torch_format.CheckpointMismatch, match="not a MixMIM checkpoint"):
    torch_io.import_state_dict({"state_dict": other})
  path = tmp_path / "resnet.pth"
  torch.save({"state_dict": torch_tensors(other)}, path)
  with pytest.raises(SystemExit, match=r"resnet\.pth: not a MixMIM checkpoint.*conv1\.weight"):
    convert.main([str(path), str(tmp_path / "out.msgpack")])
  assert not (tmp_path / "out.msgpack").exists()


def test_missing_torch_file_names_the_path(tmp_path):
  path = tmp_path / "nowhere.pth"
  with pytest.raises(SystemExit, match=f"checkpoint '{path}' does not exist"):
    convert.main([str(path), str(tmp_path / "out.msgpack")])


def test_missing_params_file_names_the_path(tmp_path):
  path = tmp_path / "nowhere.msgpack"
  with pytest.raises(SystemExit, match="nowhere.msgpack"):
    convert.main([str(path), str(tmp_path / "out.pth")])


def test_missing_params_file_message_names_the_path(tmp_path):
  path = tmp_path / "nowhere.msgpack"
  with pytest.raises((SystemExit, FileNotFoundError), match=f"'{path}' does not exist"):
    convert.main([str(path), str(tmp_path / "out.pth")])


def test_export_with_an_extra_flax_param_fails(tmp_path, classifier_params):
  params = jax.tree.map(np.asarray, classifier_params)
  params["encoder"]["layers_1"]["stray"] = {"kernel": np.zeros((2, 2), np.float32)}
  src, dst = tmp_path / "extra.msgpack", tmp_path / "extra.pth"
  save_params(str(src), CFG, "classifier", params)
  with pytest.raises((torch_format.CheckpointMismatch, SystemExit),
                     match=r"1 tensors with no place.*encoder/layers_1/stray/kernel"):
    convert.main([str(src), str(dst)])
  assert not dst.exists()


def test_export_destination_must_say_what_it_is(tmp_path, classifier_params):
  src = tmp_path / "p.msgpack"
  save_params(str(src), CFG, "classifier", classifier_params)
  with pytest.raises(SystemExit, match="cannot tell what to write to '.*out.npz' from its name: "
                     "end it in .msgpack"):
    convert.main([str(src), str(tmp_path / "out.npz")])


def _files(root):
  return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_output_is_what_its_name_says(tmp_path, classifier_params, capsys):
  """`convert X.pth Y.pth` and `export --out model.pth` write PyTorch files in
  --format's layout that torch loads; a name that says neither, --format for a
  params file, or an --out that is a folder is refused in one sentence before
  anything is read or written, and no temporary file is left."""
  from mixmim_jax import export  # pylint: disable=import-outside-toplevel
  classes = [f"class {i}" for i in range(10)]
  src = tmp_path / "cls.msgpack"
  save_params(str(src), CFG, "classifier", classifier_params, classes=classes)
  pth, official, back = tmp_path / "cls.pth", tmp_path / "official.pth", tmp_path / "back.msgpack"
  assert convert.main([str(src), str(pth)]) == 0
  assert convert.main([str(pth), str(official), "--format", "official"]) == 0   # .pth -> .pth
  theirs = torch.load(official, map_location="cpu", weights_only=True)
  assert "head.weight" in theirs["model"] and "patch_embed.proj.weight" in theirs["model"]
  assert theirs["meta"]["dataset_meta"]["classes"] == classes
  assert convert.main([str(official), str(back)]) == 0
  assert_trees_equal(load_params(str(back)).params, classifier_params)
  assert load_params(str(back)).classes == tuple(classes)
  for fmt, wrapper, key in ((None, "state_dict", "backbone.norm.weight"),
                            ("official", "model", "norm.weight")):
    out = tmp_path / f"export-{fmt}.pth"
    assert export.main(["--checkpoint", str(src), "--out", str(out)]
                       + (["--format", fmt] if fmt else [])) == 0
    written = torch.load(out, map_location="cpu", weights_only=True)   # a real torch file
    np.testing.assert_array_equal(written[wrapper][key].numpy(),
                                  classifier_params["encoder"]["norm"]["scale"])
  capsys.readouterr()

  (tmp_path / "a_folder.msgpack").mkdir()
  before = _files(tmp_path)
  refused = [
      (convert.main, [str(src), str(tmp_path / "y.bin")],
       f"cannot tell what to write to '{tmp_path / 'y.bin'}' from its name"),
      (convert.main, [str(pth), str(tmp_path / "y.msgpack"), "--format", "official"],
       "--format official is the layout of a PyTorch checkpoint, but"),
      (export.main, ["--checkpoint", str(src), "--out", str(tmp_path / "a_folder.msgpack")],
       f"cannot write '{tmp_path / 'a_folder.msgpack'}': it is a folder; name a file in it"),
      (export.main, ["--checkpoint", str(src), "--out", str(tmp_path / "m.msgpack"),
                     "--format", "official"], "--format official is the layout of a PyTorch"),
      (export.main, ["--checkpoint", str(src), "--out", str(tmp_path / "m.pth"), "--step=-5"],
       "--step=-5; expected a checkpoint step (0 or more), or -1 for the latest"),
      (convert.main, [str(pth), str(tmp_path / "y.msgpack"), "--decoder-heads=0"],
       "--decoder-heads=0; expected 1 or more"),
  ]
  for main, argv, fragment in refused:
    try:
      code = main(argv)
      said = capsys.readouterr().err
    except SystemExit as e:
      code, said = 1, str(e.code)
    assert code == 1 and fragment in said and len(said.strip().splitlines()) == 1, (argv, said)
  with pytest.raises(ValueError, match="names a PyTorch checkpoint, but a params file is "
                     "msgpack"):
    save_params(str(tmp_path / "x.pth"), CFG, "classifier", classifier_params)
  assert _files(tmp_path) == before                  # nothing written, no .NAME.tmp-PID


# ---------------------------------------------------------------------------
# (e) The arch is read back from the tensors.

@pytest.mark.parametrize("windows,effective", [((4, 2, 2, 1), (4, 2, 2, 1)),
                                               ((8, 8, 8, 8), (8, 8, 4, 2))])
def test_infer_config_from_mmpretrain_state_dict(windows, effective):
  cfg = model_config(dict(embed_dim=16, depths=(2, 1, 3, 1), num_heads=(2, 1, 4, 2)),
                     window_sizes=windows, img_size=64, num_classes=7, mlp_ratio=2.0)
  assert cfg.effective_windows == effective
  # Read off the reference model's own state dict (not our exporter's).
  model = ref.build_classifier(cfg)
  sd = th.numpy_state_dict(model)
  fmt, flat_sd = torch_format.unwrap({"state_dict": sd})
  got, kind = torch_format.infer_config(flat_sd, fmt)
  assert (fmt, kind) == (MM, "classifier")
  assert got.window_sizes == effective
  assert got.effective_windows == effective
  assert got.num_heads == (2, 1, 4, 2)
  assert got.depths == (2, 1, 3, 1)
  assert got.embed_dim == 16 and got.img_size == 64 and got.patch_size == 4
  assert got.num_classes == 7 and got.mlp_ratio == 2.0 and got.in_chans == 3
  # An mmpretrain classifier built from scratch keeps its absolute table at zero.
  assert got.pos_embed == "none"
  # And the same from our export (table filled: mmpretrain's row/col layout).
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), api.param_shapes(cfg, "classifier"))
  got2, kind2 = torch_format.infer_config(
      torch_format.flax_to_state_dict(zeros, cfg, "classifier", MM), MM)
  assert kind2 == "classifier"
  assert got2 == cfg.replace(window_sizes=effective, decoder_ln_eps=1e-6)


# ---------------------------------------------------------------------------
# (e) What checkpoints carry besides tensors: read without trusting the file.

class TrainingLogEntry:
  """Stands for the objects training checkpoints pickle beside the tensors
  (mmengine's HistoryBuffer in its message hub, for one)."""

  def __init__(self):
    self.values = np.arange(3.0)


def test_decoder_heads_come_from_the_mmengine_config_text(tmp_path, pretrain_params, capsys):
  sd = torch_format.flax_to_state_dict(pretrain_params, CFG, "pretrain", MM)
  cfg_text = ("model = dict(\n    type='MixMIM',\n    neck=dict(\n        type='MixMIMPretrainDecoder',"
              f"\n        decoder_embed_dim=64,\n        decoder_num_heads={CFG.decoder_heads},"
              "\n        decoder_depth=2))\n")
  path = tmp_path / "epoch_300.pth"
  torch.save({"meta": {"cfg": cfg_text, "epoch": 300}, "state_dict": torch_tensors(sd),
              "message_hub": {"log_scalars": {"train/loss": TrainingLogEntry()}}}, path)
  assert convert.main([str(path), str(tmp_path / "out.msgpack")]) == 0
  assert "2 heads (read from meta['cfg']" in capsys.readouterr().out
  assert load_params(str(tmp_path / "out.msgpack")).config.decoder_heads == 2


def test_decoder_heads_come_from_the_authors_args(tmp_path):
  import argparse  # pylint: disable=import-outside-toplevel
  cfg = CFG.replace(decoder_heads=16)
  params = api.init_params(cfg, "pretrain", 0)
  path = tmp_path / "checkpoint.pth"
  torch.save({"model": torch_tensors(torch_format.flax_to_state_dict(params, cfg, "pretrain",
                                                                     OFFICIAL)),
              "epoch": 599, "args": argparse.Namespace(model="mixmim_base", blr=1.5e-4)}, path)
  checkpoint = torch_io.load_torch_checkpoint(str(path))
  assert torch_io.decoder_heads(checkpoint) == (16, "read from args.model='mixmim_base' "
                                                   "(the authors' registry)")
  assert torch_io.decoder_heads(checkpoint, 4)[0] == 4
  assert torch_io.import_state_dict(checkpoint)[0].decoder_heads == 16


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 100])
def test_unreadable_torch_file_is_one_sentence(tmp_path, content):
  path = tmp_path / "broken.pth"
  path.write_bytes(content)
  with pytest.raises(SystemExit) as err:
    convert.main([str(path), str(tmp_path / "out.msgpack")])
  msg = str(err.value)
  assert msg.startswith(f"'{path}' is not a readable PyTorch checkpoint") and "\n" not in msg
  assert "--trust-checkpoint" not in msg
  assert not (tmp_path / "out.msgpack").exists()


def test_convert_into_a_missing_directory_is_one_sentence(tmp_path, classifier_sd):
  path = tmp_path / "ok.pth"
  torch.save({"state_dict": torch_tensors(classifier_sd)}, path)
  target = tmp_path / "nowhere" / "out.msgpack"
  with pytest.raises(SystemExit) as err:
    convert.main([str(path), str(target)])
  assert str(err.value) == (f"{path}: cannot write '{target}': its directory "
                            f"'{target.parent}' does not exist.")
