"""Transformer building blocks shared by the MixMIM encoder and decoder.

Every op works on arbitrary leading dimensions, so the encoder can run attention
on (groups, images, windows, tokens, C) and the decoder on (groups, images, 2,
tokens, C) with plain einsums: no per-window Python loops, no gathers.

Precision, as the authors' fp16 autocast: the compute dtype (`dtype`, e.g.
bfloat16) is only the dtype of the matrix products' inputs. The products
accumulate and return float32; the residual stream, LayerNorm, softmax, GELU
and every parameter gradient stay float32 (so gradients are reduced across
chips in float32, as DDP reduces them under autocast).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mixmim_jax.model import tables
from mixmim_jax.model.init_schemes import XAVIER, LinearInit

Dtype = Any


def einsum(spec: str, a: jax.Array, b: jax.Array, dtype: Dtype) -> jax.Array:
  """jnp.einsum(spec, a, b) with both inputs rounded to `dtype`, accumulated and
  returned in float32.

  Below float32 the cotangents are formed the same way: products of the
  rounded operands and the rounded output cotangent, accumulated and returned
  in float32. (Autodiff would round each input's cotangent to the dtype it was
  cast to, so a kernel's gradient, and any cross-chip reduction of it, would
  be bfloat16.) `spec` must be "X,Y->Z" where every index of X and Y appears in
  two of X, Y, Z, as in a linear layer or attention's two products; `a` and `b`
  are float32 (the model's activations and parameters).
  """
  if jnp.dtype(dtype).itemsize >= 4:
    return jnp.einsum(spec, a, b)
  return _low_precision_einsum(spec, jnp.dtype(dtype), a, b)


def full_precision(dtype) -> jnp.dtype:
  """The dtype every non-product op runs in: float32, or float64 for float64
  inputs (the parity tests run the model in double under jax_enable_x64; there
  the low-precision products accumulate in float64, an exact emulation)."""
  return jnp.promote_types(dtype, jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _low_precision_einsum(spec, dtype, a, b):
  return jnp.einsum(spec, a.astype(dtype), b.astype(dtype),
                    preferred_element_type=full_precision(jnp.result_type(a, b)))


def _low_precision_einsum_fwd(spec, dtype, a, b):
  low_a, low_b = a.astype(dtype), b.astype(dtype)
  out = jnp.einsum(spec, low_a, low_b,
                   preferred_element_type=full_precision(jnp.result_type(a, b)))
  return out, (low_a, low_b)


def _low_precision_einsum_bwd(spec, dtype, residuals, g):
  low_a, low_b = residuals
  inputs, z = spec.split("->")
  x, y = inputs.split(",")
  acc = full_precision(g.dtype)
  g = g.astype(dtype)
  da = jnp.einsum(f"{z},{y}->{x}", g, low_b, preferred_element_type=acc)
  db = jnp.einsum(f"{x},{z}->{y}", low_a, g, preferred_element_type=acc)
  return da, db


_low_precision_einsum.defvjp(_low_precision_einsum_fwd, _low_precision_einsum_bwd)


class Linear(nn.Module):
  """nn.Dense's parameters (float32 `kernel` (in, out), `bias`); the product
  takes its inputs in `dtype` and returns float32 (see `einsum`)."""
  features: int
  kernel_init: Any
  bias_init: Any
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    y = einsum("...i,io->...o", x, kernel, self.dtype)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32)
    return y


def dense(features: int, fan_in: int, init: LinearInit, dtype: Dtype, name: str,
          use_bias: bool = True) -> Linear:
  """A Linear layer drawn from `init` (its bias init needs the input width)."""
  return Linear(features, init.kernel(), init.bias(fan_in), use_bias, dtype, name=name)


def layer_norm(eps: float, name: str) -> nn.LayerNorm:
  # In float32 under any compute dtype (autocast does the same): the residual
  # stream and the parameters are float32, and dtype=None keeps their type
  # (float64 in the float64 parity tests). Two-pass variance, as torch
  # computes it: parity at float32's noise needs it in deep stacks.
  return nn.LayerNorm(epsilon=eps, dtype=None, use_fast_variance=False, name=name)


class DropPath(nn.Module):
  """Stochastic depth: drop the whole residual branch per sample (leading axis)."""
  rate: float | jax.Array   # an array inside a scan over blocks

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or (isinstance(self.rate, float) and self.rate == 0.0):
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def add_shared_bias(x: jax.Array, bias: jax.Array, grouped: bool = False) -> jax.Array:
  """x + bias, where bias (e.g. (heads, N, N)) is shared by x's leading axes;
  with `grouped`, bias is (G, heads, N, N) and only x's axes after the first
  (the G groups) share it.

  Same value as the plain sum. The gradient of `bias` sums the cotangent over
  the sharing axes; written as a product with a vector of ones, it runs as a
  matrix-vector product, 30x faster on XLA:CPU than the reduction autodiff
  emits for a broadcast (which XLA:CPU hands to a slow library reduction).
  """
  trailing = bias.ndim - 1 if grouped else bias.ndim     # the axes bias does not share
  if grouped:
    bias = bias.reshape(bias.shape[:1] + (1,) * (x.ndim - bias.ndim) + bias.shape[1:])
  return _add_shared_bias(trailing, grouped, x, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _add_shared_bias(trailing, grouped, x, bias):
  del trailing, grouped
  return x + bias


def _add_shared_bias_fwd(trailing, grouped, x, bias):
  return _add_shared_bias(trailing, grouped, x, bias), None


def _add_shared_bias_bwd(trailing, grouped, _, g):
  size = math.prod(g.shape[g.ndim - trailing:])
  lead = g.shape[0] if grouped else 1
  rows = g.reshape(lead, -1, size)
  ones = jnp.ones((rows.shape[1],), g.dtype)
  # In g's dtype: asking for a float32 result made XLA:TPU convert the whole
  # bfloat16 cotangent to float32 first (+8 GiB per chip for large on v5p).
  summed = jnp.einsum("gmn,m->gn", rows, ones)
  shape = g.shape[:1] + (1,) * (g.ndim - trailing - 1) if grouped else ()
  return g, summed.reshape(shape + g.shape[g.ndim - trailing:])


_add_shared_bias.defvjp(_add_shared_bias_fwd, _add_shared_bias_bwd)


@jax.custom_jvp
def softmax(x: jax.Array) -> jax.Array:
  """Softmax over the last axis; the same forward ops as jax.nn.softmax.

  Differentiated as torch differentiates it, d(softmax) = p * (dx - <p, dx>),
  instead of autodiff through exp / sum (jax.nn.softmax without the
  `jax_softmax_custom_jvp` flag, a process-wide switch a library should not
  flip). The backward pass then needs p only, not exp(x - max) and its sum: on
  XLA:CPU the base pretraining step got 4-6 % faster (BENCHMARKS.md).
  """
  unnormalized = jnp.exp(x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True)))
  return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)


@softmax.defjvp
def _softmax_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  p = softmax(x)
  return p, p * (dx - jnp.sum(p * dx, axis=-1, keepdims=True))


class Mlp(nn.Module):
  hidden: int
  drop: float = 0.0
  dtype: Dtype = jnp.float32
  linear_init: LinearInit = XAVIER

  @nn.compact
  def __call__(self, x, deterministic: bool):
    dim = x.shape[-1]
    x = dense(self.hidden, dim, self.linear_init, self.dtype, "fc1")(x)
    x = nn.gelu(x, approximate=False)
    x = nn.Dropout(self.drop)(x, deterministic)
    x = dense(dim, self.hidden, self.linear_init, self.dtype, "fc2")(x)
    return nn.Dropout(self.drop)(x, deterministic)


class Attention(nn.Module):
  """Multi-head self-attention over the second-to-last axis of (..., N, C).

  With `window` set, a learned relative position bias table ((2W-1)**2, heads),
  indexed as in Swin, is added to the logits. `bias` is an extra additive logit
  term broadcastable to (..., heads, N, N) (the same-source mask in pretraining).
  """
  num_heads: int
  window: Optional[int] = None
  attn_drop: float = 0.0
  proj_drop: float = 0.0
  dtype: Dtype = jnp.float32
  linear_init: LinearInit = XAVIER
  table_std: float = 0.0          # the relative-position table's N(0, std); 0: zeros

  @nn.compact
  def __call__(self, x, bias=None, *, deterministic: bool, grouped: bool = False):
    """`grouped`: x's leading axis holds the mask groups of pretraining, which
    follow the batch's device shards."""
    *_, n, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = dense(3 * dim, dim, self.linear_init, self.dtype, "qkv")(x)
    qkv = qkv.reshape(*qkv.shape[:-1], 3, self.num_heads, head_dim)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    q = q * jnp.asarray(head_dim ** -0.5, q.dtype)
    logits = einsum("...qhd,...khd->...hqk", q, k, self.dtype)
    if self.window is not None:
      table_init = (nn.initializers.normal(self.table_std) if self.table_std
                    else nn.initializers.zeros)
      table = self.param("relative_position_bias_table", table_init,
                         ((2 * self.window - 1) ** 2, self.num_heads))
      index = tables.relative_position_index(self.window).reshape(-1)
      if grouped:
        # One view of the table per group: its gradient is then scattered into
        # table form within each group (on that group's device) and summed over
        # groups last, so a data-parallel step all-reduces ((2W-1)^2, heads)
        # tables rather than (heads, N, N) biases (10 % more bytes for base).
        per_group = jnp.broadcast_to(table, (x.shape[0],) + table.shape)
        rel = jnp.take(per_group, index, axis=1).reshape(-1, n, n, self.num_heads)
        rel = rel.transpose(0, 3, 1, 2)
      else:
        rel = jnp.take(table, index, axis=0).reshape(n, n, self.num_heads).transpose(2, 0, 1)
      logits = add_shared_bias(logits, rel.astype(logits.dtype), grouped)
    if bias is not None:
      logits = logits + bias.astype(logits.dtype)
    weights = softmax(logits)
    weights = nn.Dropout(self.attn_drop)(weights, deterministic)
    out = einsum("...hqk,...khd->...qhd", weights, v, self.dtype)
    out = out.reshape(*out.shape[:-2], dim)
    out = dense(dim, dim, self.linear_init, self.dtype, "proj")(out)
    return nn.Dropout(self.proj_drop)(out, deterministic)


class TransformerBlock(nn.Module):
  """Pre-norm block: x + Attn(LN(x)); x + MLP(LN(x)) on tokens (B, L, C).

  With `window` and `resolution` set, attention runs inside non-overlapping
  windows of the resolution x resolution token map (not shifted). `mask_bias`
  (G, nW, N, N) restricts each query to keys of its own source image; the B
  images are split into G groups that each share one mask.
  """
  num_heads: int
  mlp_ratio: float = 4.0
  window: Optional[int] = None
  resolution: Optional[int] = None
  drop: float = 0.0
  attn_drop: float = 0.0
  drop_path: float = 0.0
  ln_eps: float = 1e-5
  dtype: Dtype = jnp.float32
  linear_init: LinearInit = XAVIER
  table_std: float = 0.0

  @nn.compact
  def __call__(self, x, mask_bias=None, deterministic: bool = True):
    dim = x.shape[-1]
    h = layer_norm(self.ln_eps, "ln1")(x)
    attn = Attention(self.num_heads, self.window, self.attn_drop, self.drop,
                     self.dtype, self.linear_init, self.table_std, name="attn")
    if self.window is None:
      h = attn(h, mask_bias, deterministic=deterministic)
    else:
      n = self.resolution // self.window
      windows = einops.rearrange(h, "b (nh wh nw ww) c -> b (nh nw) (wh ww) c",
                                 nh=n, nw=n, wh=self.window, ww=self.window)
      bias = None
      if mask_bias is not None:
        groups = mask_bias.shape[0]
        windows = windows.reshape(groups, -1, *windows.shape[1:])
        bias = mask_bias[:, None, :, None]        # (G, 1, nW, 1, N, N)
      windows = attn(windows, bias, deterministic=deterministic, grouped=bias is not None)
      windows = windows.reshape(-1, *windows.shape[-3:])
      h = einops.rearrange(windows, "b (nh nw) (wh ww) c -> b (nh wh nw ww) c",
                           nh=n, nw=n, wh=self.window, ww=self.window)
    x = x + DropPath(self.drop_path)(h, deterministic)
    h = layer_norm(self.ln_eps, "ln2")(x)
    h = Mlp(int(dim * self.mlp_ratio), self.drop, self.dtype, self.linear_init,
            name="ffn")(h, deterministic)
    return x + DropPath(self.drop_path)(h, deterministic)
