"""The fine-tune / linear-probe model, optimizer, train step and eval step, as
pure functions jitted with explicit shardings (`compile_steps`)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mixmim_jax import layer_decay, optim, sharding
from mixmim_jax.arch import ModelConfig
from mixmim_jax.data import mixup
from mixmim_jax.encoder import MixMIMClassifier, MixMIMEncoder
from mixmim_jax.finetune_config import Plan

PROBE_BN_EPS = 1e-6


class LinearProbe(nn.Module):
  """MAE's linear probe: the frozen encoder's mean token, BatchNorm without
  affine parameters (statistics only), a linear head. Params are
  {'encoder', 'head'} like the classifier's; `fold_probe` turns the trained
  probe into a plain classifier."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    x = MixMIMEncoder(self.cfg, for_classifier=True, name="encoder")(images, train=False)
    x = jax.lax.stop_gradient(x.mean(axis=1).astype(jnp.float32))
    x = nn.BatchNorm(use_running_average=not train, use_bias=False, use_scale=False,
                     momentum=0.9, epsilon=PROBE_BN_EPS, name="feature_norm")(x)
    return nn.Dense(self.cfg.num_classes, kernel_init=nn.initializers.truncated_normal(0.01),
                    name="head")(x)


def fold_probe(params, batch_stats):
  """Classifier params equal to the probe in eval mode: the normalization is
  folded into the head (W / sigma, b - (mu / sigma) W)."""
  stats = batch_stats["feature_norm"]
  inv = 1.0 / jnp.sqrt(stats["var"] + PROBE_BN_EPS)
  head = params["head"]
  kernel = head["kernel"] * inv[:, None]
  bias = head["bias"] - (stats["mean"] * inv) @ head["kernel"]
  return {"encoder": params["encoder"], "head": {"kernel": kernel, "bias": bias}}


def build_model(task: str, cfg: ModelConfig):
  return LinearProbe(cfg) if task == "linprobe" else MixMIMClassifier(cfg)


@flax.struct.dataclass
class State:
  step: jax.Array
  params: Any
  opt_state: Any
  batch_stats: Any            # the probe's BatchNorm statistics; {} when fine-tuning


@dataclasses.dataclass(frozen=True)
class StepFns:
  init: Callable
  from_params: Callable
  step: Callable
  eval_step: Callable
  state_shardings: Any
  batch_sharding: Any
  abstract_state: Any
  schedule: Callable


def make_tx(plan: Plan, config, params_shapes):
  o = config.optim
  schedule = optim.warmup_cosine(plan.lr, plan.total_steps, plan.warmup_steps,
                                 o.warmup_start_factor, o.end_lr)
  cfg = plan.model
  # Masks as functions of the params they see: under the linear probe's
  # multi_transform the frozen encoder arrives as an empty node.
  matrices = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
  decay_mask = lambda p: optim.weight_decay_mask(p, cfg, "classifier", o.wd_rule,  # noqa: E731
                                                 finetune=True)
  if o.name == "lars":   # MAE's LARS: no trust ratio and no decay on 1-D tensors
    inner = optax.lars(schedule, weight_decay=o.weight_decay, momentum=o.momentum,
                       trust_ratio_mask=matrices, weight_decay_mask=matrices)
  elif o.layer_decay == 1.0:
    inner = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                        mask=decay_mask)
  else:
    # optax.adamw with a learning-rate schedule per layer (torch's param groups).
    scales = layer_decay.lr_scales(params_shapes, cfg, o.layer_decay, o.layer_decay_rule)
    inner = optax.chain(
        optax.scale_by_adam(o.b1, o.b2, o.eps),
        optax.add_decayed_weights(o.weight_decay, decay_mask),
        layer_decay.scale_by_schedules(layer_decay.group_schedules(
            scales, plan.lr, plan.total_steps, plan.warmup_steps, o.warmup_start_factor,
            o.end_lr, o.layer_decay_rule)))
  chain = [optax.clip_by_global_norm(o.grad_clip_norm)] if o.grad_clip_norm > 0 else []
  tx = optax.chain(*chain, inner)
  if config.task == "linprobe":
    # Only the head learns; the frozen encoder has no optimizer state at all.
    labels = {k: ("train" if k == "head" else "freeze") for k in params_shapes}
    tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
  return tx, schedule


def _variables(images_shape, cfg: ModelConfig, task: str, key):
  model = build_model(task, cfg)
  return model.init(key, jnp.zeros(images_shape, jnp.float32))


