"""The small public Python API (re-exported by `mixmim_jax`)."""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from mixmim_jax.model import masking, objective
from mixmim_jax.model.arch import ModelConfig
from mixmim_jax.model.decoder import MixMIMPretrainModel
from mixmim_jax.model.encoder import MixMIMClassifier, MixMIMEncoder
from mixmim_jax.model.linear_probe import LinearProbe

KINDS = ("classifier", "encoder", "pretrain", "linprobe")


def build_model(config: ModelConfig, kind: str = "classifier"):
  """The Flax module for `kind`: "classifier" (logits; features if num_classes=0),
  "encoder" (the same with no head), "pretrain" (encoder + decoder) or
  "linprobe" (frozen encoder, BatchNorm, head)."""
  if kind == "pretrain":
    return MixMIMPretrainModel(config)
  if kind == "encoder":
    return MixMIMClassifier(config.replace(num_classes=0))
  if kind == "classifier":
    return MixMIMClassifier(config)
  if kind == "linprobe":
    return LinearProbe(config)
  raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}.")


def dummy_inputs(config: ModelConfig, kind: str, batch: int = 1):
  """Zero inputs of the right shapes for `kind`'s init (images, and the mask)."""
  images = jnp.zeros((batch, config.img_size, config.img_size, config.in_chans), jnp.float32)
  if kind == "pretrain":
    return images, jnp.zeros((1, config.num_mask_cells), jnp.float32)
  return (images,)


def init_variables(config: ModelConfig, kind: str, key: jax.Array):
  """All of a fresh model's variables ({'params'}, and the probe's 'batch_stats')."""
  return build_model(config, kind).init(key, *dummy_inputs(config, kind))


def init_params(config: ModelConfig, kind: str = "classifier", seed: int | jax.Array = 0):
  """Freshly initialised params for `kind`."""
  key = jax.random.key(seed) if isinstance(seed, int) else seed
  return jax.jit(init_variables, static_argnums=(0, 1))(config, kind, key)["params"]


def param_shapes(config: ModelConfig, kind: str = "classifier"):
  return jax.eval_shape(functools.partial(init_variables, config, kind),
                        jax.random.key(0))["params"]


def _normalized(images: jax.Array) -> jax.Array:
  """The models take normalised float images; integer pixels are refused, not
  silently run (the training steps normalise uint8 batches themselves)."""
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(f"images are {images.dtype}; expected normalised float images: "
                    "mixmim_jax.model.pixels.normalize(images, mean, std) makes them from "
                    "uint8 pixels.")
  return images


@functools.partial(jax.jit, static_argnames=("config",))
def classify(config: ModelConfig, params: Mapping[str, Any], images: jax.Array) -> jax.Array:
  """Logits (B, classes) for normalized NHWC images (B, H, W, 3)."""
  return MixMIMClassifier(config).apply({"params": params}, _normalized(images))


@functools.partial(jax.jit, static_argnames=("config",))
def encode(config: ModelConfig, params: Mapping[str, Any], images: jax.Array,
           coarse_mask: jax.Array | None = None) -> jax.Array:
  """Final-norm encoder tokens (B, L, 8C); `params` is the 'encoder' subtree."""
  return MixMIMEncoder(config).apply({"params": params}, _normalized(images), coarse_mask)


def draw_mask(key: jax.Array, config: ModelConfig, num_groups: int = 1,
              mask_ratio: float = 0.5, range_mask_ratio: float = 0.0) -> jax.Array:
  """(num_groups, cells) coarse masks with exactly floor(cells * r) ones."""
  return masking.draw_coarse_masks(key, num_groups, config.num_mask_cells, mask_ratio,
                                   range_mask_ratio)


@functools.partial(jax.jit, static_argnames=("config", "norm_pix"))
def pretrain_forward(config: ModelConfig, params: Mapping[str, Any], images: jax.Array,
                     coarse_mask: jax.Array, norm_pix: bool = True) -> dict[str, jax.Array]:
  """The pretraining forward for an explicit mask (G, cells); the batch is G groups.

  Returns loss, the two decoder sequences (seq1, seq2: (B, cells, 32*32*3)), the
  unmixed prediction and the target, all in patch layout (see objective.unpatchify)."""
  seq1, seq2 = MixMIMPretrainModel(config).apply({"params": params}, images, coarse_mask)
  target = objective.pixel_target(images, config.encoder_stride, norm_pix)
  loss, pred = objective.reconstruction_loss(seq1, seq2, target, coarse_mask)
  return dict(loss=loss, seq1=seq1, seq2=seq2, prediction=pred, target=target)
