"""Training metrics: TensorBoard event files, a compact console line, and PNGs
of reconstructed pairs."""
from __future__ import annotations

import logging
import os

import numpy as np

logger = logging.getLogger(__name__)


class MetricWriter:
  """Scalars to TensorBoard (only on process 0) and one console line per call."""

  def __init__(self, logdir: str, enabled: bool = True):
    self.enabled = enabled
    self._writer = None
    if enabled:
      from mixmim_jax.data._tf import tf  # pylint: disable=import-outside-toplevel
      self._tf = tf
      self._writer = tf.summary.create_file_writer(logdir)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    with self._writer.as_default():
      for name, value in scalars.items():
        self._tf.summary.scalar(name, value, step=step)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def progress_line(step: int, total: int, s: dict[str, float]) -> str:
  return (f"step {step:>7d}/{total} | loss {s['loss']:.4f} | lr {s['lr']:.3e} | "
          f"grad_norm {s['grad_norm']:.3f} | {s['images_per_sec']:.1f} img/s | "
          f"step {s['step_time'] * 1e3:.0f} ms (data wait {s['data_wait'] * 1e3:.0f} ms)")


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
  if "://" in path:   # gs:// workdirs on Cloud TPU: write through TensorFlow's gfile
    import io  # pylint: disable=import-outside-toplevel
    from mixmim_jax.data._tf import tf  # pylint: disable=import-outside-toplevel
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "wb") as f:
      f.write(buffer.getvalue())
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  canvas.save(path)
