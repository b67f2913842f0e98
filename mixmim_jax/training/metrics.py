"""Training metrics: TensorBoard event files, a compact console line, and PNGs
of reconstructed pairs; all written through etils.epath (gs:// workdirs too)."""
from __future__ import annotations

import io
import logging
import os
import socket
import time

import numpy as np
from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from mixmim_jax.training.progress import duration

logger = logging.getLogger(__name__)


class MetricWriter:
  """Scalars to TensorBoard event files (only on process 0).

  The events are framed and written by this class through etils.epath rather
  than by tf.summary, so they go wherever the workdir is, whatever client reads
  it (a gs:// workdir through gcsfs, say). Object stores cannot append: each
  write rewrites the current event file whole, and a new file starts every
  `events_per_file` writes so that no rewrite grows large (TensorBoard reads
  all files of a directory in name order)."""

  def __init__(self, logdir: str, enabled: bool = True, events_per_file: int = 100):
    self.enabled = enabled
    if not enabled:
      return
    self._dir = epath.Path(logdir)
    self._dir.mkdir(parents=True, exist_ok=True)
    self._stem = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                  f"{os.getpid()}")
    self._per_file = events_per_file
    self._part, self._count, self._buffer = 0, 0, io.BytesIO()
    self._new_file()

  def _new_file(self) -> None:
    self._buffer = io.BytesIO()
    self._records = RecordWriter(self._buffer)
    self._records.write(event_pb2.Event(wall_time=time.time(),
                                        file_version="brain.Event:2").SerializeToString())

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    values = [summary_pb2.Summary.Value(tag=name, simple_value=float(value))
              for name, value in scalars.items()]
    self._records.write(event_pb2.Event(wall_time=time.time(), step=int(step),
                                        summary=summary_pb2.Summary(value=values))
                        .SerializeToString())
    (self._dir / f"{self._stem}.{self._part:06d}").write_bytes(self._buffer.getvalue())
    self._count += 1
    if self._count % self._per_file == 0:
      self._part += 1
      self._new_file()

  def close(self) -> None:
    pass


def progress_line(step: int, total: int, s: dict[str, float]) -> str:
  """The console line of a log step; the clock's part (elapsed, ETA,
  chip-hours: progress.py) when the loop gave it."""
  line = (f"step {step:>7d}/{total} | loss {s['loss']:.4f} | lr {s['lr']:.3e} | "
          f"grad_norm {s['grad_norm']:.3f} | {s['images_per_sec']:.1f} img/s")
  if "images_per_sec_per_chip" in s:
    line += f" ({s['images_per_sec_per_chip']:.1f}/chip)"
  line += (f" | step {s['step_time'] * 1e3:.0f} ms (data wait "
           f"{s['data_wait'] * 1e3:.0f} ms)")
  if "elapsed" in s:
    line += f" | {duration(s['elapsed'])} elapsed, ETA {duration(s.get('eta'))}"
    if s.get("eval_seconds"):
      line += f" (evals so far {duration(s['eval_seconds'])})"
    line += f" | {s['chip_hours']:.3g} chip-h"
  return line


def denormalize(images: np.ndarray, mean, std) -> np.ndarray:
  return np.clip(images * np.asarray(std) + np.asarray(mean), 0, 255).astype(np.uint8)


def save_pairs_png(path: str, rows: list[list[np.ndarray]], titles: list[str]) -> None:
  """A grid image: one row per pair, columns as given (uint8 HWC images)."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  h, w = rows[0][0].shape[:2]
  pad, header = 2, 14
  cols = len(rows[0])
  canvas = Image.new("RGB", (cols * (w + pad) + pad, header + len(rows) * (h + pad) + pad),
                     (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for c, title in enumerate(titles):
    draw.text((pad + c * (w + pad), 1), title, fill=(0, 0, 0))
  for r, row in enumerate(rows):
    for c, img in enumerate(row):
      if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
      canvas.paste(Image.fromarray(img), (pad + c * (w + pad), header + pad + r * (h + pad)))
  buffer = io.BytesIO()
  canvas.save(buffer, format="PNG")
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_bytes(buffer.getvalue())
