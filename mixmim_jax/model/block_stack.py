"""A stack of identical transformer blocks run as one `lax.scan`.

Why: unrolled, the backward pass of a deep stack is one long elementwise chain
(the residual stream's cotangent gathers every later block's LayerNorm
gradient), and XLA:CPU fuses that chain into each of its consumers instead of
materialising it once, so the backward of each block recomputes the chain of
every block after it: work quadratic in depth, 46 % of the base model's CPU
step. An optimization barrier does not stop it (XLA:CPU removes barriers
before fusing); a loop boundary does, since no fusion crosses one. The scan
also compiles one block instead of eighteen.

The parameters keep their per-block names (`blocks_0`, `blocks_1`, ...), as in
the reference checkpoints; they are stacked on the fly for the scan, and
autodiff slices the stack's gradient back into per-block gradients.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def run_blocks(parent: nn.Module, block_cls: type[nn.Module], block_kwargs: dict,
               x: jax.Array, bias: Optional[jax.Array], drop_path_rates: Sequence[float], *,
               deterministic: bool, remat: bool, scan: bool) -> jax.Array:
  """Applies blocks `blocks_0 .. blocks_{n-1}`, block j being
  `block_cls(**block_kwargs, drop_path=drop_path_rates[j])`, called as
  `block(x, bias, deterministic)`.

  Call it from `parent`'s compact `__call__`: the blocks' parameters live in
  its scope. While initialising (and with `scan` off, or a single block) the
  blocks run one after the other, so that each creates its own parameters.
  """
  depth = len(drop_path_rates)
  if not scan or depth == 1 or parent.is_initializing():
    cls = nn.remat(block_cls, static_argnums=(3,)) if remat else block_cls
    for j, rate in enumerate(drop_path_rates):
      x = cls(**block_kwargs, drop_path=rate, parent=parent, name=f"blocks_{j}")(
          x, bias, deterministic)
    return x

  params = parent.variables["params"]
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                         *[params[f"blocks_{j}"] for j in range(depth)])
  keys = (jax.random.split(parent.make_rng("dropout"), depth) if not deterministic
          else jnp.zeros((depth,), jnp.uint32))
  # Stochastic depth's rate differs per block, so it is scanned over as well;
  # when every rate is zero (pretraining) it stays the constant 0 and costs nothing.
  no_drop_path = not any(drop_path_rates)

  def body(h, inputs):
    block_params, rate, key = inputs
    block = block_cls(**block_kwargs, drop_path=0.0 if no_drop_path else rate, parent=None)
    rngs = None if deterministic else {"dropout": key}
    h = block.apply({"params": block_params}, h, bias, deterministic, rngs=rngs)
    # Keep the carry split over the batch (its leading axis: images, or mask
    # groups in the decoder) inside the loop, where sharding propagation under
    # FSDP otherwise loses it. A no-op unless traced in sharding.activation_rules.
    return nn.with_logical_constraint(h, ("batch",) + (None,) * (h.ndim - 1)), None

  # Without full remat the scan still saves only the linear layers' outputs
  # and recomputes the rest (attention products, softmax, LayerNorm, GELU) in
  # the backward pass: cheaper than writing and reading the stacked copies
  # (base on CPU: 9.27 -> 8.66 s per step, 6.7 -> 3.4 GB).
  policy = None if remat else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  body = jax.checkpoint(body, policy=policy)
  rates = jnp.asarray(drop_path_rates, jnp.float32)
  x, _ = jax.lax.scan(body, x, (stacked, rates, keys))
  return x
