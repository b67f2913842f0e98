"""Speed of the host input pipeline, against mmpretrain 1.2.0's on the same files.

  python -m mixmim_jax.benchmark --input-only --config=configs/base_pretrain.py \
      --synthetic-jpegs=512 --batch=64 --steps=64 --warmup=16 --rounds=5 --reference \
      [--profile-input]
  python -m mixmim_jax.benchmark --input-only --config=configs/base_finetune.py \
      --synthetic-jpegs=512 --batch=64 --steps=64 --warmup=16 --rounds=5 --reference

Ours is the real tf.data pipeline of the config's trainer (`--pipeline`):
`data.pretrain_batches` (RandomResizedCrop + flip, uint8 out) or
`labeled.train_batches` (+ RandAugment and random erasing). --reference builds
mmpretrain's own `train_pipeline` from its MixMIM recipe shipped in the package
(through its registry: LoadImageFromFile, RandomResizedCrop, RandomFlip, ...,
PackInputs) over the same JPEGs, and runs it through a torch DataLoader with one
worker per core, the recipe's collate function and the same batch size.

The two alternate in rounds: each round starts a fresh iterator, takes --warmup
batches untimed (worker start-up, graph building), times --steps batches and
closes the iterator, so neither keeps filling its prefetch buffers while the
other is timed. Images/s is the median over rounds, also given per core (every
core the process may use: tf.data's threads, or the DataLoader's workers). The
machine's load average is printed before and after: on a busy machine both
figures are low, and their ratio is all that can be read.

Each DataLoader worker makes whole batches, so the reference delivers them in
bursts of one per worker: give --steps several times the number of cores (4x
above, for 16) and --warmup about the number of cores, or its figure is off by
up to cores / steps.

--profile-input splits our pipeline into stages, each run alone on one pinned
core over the same files: read, decode, crop + resize + flip (full or partial
JPEG decode), the whole per-image view, and the whole tf.data pipeline
(the difference to the view is tf.data's own cost: windows, batching, copies).
It also times the library calls alone -- read, libjpeg decode, crop, Pillow's
resize, flip -- in a plain Python loop: both pipelines make those calls, so
with --reference it prints the most any pipeline giving these pixels could
gain on mmpretrain's per core.
"""
from __future__ import annotations

import copy
import functools
import io
import os
import statistics
import time
import warnings

import numpy as np
from etils import epath

PIPELINES = ("pretrain", "finetune")


def cores() -> int:
  """CPUs this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def summary(times: list[float]) -> dict:
  return dict(median_s=statistics.median(times), min_s=min(times), max_s=max(times),
              n=len(times))


def load() -> list[float]:
  """The machine's 1, 5 and 15 minute load averages."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


# ------------------------------------------------------------------ files
def write_synthetic_jpegs(root: str, count: int, seed: int = 0) -> str:
  """`count` JPEGs of 500x375 (ImageNet's typical size, quality 90) in the layout
  root/train/<label>/*.jpg, cut from scikit-image's sample photos when it is
  installed (decode cost follows image content), else from smooth random fields."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  photos = []
  try:
    from skimage import data as skdata  # pylint: disable=import-outside-toplevel
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"):
      photos.append(np.asarray(getattr(skdata, name)()))
  except Exception:  # pylint: disable=broad-except
    pass
  for i in range(count):
    if photos:
      src = Image.fromarray(photos[i % len(photos)]).resize((500, 375), Image.BICUBIC)
      img = np.asarray(src).astype(np.int16)
      img = np.clip(img + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
      if i % 2:
        img = img[:, ::-1]
    else:
      low = rng.uniform(0, 255, (12, 16, 3)).astype(np.uint8)
      img = np.asarray(Image.fromarray(low).resize((500, 375), Image.BICUBIC))
    label_dir = epath.Path(root) / "train" / f"class{i % 10}"
    label_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(img)).save(str(label_dir / f"{i:06d}.jpg"), quality=90)
  return root


def folder_files(data_config) -> list[str]:
  """The image files of a folder source's training split, sorted."""
  from mixmim_jax.data import sources  # pylint: disable=import-outside-toplevel
  root = epath.Path(data_config.folder) / data_config.split
  return sorted(str(p) for p in root.glob("*/*")
                if p.suffix.lower() in sources.IMAGE_EXTENSIONS)


