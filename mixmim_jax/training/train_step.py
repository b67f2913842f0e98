"""The pretraining step: a pure function of the state, a global batch and a key
(compiled with shardings and donation by steps.compile_steps)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mixmim_jax.model import masking, objective, pixels
from mixmim_jax.model.decoder import MixMIMPretrainModel
from mixmim_jax.training.plan import Plan
from mixmim_jax.training.state import TrainState


def _micro_batches(images, plan: Plan, accum: int):
  """(B, ...) -> (accum, B/accum, ...) with micro-batch k holding a 1/accum slice of
  every device's images, so no image moves between devices."""
  if accum == 1:
    return images[None]
  d = plan.batch_devices
  x = images.reshape(d, accum, -1, *images.shape[1:])
  return jnp.swapaxes(x, 0, 1).reshape(accum, -1, *images.shape[1:])


def loss_fn(params, images, masks, dropout_key, plan: Plan, norm_pix: bool):
  seq1, seq2 = MixMIMPretrainModel(plan.model).apply(
      {"params": params}, images, masks, train=True, rngs={"dropout": dropout_key})
  target = objective.pixel_target(images, plan.model.encoder_stride, norm_pix)
  loss, _ = objective.reconstruction_loss(seq1, seq2, target, masks)
  return loss


def train_step(state: TrainState, images: jax.Array, base_key: jax.Array,
               given_masks: jax.Array | None = None, *, plan: Plan, tx, schedule,
               config) -> tuple[TrainState, dict]:
  """One optimizer step on a global batch of NHWC images (uint8, normalised here
  with config.data's mean and std; or float32, normalised already).

  Each micro-batch draws its masks from the step's key, unless `given_masks`
  (accum, num_groups, cells) are passed (replay)."""
  accum = config.grad_accum_steps
  step_key = jax.random.fold_in(base_key, state.step)
  images = pixels.normalize(images, config.data.mean, config.data.std)
  micro = _micro_batches(images, plan, accum)
  grad_fn = jax.value_and_grad(loss_fn)

  def one(carry, inputs):
    loss_sum, grad_sum = carry
    k, batch, given = inputs
    mask_key, dropout_key = jax.random.split(jax.random.fold_in(step_key, k))
    masks = given if given is not None else masking.draw_coarse_masks(
        mask_key, plan.num_groups, plan.model.num_mask_cells, config.mask_ratio,
        config.range_mask_ratio)
    loss, grads = grad_fn(state.params, batch, masks, dropout_key, plan, config.norm_pix)
    return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  if accum == 1:
    given = None if given_masks is None else given_masks[0]
    (loss, grads), _ = one((0.0, zeros), (0, micro[0], given))
  else:
    (loss, grads), _ = jax.lax.scan(one, (jnp.zeros(()), zeros),
                                    (jnp.arange(accum), micro, given_masks))
    loss = loss / accum
    grads = jax.tree.map(lambda g: g / accum, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(loss=loss, grad_norm=optax.global_norm(grads), lr=schedule(state.step))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
