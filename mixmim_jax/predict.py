"""Top-5 classes for image files, by model name or with any checkpoint; and
MixMIM's reconstructions with the pretraining model.

  python -m mixmim_jax.predict --model mixmim-base_mixmim-pre_8xb128-coslr-100e_in1k photo.jpg
  python -m mixmim_jax.predict --model mixmim_mixmim-base_16xb128-coslr-300e_in1k \
      a.jpg b.jpg --show-dir pictures/       # the mixed pair and both reconstructions
  python -m mixmim_jax.predict --list        # the names, sizes, and what is cached
  python -m mixmim_jax.predict --checkpoint model.msgpack photo.jpg [more.png ...]

--model downloads the published weights once (mixmim_jax.weights.hub: cache, mirror,
hash check); --checkpoint takes what `export` reads: a params file, a fine-tune
workdir, a PyTorch checkpoint, or a model name too.

Each image gets the evaluation transform (short side to img_size x 256/224 up
to 224 px, to img_size above, bicubic; centre crop; ImageNet mean/std unless --mean/--std say otherwise) and
one line per class: softmax probability and name. Names are the lines of
--labels FILE when given, else those the checkpoint records, else ImageNet's
when the head has 1000 classes, else "class i".

In Python: `mixmim_jax.inference_model(name_or_path, "photo.jpg")` (mmpretrain's
result keys), or `inference.top_k(inference.load(path), ["photo.jpg"])` -> per
image a list of (class index, name, probability).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

from mixmim_jax.data import test_view  # noqa: E402
from mixmim_jax.data.test_view import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def list_table(pattern: str | None = None) -> str:
  """--list: the registry with sizes, accuracy, and whether each is cached."""
  from mixmim_jax.weights import downloads, hub  # pylint: disable=import-outside-toplevel
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
  parser.add_argument("--compile-cache", default="auto",
                      help="where compiled programs are kept across runs: a path, 'off', or "
                           "'auto' ($MIXMIM_JAX_HOME/compile_cache)")
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
    from mixmim_jax import inference  # pylint: disable=import-outside-toplevel
    from mixmim_jax.training import startup  # pylint: disable=import-outside-toplevel
    from mixmim_jax.weights import hub  # pylint: disable=import-outside-toplevel
    startup.enable_cache(args.compile_cache)
    clock = startup.StartupClock()
    clock.mark("imports")
    model = inference.load(hub.lookup(args.model).name if args.model else args.checkpoint)
    clock.mark("load")
    if model.kind == "pretrain":
      _print_reconstruction(inference.reconstruct(
          model, args.images, show_dir=args.show_dir, seed=args.seed, mean=args.mean,
          std=args.std), args.images)
      clock.mark("predict")
      print(clock.report("the result"), file=sys.stderr)
      return 0
    if model.kind != "classifier" or model.config.num_classes == 0:
      raise ValueError("this params file holds an encoder without a classifier head; "
                       "fine-tune it first (python -m mixmim_jax.finetune).")
    names = test_view.class_names(model.config.num_classes, args.labels, model.classes)
    results = inference.inference_model(model, args.images, classes=names, mean=args.mean,
                                        std=args.std, show_dir=args.show_dir)
    clock.mark("predict")
    print(clock.report("the result"), file=sys.stderr)
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