def resolve_pipeline(config, pipeline: str | None, reference: bool) -> str:
  """The pipeline to time: the config's trainer's unless named; refuses a
  pipeline whose data settings the config does not hold, or a reference that
  times another recipe than the config's."""
  own = "finetune" if config.trainer == "finetune" else "pretrain"
  pipeline = pipeline or own
  if pipeline != own:
    example = "base_finetune" if pipeline == "finetune" else "base_pretrain"
    raise ValueError(f"--pipeline={pipeline} times the {pipeline} input with the config's data "
                     f"settings, but {config.trainer!r} configs hold the {own} ones; give a "
                     f"{pipeline} config such as configs/{example}.py.")
  if reference and pipeline == "finetune" and config.task != "finetune":
    raise ValueError(f"config.task={config.task!r}: --reference times mmpretrain's fine-tuning "
                     "input (RandAugment, erasing); give a fine-tuning config such as "
                     "configs/base_finetune.py, or drop --reference.")
  return pipeline


# ------------------------------------------------------------------ ours
def our_batches(config, pipeline: str):
  """A fresh iterator over the config's training batches."""
  from mixmim_jax import data  # pylint: disable=import-outside-toplevel
  from mixmim_jax.data import labeled  # pylint: disable=import-outside-toplevel
  make = data.pretrain_batches if pipeline == "pretrain" else labeled.train_batches
  return make(config.data, local_batch_size=config.batch_size, seed=0)


# ------------------------------------------------------------------ reference
def _quiet_opencv(_worker_id):
  # What mmengine's Runner sets before it forks its workers (set_multi_processing).
  try:
    import cv2  # pylint: disable=import-outside-toplevel
    cv2.setNumThreads(0)
  except ImportError:
    pass


class ReferenceLoader:
  """mmpretrain's MixMIM `train_pipeline` (pretraining or fine-tuning recipe) over
  the folder's files, in a torch DataLoader with `workers` processes.

  Left out, as they run on the accelerator or in the model: its data_preprocessor
  (normalisation, BGR -> RGB; ours too normalises on the device, see pixels.py,
  so both deliver uint8 batches) and the fine-tuning
  recipe's mixup / cutmix (ours too: the trainer mixes)."""

  def __init__(self, data_config, pipeline: str, batch: int, workers: int):
    from mixmim_jax.tools import torch_reference  # pylint: disable=import-outside-toplevel
    torch_reference.import_mmpretrain()
    # pylint: disable=import-outside-toplevel
    import mmpretrain
    import mmpretrain.datasets  # noqa: F401  (registers the datasets and transforms)
    import torch
    from mmengine.dataset import InfiniteSampler
    from mmengine.registry import FUNCTIONS
    from mmpretrain.registry import DATASETS
    # pylint: enable=import-outside-toplevel
    name = (torch_reference.PRETRAIN_RECIPE if pipeline == "pretrain"
            else torch_reference.FINETUNE_RECIPE)
    loader_cfg = torch_reference.recipe(name).train_dataloader.to_dict()
    steps = copy.deepcopy(loader_cfg["dataset"]["pipeline"])
    for step in steps:                   # our --image-size, if it is not the recipe's 224
      if step["type"] == "RandomResizedCrop":
        step["scale"] = data_config.image_size
    # The recipe's dataset is "ImageNet" (an annotation file); CustomDataset, its
    # base class, scans an ImageFolder-style tree instead.
    self.dataset = DATASETS.build(dict(type="CustomDataset", data_root=data_config.folder,
                                       data_prefix=data_config.split, pipeline=steps))
    # As mmengine's Runner: the recipe's collate_fn, else pseudo_collate.
    collate_cfg = dict(loader_cfg.get("collate_fn") or dict(type="pseudo_collate"))
    collate = FUNCTIONS.get(collate_cfg.pop("type"))
    self._make_loader = functools.partial(
        torch.utils.data.DataLoader, self.dataset, batch_size=batch, num_workers=workers,
        collate_fn=functools.partial(collate, **collate_cfg), drop_last=True,
        worker_init_fn=_quiet_opencv, multiprocessing_context="fork")
    self._sampler = InfiniteSampler
    self.recipe = name
    self.collate = collate.__name__
    self.workers = workers
    self.transforms = [type(t).__name__ for t in self.dataset.pipeline.transforms]
    self.transform_modules = [type(t).__module__ for t in self.dataset.pipeline.transforms]
    self.framework = f"mmpretrain {mmpretrain.__version__} / torch {torch.__version__}"

  def batches(self):
    """A fresh iterator (and workers). Its sampler is new too: closing an iterator
    closes the endless index generator an InfiniteSampler holds."""
    # Endless shuffled indices (mmengine's sampler for iteration-based training),
    # so a round never waits for an epoch boundary.
    loader = self._make_loader(sampler=self._sampler(self.dataset, seed=0))
    with warnings.catch_warnings():
      # Forked as mmengine forks them; the workers run Pillow, OpenCV and NumPy
      # only, never JAX, whose threads the warning is about.
      warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called",
                              category=RuntimeWarning)
      return iter(loader)


