"""Tests of the input pipeline: numbers, not wiring. Tiny images keep it fast."""

import gzip
import logging
import os

import numpy as np
import pytest

from mixmim_jax import data
from mixmim_jax.data import augment
from mixmim_jax.data import fashion_mnist
from mixmim_jax.data.tf_cpu import tf

MEAN = np.array(data.default_config().mean, np.float32)
STD = np.array(data.default_config().std, np.float32)
REAL_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def _write_idx(path, array, compress):
  codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
  header = bytes([0, 0, codes[array.dtype], array.ndim])
  header += np.array(array.shape, ">u4").tobytes()
  payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
  with (gzip.open if compress else open)(path, "wb") as f:
    f.write(payload)


def _pixels(batch):
  """The pipeline's uint8 pixels as floats (the device normalises them)."""
  assert batch.dtype == np.uint8, batch.dtype
  return batch.astype(np.float32)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  """40 constant 28x28 images whose grey value is their index: after any crop and
  resize a pixel still tells which example it came from."""
  d = tmp_path_factory.mktemp("fmnist")
  images = np.broadcast_to(np.arange(40, dtype=np.uint8)[:, None, None], (40, 28, 28))
  _write_idx(d / "train-images-idx3-ubyte.gz", np.ascontiguousarray(images), compress=True)
  return str(d)


def _idx_config(idx_dir, **overrides):
  c = data.default_config()
  c.source, c.fashion_mnist_dir, c.image_size = "fashion_mnist", idx_dir, 32
  c.update(overrides)
  return c


def _take(it, n):
  return [next(it)["image"] for _ in range(n)]


def _example_ids(batch):
  """The example each image of a batch of constant images came from."""
  values = np.round(_pixels(batch)[..., 0])
  assert (values == values[:, :1, :1]).all()
  return values[:, 0, 0].astype(int)


# --- configuration and errors -------------------------------------------------

def test_image_size_must_be_multiple_of_32():
  c = data.default_config()
  c.image_size = 100
  with pytest.raises(ValueError, match="100"):
    data.describe(c)


def test_missing_folder_names_where_it_looked(tmp_path):
  c = data.default_config()
  c.source, c.folder = "folder", str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    data.describe(c)


def test_missing_idx_files_give_install_hint(tmp_path):
  c = _idx_config(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
    data.pretrain_batches(c, local_batch_size=2, seed=0)
  assert str(tmp_path) in str(e.value)


def test_unknown_tfds_name_and_missing_data_dir(tmp_path):
  c = data.default_config()
  c.name = "no_such_dataset_xyz"
  with pytest.raises(ValueError, match="no_such_dataset_xyz"):
    data.describe(c)
  c.name, c.data_dir = "mnist", str(tmp_path / "empty_tfds")
  with pytest.raises(FileNotFoundError, match="empty_tfds"):
    data.describe(c)


# --- the crop window sampler --------------------------------------------------

def test_crop_window_bounds_and_distribution():
  rng = np.random.default_rng(0)
  n = 20000
  heights = rng.integers(60, 500, n)
  # Aspect within the ratio range, so that even the fallback (the whole image)
  # obeys the scale bounds; torchvision's fallback on a long strip does not.
  widths = np.round(heights * rng.uniform(0.8, 1.25, n)).astype(int)
  u = rng.random((n, 4, augment.ATTEMPTS))
  top, left, ch, cw = (np.asarray(v) for v in augment.crop_window_from_uniforms(
      u, heights, widths, (0.2, 1.0), (3 / 4, 4 / 3)))
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + ch <= heights).all() and (left + cw <= widths).all()
  area = ch * cw / (heights * widths)
  # Sides are rounded to whole pixels, which moves the area by < 1/30 at >= 60 px.
  assert area.min() >= 0.2 * (1 - 1 / 30) and area.max() <= 1.0
  aspect = cw / ch
  assert aspect.min() >= 0.75 * (1 - 1 / 30) and aspect.max() <= 4 / 3 * (1 + 1 / 30)
  # First attempt accepted unless it does not fit: the area fraction is then
  # close to uniform on [0.2, 1] but cut at the top; its median sits near 0.55.
  assert 0.5 < np.median(area) < 0.6


