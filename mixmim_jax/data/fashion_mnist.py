"""Reading IDX files (the MNIST / Fashion-MNIST format) with NumPy.

Debian's `dataset-fashion-mnist` installs train-images-idx3-ubyte.gz and
t10k-images-idx3-ubyte.gz (plus the label files) in /usr/share/datasets/fashion-mnist.
"""

import gzip

import numpy as np
from etils import epath

# IDX type byte -> big-endian NumPy dtype (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
INSTALL_HINT = "apt-get install dataset-fashion-mnist"


def _open(path):
  # Sniff the gzip magic rather than trusting the suffix: some mirrors ship the
  # files already decompressed but keep the name.
  f = epath.Path(path).open("rb")
  if f.read(2) == b"\x1f\x8b":
    f.seek(0)
    return gzip.GzipFile(fileobj=f, mode="rb")
  f.seek(0)
  return f


def _parse_header(f, path):
  magic = f.read(4)
  if len(magic) != 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_DTYPES:
    raise ValueError(f"{path} is not an IDX file (magic bytes {magic!r}).")
  ndim = magic[3]
  shape = tuple(int(d) for d in np.frombuffer(f.read(4 * ndim), ">u4"))
  if len(shape) != ndim:
    raise ValueError(f"{path}: truncated IDX header.")
  return np.dtype(_IDX_DTYPES[magic[2]]), shape


def read_idx_shape(path) -> tuple:
  """The array shape stored in an IDX file, reading only its header."""
  with _open(path) as f:
    return _parse_header(f, path)[1]


def read_idx(path) -> np.ndarray:
  """The whole array in an IDX file (gzip or plain), in native byte order."""
  with _open(path) as f:
    dtype, shape = _parse_header(f, path)
    data = f.read()
  count = int(np.prod(shape)) if shape else 1
  if len(data) != count * dtype.itemsize:
    raise ValueError(
        f"{path}: header says shape {shape} ({count * dtype.itemsize} bytes) but "
        f"{len(data)} bytes follow.")
  return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def images_path(directory: str, split: str) -> str:
  """The images file of `split` ("train" or "test") in `directory`."""
  if split not in _SPLIT_PREFIX:
    raise ValueError(f"fashion_mnist split={split!r}; expected one of {sorted(_SPLIT_PREFIX)}.")
  return _find(directory, f"{_SPLIT_PREFIX[split]}-images-idx3-ubyte", f"{split} images")


def labels_path(directory: str, split: str) -> str:
  """The labels file of `split` ("train" or "test") in `directory`."""
  if split not in _SPLIT_PREFIX:
    raise ValueError(f"fashion_mnist split={split!r}; expected one of {sorted(_SPLIT_PREFIX)}.")
  return _find(directory, f"{_SPLIT_PREFIX[split]}-labels-idx1-ubyte", f"{split} labels")


def _find(directory: str, name: str, what: str) -> str:
  candidates = [str(epath.Path(directory) / (name + suffix)) for suffix in (".gz", "")]
  for path in candidates:
    if epath.Path(path).is_file():
      return path
  raise FileNotFoundError(
      f"Fashion-MNIST {what} not found: looked for {' and '.join(candidates)}. "
      f"Install them with `{INSTALL_HINT}` or set data.fashion_mnist_dir.")


def load_images(directory: str, split: str) -> np.ndarray:
  """uint8 [N, 28, 28] grey images of one split."""
  path = images_path(directory, split)
  images = read_idx(path)
  if images.ndim != 3 or images.dtype != np.uint8:
    raise ValueError(f"{path}: expected uint8 [N, H, W] images, got {images.dtype} {images.shape}.")
  return images


def load_labels(directory: str, split: str, count: int) -> np.ndarray:
  """int32 [N] classes of one split, checked against its `count` images."""
  path = labels_path(directory, split)
  labels = read_idx(path)
  if labels.shape != (count,):
    raise ValueError(f"{path}: {labels.shape[0] if labels.ndim else 0} labels for "
                     f"{count} images.")
  return labels.astype(np.int32)