# ------------------------------------------------------------------ timing
def time_round(make_iterator, steps: int, warmup: int) -> list[float]:
  """Seconds per batch of `steps` batches after `warmup`, from a fresh iterator
  that is closed afterwards (its threads or worker processes end with it)."""
  it = make_iterator()
  for _ in range(warmup):
    next(it)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    next(it)
    times.append(time.perf_counter() - t0)
  del it
  return times


def _side(times_per_round: list[list[float]], batch: int, threads: int) -> dict:
  per_round = [batch * len(t) / sum(t) for t in times_per_round]
  per_s = statistics.median(per_round)
  return dict(batch_time=summary([x for t in times_per_round for x in t]),
              round_images_per_s=per_round, images_per_s=per_s,
              images_per_s_per_core=per_s / threads)


def benchmark_input(config, steps: int, warmup: int, pipeline: str | None = None,
                    reference: bool = False, rounds: int = 1, profile: bool = False) -> dict:
  """Images/s of our host pipeline (and of mmpretrain's with `reference`), in
  alternating rounds; returns the JSON record."""
  from mixmim_jax import data  # pylint: disable=import-outside-toplevel
  pipeline = resolve_pipeline(config, pipeline, reference)
  needs_files = reference or profile
  if needs_files and config.data.source != "folder":
    raise ValueError(f"data.source={config.data.source!r}: --reference and --profile-input "
                     "read image files; give --synthetic-jpegs=N or a folder source "
                     "(--config.data.source=folder --config.data.folder=DIR).")
  if warmup < 1:
    raise ValueError(f"--warmup={warmup}; the input benchmark needs at least 1 untimed batch "
                     "per round (it takes the pipeline's start-up).")
  threads = cores()
  info = data.describe(config.data, labels=pipeline == "finetune")
  result = dict(kind="input_pipeline", pipeline=pipeline, source=info.source, where=info.where,
                num_examples=info.num_examples, image_size=config.data.image_size,
                batch=config.batch_size, host_threads=threads,
                num_parallel_calls=config.data.num_parallel_calls, steps=steps,
                warmup=warmup, load_start=load())
  ref = (ReferenceLoader(config.data, pipeline, config.batch_size, threads)
         if reference else None)
  rounds = max(1, rounds if ref else 1)
  ours, theirs = [], []
  for _ in range(rounds):
    ours.append(time_round(lambda: our_batches(config, pipeline), steps, warmup))
    if ref:
      theirs.append(time_round(ref.batches, steps, warmup))
  result["rounds"] = rounds
  result.update(_side(ours, config.batch_size, threads))
  if ref:
    result["reference"] = dict(
        framework=ref.framework, recipe=ref.recipe, transforms=ref.transforms,
        transform_modules=ref.transform_modules, collate=ref.collate, workers=ref.workers,
        **_side(theirs, config.batch_size, threads))
    result["ours_over_reference"] = result["images_per_s"] / result["reference"]["images_per_s"]
    result["round_ratios"] = [a / b for a, b in zip(result["round_images_per_s"],
                                                    result["reference"]["round_images_per_s"])]
    if steps < 4 * threads:
      result["note"] = (f"--steps={steps} is under 4 x {threads} cores: the reference's "
                        f"figure may be off by up to {threads}/{steps} (its workers deliver "
                        "whole batches in bursts).")
  if profile:
    result["profile_input"] = profile_stages(config, pipeline, folder_files(config.data))
  result["load_end"] = load()
  return result


