"""Block stacks run as a scan compute what the unrolled blocks compute: same
parameters (names and values), outputs and gradients; stochastic depth still
drops whole samples with each block's own rate. The attention's shared-bias add
(whose gradient is written as a matrix-vector product) equals the plain one, and
its softmax (with torch's derivative) equals torch's."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mixmim_jax.model import api
from mixmim_jax.model.arch import model_config
from mixmim_jax.model.decoder import MixMIMPretrainModel
from mixmim_jax.model.encoder import MixMIMClassifier
from mixmim_jax.model.layers import DropPath, add_shared_bias, softmax
from mixmim_jax.model.masking import MASK_LOGIT

# Every stack deeper than one block, so every stack is scanned.
SMALL = model_config("base", img_size=64, embed_dim=32, depths=(2, 2, 3, 2),
                     num_heads=(1, 2, 4, 8), window_sizes=(8, 8, 4, 2), decoder_dim=64,
                     decoder_depth=2, decoder_heads=2, num_classes=5)


def _decode(cfg, params, images, mask):
  return MixMIMPretrainModel(cfg).apply({"params": params}, images, mask)


def _pretrain_loss(cfg, params, images, mask, weights):
  """A weighted sum of both outputs, and the outputs themselves."""
  seq1, seq2 = _decode(cfg, params, images, mask)
  return jnp.sum(seq1 * weights) + jnp.sum(seq2 * weights[::-1]), (seq1, seq2)


def test_scan_equals_unrolled_pretraining_model():
  scanned = SMALL
  unrolled = dataclasses.replace(SMALL, scan_blocks=False)
  params = api.init_params(scanned, "pretrain", jax.random.key(0))
  same = api.init_params(unrolled, "pretrain", jax.random.key(0))
  assert jax.tree.structure(params) == jax.tree.structure(same)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(same)))
  assert "blocks_2" in params["encoder"]["layers_2"]

  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((4, 64, 64, 3)), jnp.float32)
  mask = api.draw_mask(jax.random.key(1), scanned)
  weights = jnp.asarray(rng.standard_normal((4, scanned.num_mask_cells, scanned.target_dim)),
                        jnp.float32)
  # One program per variant gives both the outputs and the gradients.
  grad = jax.jit(jax.grad(_pretrain_loss, argnums=1, has_aux=True), static_argnums=0)
  (grads_scanned, outs_scanned), (grads_unrolled, outs_unrolled), (grads_remat, _) = [
      grad(cfg, params, images, mask, weights)
      for cfg in (scanned, unrolled, dataclasses.replace(scanned, remat=True))]
  # Compared in NumPy: jnp would compile a program per op and shape.
  outs_scanned, outs_unrolled, grads_unrolled, grads_scanned, grads_remat = jax.device_get(
      (outs_scanned, outs_unrolled, grads_unrolled, grads_scanned, grads_remat))
  for a, b in zip(outs_scanned, outs_unrolled):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))

  flat_ref = jax.tree.leaves_with_path(grads_unrolled)
  for other in (grads_scanned, grads_remat):
    for (path, ref), got in zip(flat_ref, jax.tree.leaves(other)):
      scale = float(np.abs(ref).max()) + 1e-12
      assert float(np.abs(got - ref).max()) <= 1e-5 * scale, jax.tree_util.keystr(path)


def test_drop_path_with_a_traced_rate_drops_whole_samples():
  x = jnp.ones((64, 3, 5))

  @jax.jit
  def apply(rate, key):
    return DropPath(rate).apply({}, x, False, rngs={"dropout": key})

  out = np.asarray(apply(jnp.float32(0.25), jax.random.key(0)))
  per_sample = out.reshape(64, -1)
  kept = np.all(per_sample == 1 / 0.75, axis=1)
  dropped = np.all(per_sample == 0.0, axis=1)
  assert np.all(kept | dropped) and 0 < dropped.sum() < 64


def test_scanned_classifier_uses_stochastic_depth_in_training():
  cfg = dataclasses.replace(SMALL, drop_path_rate=0.3)
  model = MixMIMClassifier(cfg)
  images = jnp.asarray(np.random.default_rng(2).standard_normal((4, 64, 64, 3)), jnp.float32)
  params = api.init_params(cfg, "classifier", 0)     # one program, not one per op

  @jax.jit
  def train(key):
    return model.apply({"params": params}, images, train=True, rngs={"dropout": key})

  evaluation = jax.jit(model.apply)({"params": params}, images)
  a, b, c = train(jax.random.key(1)), train(jax.random.key(1)), train(jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c) and not np.allclose(a, evaluation)
  assert np.all(np.isfinite(a))


def test_shared_bias_add_has_the_broadcast_gradient():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 3, 4, 5, 5)), jnp.float32)
  bias = jnp.asarray(rng.standard_normal((4, 5, 5)), jnp.float32)
  weights = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

  def loss(add, x, bias):
    return jnp.sum(jnp.sin(add(x, bias)) * weights)

  np.testing.assert_array_equal(add_shared_bias(x, bias), x + bias)
  got = jax.jit(jax.grad(lambda a, b: loss(add_shared_bias, a, b), argnums=(0, 1)))(x, bias)
  want = jax.grad(lambda a, b: loss(jnp.add, a, b), argnums=(0, 1))(x, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[1], np.sum(np.cos(x + bias) * weights, axis=(0, 1)),
                             rtol=1e-5, atol=1e-5)


def test_grouped_shared_bias_add_has_the_broadcast_gradient():
  """bias (G, 4, 5, 5) shared by the middle axes of x (G, 3, 4, 5, 5)."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((2, 3, 4, 5, 5)), jnp.float32)
  bias = jnp.asarray(rng.standard_normal((2, 4, 5, 5)), jnp.float32)
  weights = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

  def plain(a, b):
    return a + b[:, None]

  def loss(add, a, b):
    return jnp.sum(jnp.sin(add(a, b)) * weights)

  grouped = functools.partial(add_shared_bias, grouped=True)
  np.testing.assert_array_equal(grouped(x, bias), plain(x, bias))
  got = jax.jit(jax.grad(lambda a, b: loss(grouped, a, b), argnums=(0, 1)))(x, bias)
  want = jax.grad(lambda a, b: loss(plain, a, b), argnums=(0, 1))(x, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_softmax_and_its_gradient_equal_torch():
  """Logits with masked entries (MASK_LOGIT, as the same-source mask adds) and a
  large spread; value, gradient (jit) and a second derivative against torch's."""
  import torch  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(5)
  logits = (8 * rng.standard_normal((2, 3, 7, 9))).astype(np.float32)
  logits[..., 1::3] = MASK_LOGIT
  weights = rng.standard_normal(logits.shape).astype(np.float32)

  def loss(x, fn=softmax):
    return jnp.sum(jnp.sin(fn(x)) * weights)

  plain_loss = functools.partial(loss, fn=jax.nn.softmax)

  value = np.asarray(jax.jit(softmax)(jnp.asarray(logits)))
  grad = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(logits)))
  x = torch.tensor(logits, requires_grad=True)
  want = torch.softmax(x, dim=-1)
  (want_grad,) = torch.autograd.grad(torch.sum(torch.sin(want) * torch.tensor(weights)), x)
  np.testing.assert_allclose(value, want.detach().numpy(), rtol=1e-6, atol=1e-7)
  assert np.all(value[..., 1::3] == 0.0)
  np.testing.assert_allclose(grad, want_grad.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, jax.grad(plain_loss)(jnp.asarray(logits)), rtol=1e-5, atol=1e-6)
  # Forward-over-reverse works too (the derivative is a custom JVP, not a VJP).
  tangent = rng.standard_normal(logits.shape).astype(np.float32)
  _, hvp = jax.jvp(jax.grad(loss), (jnp.asarray(logits),), (jnp.asarray(tangent),))
  _, want_hvp = jax.jvp(jax.grad(plain_loss), (jnp.asarray(logits),), (jnp.asarray(tangent),))
  np.testing.assert_allclose(hvp, want_hvp, rtol=1e-4, atol=1e-5)
