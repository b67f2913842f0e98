"""Default data settings and their validation (one place, so errors read the same)."""

import ml_collections

SOURCES = ("tfds", "folder", "fashion_mnist")
# Names accepted for `interpolation`, mapped to tf.image.resize methods.
INTERPOLATIONS = {
    "bicubic": "bicubic",
    "bilinear": "bilinear",
    "nearest": "nearest",
    "area": "area",
    "lanczos3": "lanczos3",
}


def default_config() -> ml_collections.ConfigDict:
  """The MixMIM pretraining input (mmpretrain 1.2.0 recipe) on ImageNet-1k."""
  c = ml_collections.ConfigDict()
  c.source = "tfds"  # one of SOURCES
  # tfds source: builder name, split, data_dir ("" = the TFDS default).
  c.name = "imagenet2012"
  c.split = "train"  # also the sub-folder of `folder` and the Fashion-MNIST split
  c.data_dir = ""
  c.image_key = "image"  # feature holding the encoded image in a tfds example
  # folder source: root of the tfds.ImageFolder layout root/split/label/*.jpg.
  c.folder = ""
  # fashion_mnist source: the IDX files of Debian's dataset-fashion-mnist.
  c.fashion_mnist_dir = "/usr/share/datasets/fashion-mnist"

  # Augmentation: RandomResizedCrop(224, scale=(0.2, 1.0), bicubic) + flip,
  # then normalization on 0-255 RGB, as in mmpretrain's MixMIM config.
  c.image_size = 224
  c.crop_scale = (0.2, 1.0)
  c.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
  c.interpolation = "bicubic"
  c.hflip = True
  c.mean = (123.675, 116.28, 103.53)
  c.std = (58.395, 57.12, 57.375)

  # Throughput. The shuffle buffer is only used by the tfds source (records are
  # read sequentially); the other sources permute the whole index each epoch.
  c.shuffle_buffer = 25_000
  c.num_parallel_calls = -1  # -1 = tf.data.AUTOTUNE
  c.prefetch = 2  # batches; -1 = AUTOTUNE
  c.cache = False  # keep encoded images in memory after the first read
  # Decode only the crop of a JPEG: less CPU per image, but the crop's edge
  # pixels then differ from Pillow's (see augment.decode_and_random_crop).
  c.partial_jpeg_decode = False
  return c


def labeled_config() -> ml_collections.ConfigDict:
  """The fine-tune input of mmpretrain's MixMIM-B recipe on ImageNet-1k: the
  pretraining input plus labels, RandAugment, erasing and the evaluation view."""
  c = default_config()
  c.crop_scale = (0.08, 1.0)
  c.eval_split = "validation"      # "test" for Fashion-MNIST, "val" for a folder
  c.label_key = "label"            # the tfds feature holding the class
  c.eval_resize = 256              # short side before the centre crop
  c.randaugment = True
  c.randaugment_ops = 2
  c.randaugment_magnitude = 9.0
  c.randaugment_std = 0.5
  c.erase_prob = 0.25
  # Keep this fraction of each class's training examples (a fixed, seed-free
  # choice, so runs with different seeds see the same labelled subset).
  c.label_fraction = 1.0
  return c


def validate(config) -> None:
  """Raises ValueError with the offending value for a config that cannot work."""
  if config.source not in SOURCES:
    raise ValueError(f"data.source={config.source!r}; expected one of {SOURCES}.")
  size = config.image_size
  if not isinstance(size, int) or size <= 0 or size % 32:
    raise ValueError(
        f"data.image_size={size!r}; expected a positive multiple of 32 (the "
        "MixMIM mask lives on the 1/32 grid), e.g. 224.")
  lo, hi = config.crop_scale
  if not 0 < lo <= hi <= 1:
    raise ValueError(f"data.crop_scale={tuple(config.crop_scale)}; expected 0 < lo <= hi <= 1.")
  lo, hi = config.crop_ratio
  if not 0 < lo <= hi:
    raise ValueError(f"data.crop_ratio={tuple(config.crop_ratio)}; expected 0 < lo <= hi.")
  if config.interpolation not in INTERPOLATIONS:
    raise ValueError(
        f"data.interpolation={config.interpolation!r}; expected one of "
        f"{sorted(INTERPOLATIONS)}.")
  if len(config.mean) != 3 or len(config.std) != 3 or min(config.std) <= 0:
    raise ValueError(
        f"data.mean={tuple(config.mean)}, data.std={tuple(config.std)}; expected "
        "three RGB values each, std > 0.")