# ------------------------------------------------------------------ profile
class _OneCore:
  """Every thread of this process pinned to one CPU inside `with` (Linux), so a
  stage's cost is what it takes on one core whatever threads TensorFlow starts."""

  def __enter__(self):
    try:
      self.before = os.sched_getaffinity(0)
    except AttributeError:
      return self
    self._pin({min(self.before)})
    return self

  def _pin(self, cpus):
    try:
      tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
      tids = [0]
    for tid in tids:
      try:
        os.sched_setaffinity(tid, cpus)
      except OSError:    # a thread that ended meanwhile
        pass

  def __exit__(self, *exc):
    if hasattr(self, "before"):
      self._pin(self.before)


def _time_stage(fn, paths, group=8) -> dict:
  """Per-image cost on one core of `fn(path, key)` over `paths` (once, after a
  first group), in a sequential tf.data map with no intra-op parallelism: one
  iterator, so no per-pass costs, and nothing is computed ahead of the clock."""
  from mixmim_jax.data import seeds  # pylint: disable=import-outside-toplevel
  from mixmim_jax.data.tf_cpu import tf  # pylint: disable=import-outside-toplevel

  ds = tf.data.Dataset.from_tensor_slices(paths).repeat().enumerate().map(
      lambda i, p: fn(p, seeds.example_key(0, 0, i, False)))
  # One value of each output is kept, so no stage's work can be pruned away;
  # groups keep Python's cost per image out of the figure.
  ds = ds.map(lambda x: tf.cast(tf.reshape(x, [-1])[0], tf.float32)).batch(group)
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  it = iter(ds.with_options(options))
  next(it)                               # first use of the kernels
  steps = max(1, len(paths) // group)
  return _per_image(_clock(lambda: [next(it) for _ in range(steps)]), steps * group)


def _clock(fn) -> dict:
  cpu0, t0 = time.process_time(), time.perf_counter()
  fn()
  return dict(wall=time.perf_counter() - t0, cpu=time.process_time() - cpu0)


def _per_image(t: dict, images: int) -> dict:
  """On one pinned core the CPU time is the stage's cost even while other
  processes take turns on that core; the wall time is not."""
  return dict(wall_ms_per_image=1e3 * t["wall"] / images,
              cpu_ms_per_image=1e3 * t["cpu"] / images,
              images_per_s_per_core=images / t["cpu"], cpu_over_wall=t["cpu"] / t["wall"])


def profile_stages(config, pipeline: str, files: list[str]) -> dict:
  """Our pipeline's per-image cost, stage by stage, on one core: what limits it."""
  # pylint: disable=import-outside-toplevel
  from mixmim_jax.data import augment, labeled, seeds
  from mixmim_jax.data.tf_cpu import tf
  # pylint: enable=import-outside-toplevel
  cfg = config.data

  def crop(partial_jpeg_decode):
    c = copy.deepcopy(cfg)
    c.partial_jpeg_decode = partial_jpeg_decode

    def fn(path, key):
      keys = tf.random.experimental.stateless_split(key, 2, alg=seeds.ALG)
      return augment.crop_resize_flip(path, keys[0], keys[1], "path", c)
    return fn

  view = augment.pretrain_view if pipeline == "pretrain" else labeled.train_view
  stages = [
      ("read", "read the file", lambda p, k: tf.strings.length(tf.io.read_file(p))),
      ("decode", "read + decode", lambda p, k: augment.decode(tf.io.read_file(p))),
      ("crop", "read + decode + crop + resize + flip", crop(False)),
      ("partial", "the same with partial decode (decode_and_crop_jpeg)", crop(True)),
      ("view", f"the whole per-image view ({view.__name__})",
       lambda p, k: view(p, k, "path", cfg)),
  ]
  paths = (files * (32 // len(files) + 1))[:max(32, len(files))]  # a few files: read again
  out = dict(images=len(paths), stages=[])
  # The whole pipeline at the config's batch (its costs per batch are part of
  # the answer): after 4 batches (more than it keeps in flight with one parallel
  # call: 2 prefetched + 1 in the making) it runs steadily; 12 or more are timed.
  single = copy.deepcopy(config)
  single.data.num_parallel_calls = 1
  single.batch_size = batch = min(config.batch_size, len(files))
  steps = max(12, len(paths) // batch)

  def whole_pipeline():
    it = our_batches(single, pipeline)
    for _ in range(4):
      next(it)
    return _per_image(_clock(lambda: [next(it) for _ in range(steps)]), steps * batch)

  with _OneCore():
    for key, name, fn in stages:
      out["stages"].append(dict(key=key, name=name, **_time_stage(fn, paths)))
    cost = whole_pipeline()
    floor = library_floor(cfg, paths)
  out["stages"].append(dict(key="pipeline", name="the whole tf.data pipeline, 1 parallel call",
                            **cost))
  out["stages"].append(dict(key="floor", name="the library calls alone, in a plain loop",
                            **floor))
  return out


def library_floor(data_config, paths: list[str]) -> dict:
  """Per-image cost of the library calls that make a pretraining view -- read
  the file, libjpeg's decode (through Pillow: the same islow IDCT, and the same
  pixels, as TensorFlow's and OpenCV's), the crop, Pillow's resize, the flip --
  in a plain Python loop with nothing around them. mmpretrain's pipeline and
  ours both make these calls, so neither can make views faster per core."""
  # pylint: disable=import-outside-toplevel
  from PIL import Image
  from mixmim_jax.data import augment
  from mixmim_jax.data import config as config_lib
  # pylint: enable=import-outside-toplevel
  rng = np.random.default_rng(0)
  sizes = []
  for path in paths:
    with Image.open(path) as im:                 # the header only
      sizes.append(im.size)
  width, height = (np.array(v) for v in zip(*sizes))
  u = rng.random((len(paths), 4, augment.ATTEMPTS))
  top, left, crop_h, crop_w = (np.asarray(v) for v in augment.crop_window_from_uniforms(
      u, height, width, tuple(data_config.crop_scale), tuple(data_config.crop_ratio)))
  flips = (rng.random(len(paths)) < 0.5) & bool(data_config.hflip)
  size = data_config.image_size
  resample = augment.pillow_filter(config_lib.INTERPOLATIONS[data_config.interpolation])

  def views(indices):
    for i in indices:
      pillow_view(paths[i], (top[i], left[i], crop_h[i], crop_w[i]), flips[i], size, resample)

  views(range(min(8, len(paths))))              # first use of the decoders
  return _per_image(_clock(lambda: views(range(len(paths)))), len(paths))


def pillow_view(path: str, window, flip: bool, size: int, resample) -> np.ndarray:
  """One pretraining view made by the library calls alone: uint8 [size, size, 3]
  from the file, the crop window (top, left, height, width) and the flip."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with open(path, "rb") as f:
    im = Image.open(io.BytesIO(f.read()))
  im.load()                                      # the decode
  if im.mode != "RGB":
    im = im.convert("RGB")
  top, left, height, width = window
  im = im.crop((left, top, left + width, top + height)).resize((size, size), resample)
  if flip:
    im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(im)


# ------------------------------------------------------------------ printing
def _stage_lines(p: dict, reference_per_core: float | None = None) -> list[str]:
  lines = [f"profile of ours: each stage alone on one pinned core, {p['images']} images "
           "(CPU ms per image, images/s per core; wall ms where the core was shared):"]
  for s in p["stages"]:
    lines.append(f"  {s['name']:<56} {s['cpu_ms_per_image']:7.2f} ms "
                 f"{s['images_per_s_per_core']:7.1f}/s  (wall {s['wall_ms_per_image']:.2f} ms, "
                 f"CPU/wall {s['cpu_over_wall']:.2f})")
  ms = {s["key"]: s["cpu_ms_per_image"] for s in p["stages"]}
  shares = {"read + decode": ms["decode"], "crop + resize + flip": ms["crop"] - ms["decode"],
            "rest of the view": ms["view"] - ms["crop"],
            "tf.data around it": ms["pipeline"] - ms["view"]}
  lines.append("  share of the whole pipeline's CPU time: " + ", ".join(
      f"{k} {100 * v / ms['pipeline']:.0f} %" for k, v in shares.items()))
  lines.append(f"  the library calls alone (read, decode, crop, resize, flip) are "
               f"{100 * ms['floor'] / ms['pipeline']:.0f} % of the whole pipeline's CPU time")
  if reference_per_core:
    ref_ms = 1e3 / reference_per_core
    lines.append(f"  the reference spends {ref_ms:.2f} ms of a core per image: any pipeline making "
                 f"these pixels is at most {ref_ms / ms['floor']:.2f}x as fast per core "
                 f"(2x would need {ref_ms / 2:.2f} ms per image, the calls alone take "
                 f"{ms['floor']:.2f})")
  return lines


def report_lines(r: dict) -> list[str]:
  b = r["batch_time"]
  lines = [f"input pipeline ({r['pipeline']}): {r['source']} ({r['num_examples']} images at "
           f"{r['where']}), {r['image_size']} px, batch {r['batch']}, {r['host_threads']} CPU "
           f"cores; load average at start {r['load_start']}, at end {r['load_end']}",
           f"  ours (tf.data, num_parallel_calls={r['num_parallel_calls']}): batch time median "
           f"{b['median_s'] * 1e3:.1f} ms (min {b['min_s'] * 1e3:.1f}, max "
           f"{b['max_s'] * 1e3:.1f}, n={b['n']}); {r['images_per_s']:.1f} images/s = "
           f"{r['images_per_s_per_core']:.1f} images/s per core (median of {r['rounds']} "
           f"round(s) of {r['steps']} batch(es) after {r['warmup']})"]
  if "reference" in r:
    ref, rb = r["reference"], r["reference"]["batch_time"]
    lines += [f"  reference {ref['framework']} ({ref['recipe']}: "
              f"{' -> '.join(ref['transforms'])}; DataLoader, {ref['workers']} workers, "
              f"{ref['collate']}): batch time median {rb['median_s'] * 1e3:.1f} ms (min "
              f"{rb['min_s'] * 1e3:.1f}, max {rb['max_s'] * 1e3:.1f}, n={rb['n']}); "
              f"{ref['images_per_s']:.1f} images/s = {ref['images_per_s_per_core']:.1f} "
              "images/s per core",
              f"  ours / reference images/s: {r['ours_over_reference']:.3f} (per round: "
              + ", ".join(f"{x:.3f}" for x in r["round_ratios"]) + "); both end in uint8 "
              "(normalised on the device)"]
  if "note" in r:
    lines.append("  note: " + r["note"])
  if "profile_input" in r:
    lines += _stage_lines(r["profile_input"],
                          r.get("reference", {}).get("images_per_s_per_core"))
  return lines
