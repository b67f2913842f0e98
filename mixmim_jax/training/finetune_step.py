"""The fine-tuning / linear-probing step and the evaluation step: pure
functions (compiled with shardings and donation by steps.compile_steps)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mixmim_jax.model import api, pixels
from mixmim_jax.model.arch import ModelConfig
from mixmim_jax.training import mixup
from mixmim_jax.training.plan import Plan
from mixmim_jax.training.state import TrainState


def model_kind(task: str) -> str:
  """The api.build_model kind a fine-tuning task trains."""
  return "linprobe" if task == "linprobe" else "classifier"


def soft_cross_entropy(logits, targets):
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  return -(targets * jax.nn.log_softmax(logits)).sum(-1).mean()


def train_step(state: TrainState, images, labels, base_key, *, plan: Plan, config, tx,
               schedule) -> tuple[TrainState, dict]:
  cfg, task = plan.model, config.task
  key = jax.random.fold_in(base_key, state.step)
  mix_key, dropout_key = jax.random.split(key)
  k = cfg.num_classes
  targets = jax.nn.one_hot(labels, k, dtype=jnp.float32)
  # Normalised before mixing, as mmpretrain's ClsDataPreprocessor does.
  images = pixels.normalize(images, config.data.mean, config.data.std)
  if config.mixup_alpha > 0 or config.cutmix_alpha > 0:
    images, targets = mixup.mix_per_device(mix_key, images, targets, plan.batch_devices,
                                           config.mixup_alpha, config.cutmix_alpha)
  # mmpretrain's LabelSmoothLoss(mode="original") smooths the (mixed) targets.
  eps = config.label_smoothing
  targets = targets * (1 - eps) + eps / k
  model = api.build_model(cfg, model_kind(task))

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
  return TrainState(state.step + 1, params, opt_state, batch_stats), metrics


def eval_step(params, batch_stats, images, labels, mask, *, cfg: ModelConfig, kind: str,
              mean, std):
  """Sums over the batch of (count, top-1 hits, top-5 hits, loss), padding masked;
  uint8 images are normalised with `mean` and `std` first."""
  images = pixels.normalize(images, mean, std)
  variables = {"params": params}
  if kind == "linprobe":
    variables["batch_stats"] = batch_stats
  logits = api.build_model(cfg, kind).apply(variables, images, train=False)
  return score(logits, labels, mask)


def score(logits, labels, mask):
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  hit1 = (top5[:, 0] == labels).astype(jnp.float32)
  hit5 = (top5 == labels[:, None]).any(-1).astype(jnp.float32)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1)[:, 0]
  return dict(count=mask.sum(), top1=(hit1 * mask).sum(), top5=(hit5 * mask).sum(),
              loss=(nll * mask).sum())