def test_crop_window_falls_back_to_central_crop():
  # A 10x1000 strip fits no crop of ratio <= 4/3 and area >= 20%.
  u = np.full((4, augment.ATTEMPTS), 0.5)
  window = [int(v) for v in augment.crop_window_from_uniforms(u, 10, 1000, (0.2, 1.0),
                                                              (3 / 4, 4 / 3))]
  assert window == [0, (1000 - 13) // 2, 10, 13]  # round(10 * 4/3) = 13


def test_crop_window_sampler_is_a_function_of_the_key():
  key = tf.constant([3, 4], tf.int64)
  a = [int(v) for v in augment.sample_crop_window(key, 300, 200, (0.2, 1.0), (0.75, 4 / 3))]
  b = [int(v) for v in augment.sample_crop_window(key, 300, 200, (0.2, 1.0), (0.75, 4 / 3))]
  assert a == b


def test_jpeg_view_equals_whole_decode_then_crop():
  # Pillow decodes the whole JPEG before cropping; so must we, to the bit.
  rng = np.random.default_rng(2)
  smooth = tf.image.resize(rng.integers(0, 256, (1, 30, 40, 3)).astype(np.float32), [90, 120])
  encoded = tf.io.encode_jpeg(tf.cast(smooth[0], tf.uint8), quality=90)
  pixels = tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")
  c = data.default_config()
  c.image_size = 32
  for s in range(5):
    key = tf.constant([s, 7], tf.int64)
    np.testing.assert_array_equal(augment.pretrain_view(encoded, key, "encoded", c),
                                  augment.pretrain_view(pixels, key, "pixels", c))


@pytest.mark.parametrize("crop, size", [
    ((40, 60, 300, 400), (224, 224)),      # shrink, other aspect ratio
    ((100, 100, 90, 120), (224, 224)),     # enlarge
    ((0, 0, 512, 512), (96, 160)),         # shrink one side more than the other
    ((0, 0, 100, 400), (224, 224)),        # enlarge one side, shrink the other
])
def test_resize_is_pillows_bicubic(crop, size):
  """mmpretrain's crops are resized by Pillow (backend='pillow', bicubic): so
  are ours, to the bit (TensorFlow's resize in Pillow's two passes was up to
  5 levels off in the last case)."""
  pil_image = pytest.importorskip("PIL.Image")
  photo = pytest.importorskip("skimage.data").astronaut()
  top, left, h, w = crop
  region = photo[top:top + h, left:left + w]
  ours = augment.resize(region, *size).numpy()
  theirs = np.asarray(pil_image.fromarray(region).resize(size[::-1], pil_image.BICUBIC))
  assert ours.dtype == np.uint8
  np.testing.assert_array_equal(ours, theirs)


# --- IDX files ----------------------------------------------------------------

@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_roundtrip(tmp_path, compress):
  array = np.arange(2 * 3 * 5, dtype=np.int32).reshape(2, 3, 5) - 7
  path = tmp_path / "a.idx"
  _write_idx(path, array, compress)
  np.testing.assert_array_equal(fashion_mnist.read_idx(path), array)
  assert fashion_mnist.read_idx_shape(path) == (2, 3, 5)


def test_idx_reader_rejects_other_files(tmp_path):
  path = tmp_path / "x"
  path.write_bytes(b"\x89PNG....")
  with pytest.raises(ValueError, match="not an IDX file"):
    fashion_mnist.read_idx(path)


@pytest.mark.skipif(not os.path.isdir(REAL_FASHION_MNIST),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_files():
  train = fashion_mnist.load_images(REAL_FASHION_MNIST, "train")
  assert train.shape == (60000, 28, 28) and train.dtype == np.uint8
  assert 70 < train.mean() < 75  # Fashion-MNIST's known mean pixel, 72.94
  path = fashion_mnist.images_path(REAL_FASHION_MNIST, "test")
  assert fashion_mnist.read_idx_shape(path) == (10000, 28, 28)


# --- the pipeline on Fashion-MNIST-format files --------------------------------

def test_shapes_and_dtype(idx_dir):
  it = data.pretrain_batches(_idx_config(idx_dir), local_batch_size=8, seed=0)
  batch = next(it)
  assert set(batch) == {"image"}
  image = batch["image"]
  assert image.shape == (8, 32, 32, 3) and image.dtype == np.uint8
  # A constant grey image stays constant through crop, resize and flip: each
  # pixel is its example's index, on all three channels.
  assert (image <= 39).all()
  assert (np.ptp(image, axis=-1) == 0).all()  # grey -> equal RGB
  assert (np.ptp(image.reshape(8, -1), axis=1) == 0).all()


def test_device_normalization_equals_the_hosts():
  """pixels.normalize (in the compiled step) gives what (v - mean) / std in
  float32 gives, for every uint8 value and channel; floats pass unchanged."""
  import jax  # pylint: disable=import-outside-toplevel
  from mixmim_jax.model import pixels  # pylint: disable=import-outside-toplevel
  values = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None], (256, 3))[None, None]
  ours = np.asarray(jax.jit(pixels.normalize, static_argnums=(1, 2))(
      values, tuple(MEAN.tolist()), tuple(STD.tolist())))
  host = (values.astype(np.float32) - MEAN) / STD
  assert ours.dtype == np.float32
  np.testing.assert_array_max_ulp(ours, host, maxulp=1)
  floats = host * 2
  assert pixels.normalize(floats, MEAN, STD) is floats


