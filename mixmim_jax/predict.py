"""Top-5 classes for image files with an exported classifier.

  python -m mixmim_jax.predict --checkpoint model.msgpack photo.jpg [more.png ...]

--checkpoint takes what `export` reads too: a params file, a fine-tune workdir
or a PyTorch classifier checkpoint.

Each image gets the evaluation transform (short side to img_size x 256/224 up
to 224 px, to img_size above, bicubic; centre crop; ImageNet mean/std unless --mean/--std say otherwise) and
one line per class: softmax probability and name. Names are ImageNet's when the
head has 1000 classes, lines of --labels FILE when given, else "class i".

In Python: `predict.top_k(export.load(path), ["photo.jpg"])` -> per image a list
of (class index, name, probability).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

from mixmim_jax import data, export, pixels  # noqa: E402
from mixmim_jax.data import labeled  # noqa: E402
from mixmim_jax.imagenet_classes import IMAGENET_CLASSES  # noqa: E402

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def class_names(num_classes: int, labels_file: str | None = None) -> list[str]:
  if labels_file:
    names = [line.strip() for line in epath.Path(labels_file).read_text().splitlines()
             if line.strip()]
    if len(names) != num_classes:
      raise ValueError(f"{labels_file!r} has {len(names)} names for a {num_classes}-class head.")
    return names
  if num_classes == 1000:
    return list(IMAGENET_CLASSES)
  return [f"class {i}" for i in range(num_classes)]


def preprocess(paths, img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
  """Normalized float32 (N, S, S, 3) images, the evaluation transform of fine-tuning."""
  from mixmim_jax.data.tf_cpu import tf  # pylint: disable=import-outside-toplevel
  cfg = data.labeled_config()
  cfg.image_size = img_size
  # The references' crop_pct: 224/256 up to 224 px, 1.0 above (the authors' rule).
  cfg.eval_resize = int(img_size / (224 / 256)) if img_size <= 224 else img_size
  cfg.mean, cfg.std = tuple(mean), tuple(std)
  out = []
  for path in paths:
    if not epath.Path(path).is_file():
      raise FileNotFoundError(f"image {path!r} does not exist.")
    try:
      out.append(labeled.eval_view(tf.constant(path), "path", cfg).numpy())
    except tf.errors.InvalidArgumentError as e:
      raise ValueError(f"{path!r} is not a JPEG, PNG, GIF or BMP image that can be "
                       "decoded.") from e
  return np.asarray(pixels.normalize(np.stack(out), mean, std))


def top_k(model, paths, k: int = 5, mean=IMAGENET_MEAN, std=IMAGENET_STD,
          labels_file: str | None = None):
  """Per image, the k most probable (index, name, probability), best first."""
  if model.kind != "classifier" or model.config.num_classes == 0:
    raise ValueError("this params file holds an encoder without a classifier head; "
                     "fine-tune it first (python -m mixmim_jax.finetune).")
  names = class_names(model.config.num_classes, labels_file)
  images = preprocess(paths, model.config.img_size, mean, std)
  probs = np.asarray(jax.nn.softmax(export.logits(model, images), axis=-1))
  k = min(k, probs.shape[1])
  best = np.argsort(-probs, axis=1, kind="stable")[:, :k]
  return [[(int(i), names[i], float(p[i])) for i in row] for row, p in zip(best, probs)]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mixmim_jax.predict",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", required=True, help="a classifier params file (.msgpack)")
  parser.add_argument("images", nargs="+")
  parser.add_argument("--top", type=int, default=5)
  parser.add_argument("--labels", default=None, help="class names, one per line")
  parser.add_argument("--mean", type=float, nargs=3, default=IMAGENET_MEAN)
  parser.add_argument("--std", type=float, nargs=3, default=IMAGENET_STD)
  args = parser.parse_args(argv)
  try:
    model = export.load(args.checkpoint)
    results = top_k(model, args.images, args.top, args.mean, args.std, args.labels)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for path, rows in zip(args.images, results):
    print(path)
    for _, name, p in rows:
      print(f"  {p:.4f}  {name}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
