"""Tests of the input pipeline: numbers, not wiring. Tiny images keep it fast."""

import gzip
import logging
import os

import numpy as np
import pytest

from mixmim_jax import data
from mixmim_jax.data import augment
from mixmim_jax.data import fashion_mnist
from mixmim_jax.data._tf import tf

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
  """Back to the 0..255 grid the pipeline rounds to before normalizing."""
  return batch * STD + MEAN


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
