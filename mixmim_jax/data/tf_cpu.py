"""TensorFlow for the input pipeline only: quiet, and kept off the accelerators.

Every module of this package imports `tf` from here, so the environment is set
before TensorFlow first loads and tf.data can never claim a GPU that JAX needs.
(TPUs are invisible to tensorflow-cpu already.)
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402


def _hide_accelerators() -> None:
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):
    # RuntimeError: TF already initialized its devices (someone imported it
    # first); there is nothing left to hide then, and failing would be worse.
    pass


_hide_accelerators()

__all__ = ["tf"]
