"""The pretraining step and its state, as pure functions jitted with explicit
shardings (`compile_train_step`). No Python state, no host callbacks."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from mixmim_jax import hlo_stats, masking, objective, optim, sharding
from mixmim_jax.decoder import MixMIMPretrainModel
from mixmim_jax.train_config import Plan


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class StepFns:
  """The compiled entry points and what they were compiled for."""
  init: Callable[[jax.Array], TrainState]
  from_params: Callable[[Any], TrainState]    # a state at step 0 around given params
  step: Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]
  # The same step with its masks given (after the key) rather than drawn, of
  # shape (grad_accum_steps, num_groups, cells): to replay a run or compare it
  # with the reference.
  replay_step: Callable[[TrainState, jax.Array, jax.Array, jax.Array],
                        tuple[TrainState, dict]]
  state_shardings: Any
  batch_sharding: Any
  abstract_state: Any
  tx: optax.GradientTransformation
  schedule: Callable

  def abstract_state_sharded(self):
    """The state as ShapeDtypeStructs carrying their shardings (for AOT lowering)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_state, self.state_shardings)


def make_tx(plan: Plan, optim_config, params_shapes):
  schedule = optim.warmup_cosine(plan.lr, plan.total_steps, plan.warmup_steps,
                                 optim_config.warmup_start_factor)
  return optim.make_optimizer(params_shapes, plan.model, "pretrain", optim_config, schedule), \
      schedule


def state_from_params(params, tx) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def init_state(key, plan: Plan, tx) -> TrainState:
  cfg = plan.model
  model = MixMIMPretrainModel(cfg)
  images = jnp.zeros((1, cfg.img_size, cfg.img_size, cfg.in_chans), jnp.float32)
  params = model.init(key, images, jnp.zeros((1, cfg.num_mask_cells)))["params"]
  return state_from_params(params, tx)


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
  """One optimizer step on a global batch of normalized NHWC images.

  Each micro-batch draws its masks from the step's key, unless `given_masks`
  (accum, num_groups, cells) are passed (replay)."""
  accum = config.grad_accum_steps
  step_key = jax.random.fold_in(base_key, state.step)
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
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def compile_train_step(plan: Plan, config, mesh) -> StepFns:
  """Shardings for state and batch, an init that creates the state already
  sharded, and the jitted, donating step."""
  cfg = plan.model
  params_shapes = jax.eval_shape(
      lambda: MixMIMPretrainModel(cfg).init(
          jax.random.key(0), jnp.zeros((1, cfg.img_size, cfg.img_size, cfg.in_chans)),
          jnp.zeros((1, cfg.num_mask_cells)))["params"])
  tx, schedule = make_tx(plan, config.optim, params_shapes)
  init = functools.partial(init_state, plan=plan, tx=tx)
  abstract_state = jax.eval_shape(init, jax.random.key(0))
  state_shardings = sharding.tree_shardings(abstract_state, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  rep = sharding.replicated(mesh)
  init_jit = jax.jit(init, out_shardings=state_shardings)
  from_params = jax.jit(functools.partial(state_from_params, tx=tx),
                        out_shardings=state_shardings)
  step = sharding.under_activation_rules(
      functools.partial(train_step, plan=plan, tx=tx, schedule=schedule, config=config), mesh)
  step_jit = jax.jit(step, in_shardings=(state_shardings, batch_sharding, rep),
                     out_shardings=(state_shardings, rep), donate_argnums=(0,))
  replay_jit = jax.jit(step, in_shardings=(state_shardings, batch_sharding, rep, rep),
                       out_shardings=(state_shardings, rep), donate_argnums=(0,))
  return StepFns(init=init_jit, from_params=from_params, step=step_jit,
                 replay_step=replay_jit, state_shardings=state_shardings,
                 batch_sharding=batch_sharding, abstract_state=abstract_state, tx=tx,
                 schedule=schedule)


def unrolled_on_one_cpu(plan):
  """`plan` (pretraining or fine-tuning) with its block stacks unrolled, and a
  one-CPU-device mesh to lower it on: where FLOPs are counted (see step_flops)."""
  unrolled = dataclasses.replace(plan, model=dataclasses.replace(plan.model, scan_blocks=False))
  return unrolled, sharding.make_mesh(dict(data=1, fsdp=1, model=1), jax.devices("cpu")[:1])


def step_flops(plan: Plan, config, batch_shape: tuple[int, ...]) -> float | None:
  """FLOPs of one whole train step (all devices together), from XLA's cost
  analysis of the program before partitioning.

  XLA counts a loop body once, not once per iteration, so the count comes from
  the same step with its block stacks unrolled (the same arithmetic), lowered
  but not compiled: seconds, where compiling it would take minutes. It is
  lowered for one CPU device, which works wherever the step is compiled for
  (including TPU slices compiled ahead of time, which give no lowered cost).
  """
  unrolled, mesh = unrolled_on_one_cpu(plan)
  fns = compile_train_step(unrolled, config, mesh)
  images = jax.ShapeDtypeStruct(batch_shape, jnp.float32, sharding=fns.batch_sharding)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))
  return hlo_stats.cost_flops(fns.step.lower(fns.abstract_state_sharded(), images, key))
