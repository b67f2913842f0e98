"""MAE's linear probe as a model: the frozen encoder's mean token, BatchNorm
without affine parameters (statistics only), a linear head."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixmim_jax.model.arch import ModelConfig
from mixmim_jax.model.encoder import MixMIMEncoder

BN_EPS = 1e-6


class LinearProbe(nn.Module):
  """Params are {'encoder', 'head'} like the classifier's, batch statistics
  {'feature_norm'}; `fold_probe` turns the trained probe into a plain classifier."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    x = MixMIMEncoder(self.cfg, for_classifier=True, name="encoder")(images, train=False)
    x = jax.lax.stop_gradient(x.mean(axis=1).astype(jnp.float32))
    x = nn.BatchNorm(use_running_average=not train, use_bias=False, use_scale=False,
                     momentum=0.9, epsilon=BN_EPS, name="feature_norm")(x)
    return nn.Dense(self.cfg.num_classes, kernel_init=nn.initializers.truncated_normal(0.01),
                    name="head")(x)


def fold_probe(params, batch_stats):
  """Classifier params equal to the probe in eval mode: the normalization is
  folded into the head (W / sigma, b - (mu / sigma) W)."""
  stats = batch_stats["feature_norm"]
  inv = 1.0 / jnp.sqrt(stats["var"] + BN_EPS)
  head = params["head"]
  kernel = head["kernel"] * inv[:, None]
  bias = head["bias"] - (stats["mean"] * inv) @ head["kernel"]
  return {"encoder": params["encoder"], "head": {"kernel": kernel, "bias": bias}}