def soft_cross_entropy(logits, targets):
  return -(targets * jax.nn.log_softmax(logits.astype(jnp.float32))).sum(-1).mean()


def train_step(state: State, images, labels, base_key, *, plan: Plan, config, tx, schedule):
  cfg, task = plan.model, config.task
  key = jax.random.fold_in(base_key, state.step)
  mix_key, dropout_key = jax.random.split(key)
  k = cfg.num_classes
  targets = jax.nn.one_hot(labels, k, dtype=jnp.float32)
  if config.mixup_alpha > 0 or config.cutmix_alpha > 0:
    images, targets = mixup.mix_per_device(mix_key, images, targets, plan.batch_devices,
                                           config.mixup_alpha, config.cutmix_alpha)
  # mmpretrain's LabelSmoothLoss(mode="original") smooths the (mixed) targets.
  eps = config.label_smoothing
  targets = targets * (1 - eps) + eps / k
  model = build_model(task, cfg)

  def loss_fn(params):
    if task == "linprobe":
      logits, new = model.apply({"params": params, "batch_stats": state.batch_stats}, images,
                                train=True, mutable=["batch_stats"])
      return soft_cross_entropy(logits, targets), new["batch_stats"]
    logits = model.apply({"params": params}, images, train=True, rngs={"dropout": dropout_key})
    return soft_cross_entropy(logits, targets), state.batch_stats

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(loss=loss, grad_norm=optax.global_norm(grads), lr=schedule(state.step))
  return State(state.step + 1, params, opt_state, batch_stats), metrics


def eval_step(params, batch_stats, images, labels, mask, *, cfg: ModelConfig, task: str):
  """Sums over the batch of (count, top-1 hits, top-5 hits, loss), padding masked."""
  variables = {"params": params}
  if task == "linprobe":
    variables["batch_stats"] = batch_stats
  logits = build_model(task, cfg).apply(variables, images, train=False)
  return score(logits, labels, mask)


def score(logits, labels, mask):
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  hit1 = (top5[:, 0] == labels).astype(jnp.float32)
  hit5 = (top5 == labels[:, None]).any(-1).astype(jnp.float32)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1)[:, 0]
  return dict(count=mask.sum(), top1=(hit1 * mask).sum(), top5=(hit5 * mask).sum(),
              loss=(nll * mask).sum())


def compile_steps(plan: Plan, config, mesh) -> StepFns:
  """Shardings, an init that creates the state already sharded (fresh from a key,
  or `from_params` for loaded weights), the donating train step and the eval step."""
  cfg = plan.model
  shape = (1, cfg.img_size, cfg.img_size, cfg.in_chans)
  variables = jax.eval_shape(functools.partial(_variables, shape, cfg, config.task),
                             jax.random.key(0))
  tx, schedule = make_tx(plan, config, variables["params"])

  def from_params(params, stats):
    return State(jnp.zeros((), jnp.int32), params, tx.init(params), stats)

  def init(key):
    v = _variables(shape, cfg, config.task, key)
    return from_params(v["params"], v.get("batch_stats", {}))

  abstract_state = jax.eval_shape(init, jax.random.key(0))
  state_shardings = sharding.tree_shardings(abstract_state, mesh)
  batch = sharding.batch_sharding(mesh)
  rep = sharding.replicated(mesh)
  step = jax.jit(sharding.under_activation_rules(
      functools.partial(train_step, plan=plan, config=config, tx=tx, schedule=schedule), mesh),
                 in_shardings=(state_shardings, batch, batch, rep),
                 out_shardings=(state_shardings, rep), donate_argnums=(0,))
  evaluate = jax.jit(sharding.under_activation_rules(
      functools.partial(eval_step, cfg=cfg, task=config.task), mesh),
                     in_shardings=(state_shardings.params, state_shardings.batch_stats,
                                   batch, batch, batch), out_shardings=rep)
  return StepFns(init=jax.jit(init, out_shardings=state_shardings),
                 from_params=jax.jit(from_params, out_shardings=state_shardings), step=step,
                 eval_step=evaluate, state_shardings=state_shardings, batch_sharding=batch,
                 abstract_state=abstract_state, schedule=schedule)


def fresh_variables(cfg: ModelConfig, task: str, seed: int):
  """Freshly initialised {'params', 'batch_stats'} on the host (NumPy)."""
  shape = (1, cfg.img_size, cfg.img_size, cfg.in_chans)
  v = jax.jit(functools.partial(_variables, shape, cfg, task))(jax.random.key(seed))
  return jax.tree.map(np.asarray, dict(params=v["params"], batch_stats=v.get("batch_stats", {})))
