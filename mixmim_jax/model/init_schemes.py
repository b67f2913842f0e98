"""How a fresh model's parameters are drawn: mmpretrain's init or the authors'.

The two references run different init code, measured with their `init_weights()`
(MIXMIM.md, "Initialisation"), and `ModelConfig.init` picks one:

                          mmpretrain 1.2.0                 authors (Sense-X)
  encoder Linear          xavier, bias 0 (pretraining);    xavier, bias 0
                          N(0, 0.02), bias 0 (classifier)
  decoder Linear          torch default: U(+-1/sqrt(fan_in))  xavier, bias 0
                          for weight and bias
  relative-position       zero (its init is never reached   N(0, 0.02)
  tables                  inside a ModuleList)
  classifier head         N(0, 0.02), bias 0                xavier, bias 0 (scratch)
  patch-embedding conv    torch default, bias included      the same
  mask token, LayerNorm   N(0, 0.02); 1 and 0               the same

"N(0, 0.02)" is torch's trunc_normal_(std=0.02) whose bounds are +-2 *absolute*:
at this std nothing is cut, so it is a plain normal (Flax's truncated_normal
would cut at 2 std and give std 0.0176). The authors' fine-tuning redraws a
loaded model's head weight from N(0, 2e-5): see `HEAD_STD_AFTER_LOAD`.
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixmim_jax.model.arch import INIT_SCHEMES as SCHEMES
# main_finetune.py of the authors: trunc_normal_(model.head.weight, std=2e-5)
# after loading pretrained weights.
HEAD_STD_AFTER_LOAD = {"authors": 2e-5}


def uniform(bound: float):
  """U(-bound, bound)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


# torch's default for Linear and Conv weights, kaiming_uniform_(a=sqrt(5)):
# U(+-1/sqrt(fan_in)), i.e. variance 1/(3 fan_in).
torch_default_kernel = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def torch_default_bias(fan_in: int):
  """torch's default for Linear and Conv biases: U(+-1/sqrt(fan_in))."""
  return uniform(1 / math.sqrt(fan_in))


@dataclasses.dataclass(frozen=True)
class LinearInit:
  """The distribution a family of Linear layers starts from."""
  weight: str            # "xavier", "torch_default" or "normal"
  std: float = 0.0       # of "normal"

  def kernel(self):
    if self.weight == "xavier":
      return nn.initializers.xavier_uniform()
    if self.weight == "torch_default":
      return torch_default_kernel
    return nn.initializers.normal(self.std)

  def bias(self, fan_in: int):
    if self.weight == "torch_default":
      return torch_default_bias(fan_in)
    return nn.initializers.zeros


XAVIER = LinearInit("xavier")
TORCH_DEFAULT = LinearInit("torch_default")
NORMAL_002 = LinearInit("normal", 0.02)


@dataclasses.dataclass(frozen=True)
class InitScheme:
  encoder_linear: LinearInit
  decoder_linear: LinearInit
  head: LinearInit
  relative_table_std: float      # 0: the tables start at zero


def scheme(name: str, classifier: bool) -> InitScheme:
  """The init of reference `name` for a classifier or a pretraining model.

  mmpretrain's classifier follows its fine-tune recipe's model init_cfg
  (TruncNormal std 0.02 on every Linear); its pretraining model follows the
  backbone's and the decoder's own init code."""
  if name == "mmpretrain":
    encoder = NORMAL_002 if classifier else XAVIER
    return InitScheme(encoder_linear=encoder, decoder_linear=TORCH_DEFAULT, head=NORMAL_002,
                      relative_table_std=0.0)
  if name == "authors":
    return InitScheme(encoder_linear=XAVIER, decoder_linear=XAVIER, head=XAVIER,
                      relative_table_std=0.02)
  raise ValueError(f"model init {name!r} is not one of {SCHEMES}.")
