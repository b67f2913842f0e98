"""Compiling a trainer's steps: the state created already sharded (eval_shape ->
shardings -> jit(init, out_shardings=...)), and the step jitted with explicit
in/out shardings and the state donated. One builder for both trainers."""
from __future__ import annotations

import functools

import jax

from mixmim_jax.model import api
from mixmim_jax.training import finetune_step, optim, sharding, train_step
from mixmim_jax.training.plan import Plan
from mixmim_jax.training.state import StepFns, TrainState, state_from_params


def model_kind(plan: Plan, config) -> str:
  return "pretrain" if plan.trainer == "pretrain" else finetune_step.model_kind(config.task)


def compile_steps(plan: Plan, config, mesh) -> StepFns:
  """The compiled init, step (and replay or eval step) of `plan`'s trainer."""
  kind = model_kind(plan, config)
  key0 = jax.random.key(0)
  variables = jax.eval_shape(functools.partial(api.init_variables, plan.model, kind), key0)
  tx, schedule = optim.make_tx(plan, config, variables["params"])

  def init(key) -> TrainState:
    v = api.init_variables(plan.model, kind, key)
    return state_from_params(v["params"], v.get("batch_stats"), tx=tx)

  abstract_state = jax.eval_shape(init, key0)
  state_shardings = sharding.tree_shardings(abstract_state, mesh)
  batch, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  out = (state_shardings, rep)

  def compiled(fn, *in_shardings):
    fn = functools.partial(fn, plan=plan, config=config, tx=tx, schedule=schedule)
    return jax.jit(sharding.under_activation_rules(fn, mesh),
                   in_shardings=(state_shardings,) + in_shardings, out_shardings=out,
                   donate_argnums=(0,))

  replay_step = eval_step = None
  if plan.trainer == "pretrain":
    step = compiled(train_step.train_step, batch, rep)            # images, key
    replay_step = compiled(train_step.train_step, batch, rep, rep)  # ..., masks
  else:
    step = compiled(finetune_step.train_step, batch, batch, rep)   # images, labels, key
    eval_step = jax.jit(
        sharding.under_activation_rules(
            functools.partial(finetune_step.eval_step, cfg=plan.model, kind=kind,
                              mean=config.data.mean, std=config.data.std), mesh),
        in_shardings=(state_shardings.params, state_shardings.batch_stats, batch, batch, batch),
        out_shardings=rep)
  return StepFns(
      init=jax.jit(init, out_shardings=state_shardings),
      from_params=jax.jit(functools.partial(state_from_params, tx=tx),
                          out_shardings=state_shardings),
      step=step, replay_step=replay_step, eval_step=eval_step,
      state_shardings=state_shardings, batch_sharding=batch, abstract_state=abstract_state,
      tx=tx, schedule=schedule)
