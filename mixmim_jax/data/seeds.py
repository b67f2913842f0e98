"""Stateless seeds: everything random in the pipeline is a pure function of them.

A batch's content therefore depends only on (seed, epoch, example index), never on
thread scheduling or on how far an iterator has run, which is what makes
`start_step` resume and parallel decoding reproducible bit for bit.
"""

from mixmim_jax.data.tf_cpu import tf

# Philox everywhere, named explicitly: "auto_select" may pick another algorithm
# on another device, and then the same seed would give other crops.
ALG = "philox"


def _fold(key, data):
  return tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64), alg=ALG)


def epoch_key(seed, epoch):
  """[2] int64 key of one epoch of one run."""
  base = tf.stack([tf.cast(seed, tf.int64), tf.constant(0x4D69784D494D, tf.int64)])
  return _fold(base, epoch)


def permutation_key(seed, epoch):
  """Key of the epoch's shuffle of example positions."""
  return _fold(epoch_key(seed, epoch), 0)


def shuffle_seed(seed, epoch):
  """Scalar int64 seed for tf.data's buffer shuffle (which takes no key pair)."""
  return tf.random.stateless_uniform(
      [], permutation_key(seed, epoch), minval=0, maxval=2**62, dtype=tf.int64, alg=ALG)


def example_key(seed, epoch, index, spare):
  """Key of one view of one example. `spare` separates a stand-in for an unreadable
  image from the same example's own appearance later in the epoch, so the two are
  different random views."""
  key = _fold(_fold(epoch_key(seed, epoch), 1), index)
  return _fold(key, tf.cast(spare, tf.int64))
