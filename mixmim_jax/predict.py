"""Top-5 classes for image files, by model name or with any checkpoint; and
MixMIM's reconstructions with the pretraining model.

  python -m mixmim_jax.predict --model mixmim-base_mixmim-pre_8xb128-coslr-100e_in1k photo.jpg
  python -m mixmim_jax.predict --model mixmim_mixmim-base_16xb128-coslr-300e_in1k \
      a.jpg b.jpg --show-dir pictures/       # the mixed pair and both reconstructions
  python -m mixmim_jax.predict --list        # the names, sizes, and what is cached
  python -m mixmim_jax.predict --checkpoint model.msgpack photo.jpg [more.png ...]

--model downloads the published weights once (mixmim_jax.hub: cache, mirror,
hash check); --checkpoint takes what `export` reads: a params file, a fine-tune
workdir, a PyTorch checkpoint, or a model name too.

Each image gets the evaluation transform (short side to img_size x 256/224 up
to 224 px, to img_size above, bicubic; centre crop; ImageNet mean/std unless --mean/--std say otherwise) and
one line per class: softmax probability and name. Names are the lines of
--labels FILE when given, else those the checkpoint records, else ImageNet's
when the head has 1000 classes, else "class i".

In Python: `mixmim_jax.inference_model(name_or_path, "photo.jpg")` (mmpretrain's
result keys), or `predict.top_k(export.load(path), ["photo.jpg"])` -> per image
a list of (class index, name, probability).
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


def class_names(num_classes: int, labels_file: str | None = None,
                recorded=None) -> list[str]:
  """--labels FILE, else the names the checkpoint records, else ImageNet's for
  1000 classes, else "class i"."""
  if not labels_file and recorded:
    return list(recorded)
  if labels_file:
    names = [line.strip() for line in epath.Path(labels_file).read_text().splitlines()
             if line.strip()]
    if len(names) != num_classes:
      raise ValueError(f"{labels_file!r} has {len(names)} names for a {num_classes}-class head.")
    return names
  if num_classes == 1000:
    return list(IMAGENET_CLASSES)
  return [f"class {i}" for i in range(num_classes)]


def preprocess_uint8(inputs, img_size: int) -> np.ndarray:
  """uint8 (N, S, S, 3): the evaluation transform of fine-tuning (mmpretrain's
  test pipeline, pixel for pixel) of image files or uint8 RGB / grey arrays."""
  from mixmim_jax.data.tf_cpu import tf  # pylint: disable=import-outside-toplevel
  cfg = data.labeled_config()
  cfg.image_size = img_size
  # The references' crop_pct: 224/256 up to 224 px, 1.0 above (the authors' rule).
  cfg.eval_resize = int(img_size / (224 / 256)) if img_size <= 224 else img_size
  out = []
  for item in inputs:
    if not isinstance(item, (str, os.PathLike)):
      out.append(labeled.eval_view(tf.constant(_pixels(item)), "pixels", cfg).numpy())
      continue
    if not epath.Path(item).is_file():
      raise FileNotFoundError(f"image {item!r} does not exist.")
    try:
      out.append(labeled.eval_view(tf.constant(os.fspath(item)), "path", cfg).numpy())
    except tf.errors.InvalidArgumentError as e:
      raise ValueError(f"{item!r} is not a JPEG, PNG, GIF or BMP image that can be "
                       "decoded.") from e
  return np.stack(out)


def _pixels(array) -> np.ndarray:
  array = np.asarray(array)
  if array.ndim == 2:
    array = array[..., None]
  if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (1, 3):
    raise ValueError(f"an image array must be uint8 pixels (H, W, 3) RGB or (H, W) grey; "
                     f"got {array.dtype} {array.shape}.")
  return array


def preprocess(paths, img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
  """Normalized float32 (N, S, S, 3) images, the evaluation transform of fine-tuning."""
  return np.asarray(pixels.normalize(preprocess_uint8(paths, img_size), mean, std))


def top_k(model, paths, k: int = 5, mean=IMAGENET_MEAN, std=IMAGENET_STD,
          labels_file: str | None = None):
  """Per image, the k most probable (index, name, probability), best first."""
  if model.kind != "classifier" or model.config.num_classes == 0:
    raise ValueError("this params file holds an encoder without a classifier head; "
                     "fine-tune it first (python -m mixmim_jax.finetune).")
  names = class_names(model.config.num_classes, labels_file, model.classes)
  images = preprocess(paths, model.config.img_size, mean, std)
  probs = np.asarray(jax.nn.softmax(export.logits(model, images), axis=-1))
  k = min(k, probs.shape[1])
  best = np.argsort(-probs, axis=1, kind="stable")[:, :k]
  return [[(int(i), names[i], float(p[i])) for i in row] for row, p in zip(best, probs)]


def list_table(pattern: str | None = None) -> str:
  """--list: the registry with sizes, accuracy, and whether each is cached."""
  from mixmim_jax import downloads, hub  # pylint: disable=import-outside-toplevel
  rows = [f"{'name':<48} {'kind':<10} {'params':>9} {'GFLOPs':>7} {'top-1':>6}  cached"]
  for name in hub.list_models(pattern):
    e = hub.lookup(name)
    top1 = f"{e.top1:.2f}" if e.top1 is not None else "-"
    rows.append(f"{e.name:<48} {e.kind:<10} {e.params / 1e6:>7.2f} M {e.flops / 1e9:>7.2f} "
                f"{top1:>6}  {'yes' if hub.is_cached(e) else 'no'}")
  rows.append(f"cache: {hub.home()}/checkpoints (${hub.HOME_ENV}); mirror: "
              f"${downloads.MIRROR_ENV}")
  return "\n".join(rows)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mixmim_jax.predict",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default=None,
                      help="a published model's name (--list); its weights are downloaded once")
  parser.add_argument("--checkpoint", default=None,
                      help="a params file (.msgpack), .pth, fine-tune workdir or model name")
  parser.add_argument("--list", nargs="?", const="", default=None, metavar="PATTERN",
                      help="list the model names (matching PATTERN*) and exit")
  parser.add_argument("images", nargs="*")
  parser.add_argument("--top", type=int, default=5)
  parser.add_argument("--labels", default=None, help="class names, one per line")
  parser.add_argument("--mean", type=float, nargs=3, default=IMAGENET_MEAN)
  parser.add_argument("--std", type=float, nargs=3, default=IMAGENET_STD)
  parser.add_argument("--show-dir", default=None,
                      help="write a PNG per image (classifier) or of the mixed pair (pretraining)")
  parser.add_argument("--seed", type=int, default=0, help="the pretraining model's mask")
  args = parser.parse_args(argv)
  if args.list is not None:
    print(list_table(args.list or None))
    return 0
  if (args.model is None) == (args.checkpoint is None):
    parser.error("give one of --model NAME (see --list) or --checkpoint PATH.")
  if not args.images:
    parser.error("give one or more image files.")
  missing = [p for p in args.images if not epath.Path(p).is_file()]
  if missing:         # before a model is downloaded for them
    print(f"error: image {missing[0]!r} does not exist.", file=sys.stderr)
    return 1
  try:
    from mixmim_jax import hub, inference  # pylint: disable=import-outside-toplevel
    model = inference.load(hub.lookup(args.model).name if args.model else args.checkpoint)
    if model.kind == "pretrain":
      _print_reconstruction(inference.reconstruct(
          model, args.images, show_dir=args.show_dir, seed=args.seed, mean=args.mean,
          std=args.std), args.images)
      return 0
    if model.kind != "classifier" or model.config.num_classes == 0:
      raise ValueError("this params file holds an encoder without a classifier head; "
                       "fine-tune it first (python -m mixmim_jax.finetune).")
    names = class_names(model.config.num_classes, args.labels, model.classes)
    results = inference.inference_model(model, args.images, classes=names, mean=args.mean,
                                        std=args.std, show_dir=args.show_dir)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for path, result in zip(args.images, results):
    print(path)
    scores = result["pred_scores"]
    for i in np.argsort(-scores, kind="stable")[:args.top]:
      print(f"  {scores[i]:.4f}  {names[i]}")
  if args.show_dir:
    print(f"pictures -> {args.show_dir}")
  return 0


def _print_reconstruction(result: dict, images) -> None:
  mask = result["mask"]
  print(f"{' + '.join(images)}: {int(mask.sum())} of {mask.size} cells masked, "
        f"norm-pix reconstruction loss {result['loss']:.4f}")
  print(f"picture -> {result['png']}" if "png" in result
        else "(--show-dir DIR writes the mixed input and both reconstructions as a PNG)")


if __name__ == "__main__":
  sys.exit(main())