def test_pixel_statistics_on_noise(tmp_path):
  # Uniform noise images: pixels spanning most of 0..255.
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (16, 28, 28), dtype=np.uint8)
  _write_idx(tmp_path / "train-images-idx3-ubyte", images, compress=False)  # plain, not gz
  it = data.pretrain_batches(_idx_config(str(tmp_path)), local_batch_size=16, seed=0)
  pixels = _pixels(next(it)["image"])
  # Bicubic upsampling of uniform noise keeps the mean (127.5) and shrinks spread.
  assert abs(pixels.mean() - 127.5) < 5
  assert 20 < pixels.std() < 74


def test_epoch_is_a_permutation_and_seeds_differ(idx_dir):
  c = _idx_config(idx_dir)
  ids = np.concatenate([_example_ids(b) for b in
                        _take(data.pretrain_batches(c, local_batch_size=8, seed=0), 5)])
  assert sorted(ids) == list(range(40))
  ids1 = np.concatenate([_example_ids(b) for b in
                         _take(data.pretrain_batches(c, local_batch_size=8, seed=1), 5)])
  assert not np.array_equal(ids, ids1)


def test_same_seed_same_batches_whatever_the_parallelism(idx_dir):
  a = _take(data.pretrain_batches(_idx_config(idx_dir), local_batch_size=8, seed=5), 7)
  b = _take(data.pretrain_batches(_idx_config(idx_dir, num_parallel_calls=1, prefetch=1),
                                  local_batch_size=8, seed=5), 7)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  c = _take(data.pretrain_batches(_idx_config(idx_dir), local_batch_size=8, seed=6), 1)
  assert not np.array_equal(a[0], c[0])


def test_start_step_resumes_exactly(idx_dir):
  c = _idx_config(idx_dir)
  fresh = _take(data.pretrain_batches(c, local_batch_size=8, seed=2), 8)
  # 40 examples / 8 = 5 steps per epoch: resume mid-epoch and run across the
  # epoch boundary.
  resumed = _take(data.pretrain_batches(c, local_batch_size=8, seed=2, start_step=3), 5)
  for x, y in zip(fresh[3:], resumed):
    np.testing.assert_array_equal(x, y)


