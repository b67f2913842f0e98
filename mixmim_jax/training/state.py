"""What a trainer carries from step to step, and the compiled functions that
advance it (built by steps.compile_steps)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  batch_stats: Any = flax.struct.field(default_factory=dict)   # the linear probe's BatchNorm


def state_from_params(params, batch_stats=None, *, tx) -> TrainState:
  """A state at step 0 around `params`, with fresh optimizer state."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    batch_stats={} if batch_stats is None else batch_stats)


@dataclasses.dataclass(frozen=True)
class StepFns:
  """The compiled entry points of one trainer and what they were compiled for.

  step: pretraining (state, images, key) -> (state, metrics); fine-tuning
  (state, images, labels, key). replay_step (pretraining): the same step with
  its masks given after the key, (grad_accum_steps, num_groups, cells), to
  replay a run or compare it with the reference. eval_step (fine-tuning):
  (params, batch_stats, images, labels, mask) -> summed scores."""
  init: Callable[[jax.Array], TrainState]
  from_params: Callable[..., TrainState]       # (params, batch_stats=None)
  step: Callable[..., tuple[TrainState, dict]]
  replay_step: Optional[Callable[..., tuple[TrainState, dict]]]
  eval_step: Optional[Callable[..., dict]]
  state_shardings: Any
  batch_sharding: Any
  abstract_state: Any
  tx: Any
  schedule: Callable

  def abstract_state_sharded(self):
    """The state as ShapeDtypeStructs carrying their shardings (for AOT lowering)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_state, self.state_shardings)
