"""tools/plot_curves: reads back what metrics.MetricWriter wrote, across its
rotated files and a resumed run, and draws a PNG."""
import pytest

from mixmim_jax.tools import plot_curves
from mixmim_jax.training import metrics


def _write_run(workdir, steps, events_per_file=3):
  writer = metrics.MetricWriter(str(workdir / "tensorboard"), events_per_file=events_per_file)
  for step in steps:
    writer.write(step, {"loss": 1.0 / step, "lr": 1e-3})


def test_reads_every_file_and_the_resumed_value_wins(tmp_path):
  _write_run(tmp_path, range(1, 8))                   # 7 events over 3 files
  # A resumed run (a later-named file) logs steps 6-9 again.
  writer = metrics.MetricWriter(str(tmp_path / "tensorboard"))
  writer._stem = "events.out.tfevents.9999999999.resumed"  # sorts after the first run's
  writer._new_file()
  for step in range(6, 10):
    writer.write(step, {"loss": 10.0 + step, "lr": 2e-3})
  scalars = plot_curves.read_scalars(str(tmp_path))
  assert sorted(scalars["loss"]) == list(range(1, 10))
  assert scalars["loss"][3] == pytest.approx(1 / 3)
  assert scalars["loss"][6] == 16.0 and scalars["lr"][9] == pytest.approx(2e-3)


def test_writes_a_png_and_names_missing_tags(tmp_path):
  _write_run(tmp_path, range(1, 20))
  out = tmp_path / "loss.png"
  plot_curves.main([str(tmp_path), f"--out={out}", "--steps-per-epoch=5", "--tags=loss,lr"])
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
  with pytest.raises(SystemExit, match="no scalar named 'accuracy'.*'loss', 'lr'"):
    plot_curves.main([str(tmp_path), f"--out={out}", "--tags=accuracy"])
  with pytest.raises(FileNotFoundError, match="tensorboard does not exist"):
    plot_curves.read_scalars(str(tmp_path / "nothing"))


def test_shades_the_seeds_range_and_draws_the_first_value(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path / "tensorboard"))
  for step in (0, 5, 10):
    writer.write(step, {"eval/fewshot_10shot": 0.5 + step / 100,
                        "eval/fewshot_10shot_min": 0.48 + step / 100,
                        "eval/fewshot_10shot_max": 0.53 + step / 100})
  out = tmp_path / "probes.png"
  plot_curves.main([str(tmp_path), f"--out={out}", "--tags=eval/fewshot_10shot",
                    "--baseline=random encoder"])
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_several_workdirs_draw_as_one_run_the_later_winning(tmp_path):
  early, run = tmp_path / "early", tmp_path / "run"
  for workdir, values in ((early, {0: 0.5, 5: 0.6}), (run, {5: 0.65, 10: 0.7})):
    writer = metrics.MetricWriter(str(workdir / "tensorboard"))
    for step, value in values.items():
      writer.write(step, {"eval/knn_top1": value})
  merged = plot_curves.merge_scalars([str(early), str(run)])
  assert merged["eval/knn_top1"] == pytest.approx({0: 0.5, 5: 0.65, 10: 0.7})
  out = tmp_path / "knn.png"
  plot_curves.main([str(early), str(run), f"--out={out}", "--tags=eval/knn_top1"])
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