def test_processes_read_disjoint_shards_covering_the_set(idx_dir):
  c = _idx_config(idx_dir)
  seen = []
  for p in range(2):
    it = data.pretrain_batches(c, local_batch_size=4, seed=0, process_index=p, process_count=2)
    seen.append(np.concatenate([_example_ids(b) for b in _take(it, 5)]))  # one epoch
  assert len(set(seen[0])) == 20 and len(set(seen[1])) == 20
  assert not set(seen[0]) & set(seen[1])
  assert set(seen[0]) | set(seen[1]) == set(range(40))


# --- an image folder with a corrupt file ----------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """root/train/{a,b}/: 15 small PNG and JPEG images and one corrupt .jpg."""
  root = tmp_path_factory.mktemp("folder")
  rng = np.random.default_rng(0)
  for i in range(15):
    d = root / "train" / "ab"[i % 2]
    d.mkdir(parents=True, exist_ok=True)
    image = tf.constant(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8))
    if i % 3:
      (d / f"{i:02d}.png").write_bytes(tf.io.encode_png(image).numpy())
    else:
      (d / f"{i:02d}.jpg").write_bytes(tf.io.encode_jpeg(image).numpy())
  (root / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  return str(root)


def _folder_config(root, **overrides):
  c = data.default_config()
  c.source, c.folder, c.image_size = "folder", root, 32
  c.update(overrides)
  return c


def test_corrupt_file_is_skipped_counted_and_logged_once(folder, caplog):
  info = data.describe(_folder_config(folder))
  assert info.num_examples == 16 and info.source == "folder"
  it = data.pretrain_batches(_folder_config(folder), local_batch_size=4, seed=0)
  with caplog.at_level(logging.WARNING):
    epoch = _take(it, 4)  # 16 files / 4: every file is needed once per epoch
    assert it.skipped == 1
    epoch2 = _take(it, 4)
  assert it.skipped == 2
  assert all(b.shape == (4, 32, 32, 3) for b in epoch + epoch2)
  warnings = [r.getMessage() for r in caplog.records if "broken.jpg" in r.getMessage()]
  assert len(warnings) == 1


def test_corrupt_file_keeps_determinism_and_resume(folder):
  c = _folder_config(folder)
  fresh = _take(data.pretrain_batches(c, local_batch_size=4, seed=3), 6)
  again = _take(data.pretrain_batches(_folder_config(folder, cache=True),
                                      local_batch_size=4, seed=3), 6)
  resumed = _take(data.pretrain_batches(c, local_batch_size=4, seed=3, start_step=2), 4)
  for x, y in zip(fresh, again):
    np.testing.assert_array_equal(x, y)
  for x, y in zip(fresh[2:], resumed):
    np.testing.assert_array_equal(x, y)


# --- TFDS -----------------------------------------------------------------------

def test_tfds_source_on_mock_data():
  import tensorflow_datasets as tfds

  c = data.default_config()
  c.name, c.image_size = "mnist", 32
  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    info = data.describe(c)
    a = _take(data.pretrain_batches(c, local_batch_size=4, seed=0), 5)
    b = _take(data.pretrain_batches(c, local_batch_size=4, seed=0, start_step=3), 2)
  assert info.num_examples == 16 and info.source == "tfds"
  assert all(x.shape == (4, 32, 32, 3) and x.dtype == np.uint8 for x in a)
  np.testing.assert_array_equal(a[3], b[0])
  np.testing.assert_array_equal(a[4], b[1])


def test_tfds_imagenet2012_jpegs_on_mock_data():
  import tensorflow_datasets as tfds

  c = data.default_config()  # imagenet2012, the real recipe's source
  c.image_size = 32
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    it = data.pretrain_batches(c, local_batch_size=4, seed=0, process_index=1, process_count=2)
    batch = next(it)["image"]
  assert batch.shape == (4, 32, 32, 3) and it.skipped == 0


def test_partial_jpeg_decode_option(folder):
  it = data.pretrain_batches(_folder_config(folder, partial_jpeg_decode=True),
                             local_batch_size=4, seed=0)
  assert all(b.shape == (4, 32, 32, 3) for b in _take(it, 4))
  assert it.skipped == 1
