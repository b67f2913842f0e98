"""The reference's training loop, as mmengine's Runner assembles it from an
mmpretrain recipe: the recipe's `optim_wrapper` dict through mmengine's
optimizer-wrapper builder (mmpretrain's layer-decay constructor when the recipe
names it), its `param_scheduler` dicts through mmengine's scheduler registry
(epochs converted to iterations), and per iteration the model's own
`train_step` (data preprocessor, loss, backward, AdamW step) followed by every
scheduler's step, as mmengine's ParamSchedulerHook does.
"""
from __future__ import annotations

import copy

import torch

from mixmim_jax.tools import torch_reference as ref


def _register_mmpretrain():
  ref.import_mmpretrain()
  from mmpretrain.utils import register_all_modules  # pylint: disable=import-outside-toplevel
  register_all_modules(init_default_scope=True)   # the constructor lives in mmpretrain


class ReferenceLoop:
  """`model` trained by the recipe's optimizer and schedules, shortened to
  `epochs` epochs of `epoch_length` iterations with `warmup_epochs` of warmup.
  A float64 model (`.double()`) normalises its inputs in float64 too."""

  def __init__(self, model, recipe_name: str, lr: float, epoch_length: int, warmup_epochs: int,
               epochs: int):
    _register_mmpretrain()
    from mmengine.optim import build_optim_wrapper  # pylint: disable=import-outside-toplevel
    from mmengine.registry import PARAM_SCHEDULERS  # pylint: disable=import-outside-toplevel
    recipe = ref.recipe(recipe_name)
    if next(model.parameters()).dtype == torch.float64:
      # The preprocessor keeps its mean and std as float32 buffers, which
      # .double() only widens: take the recipe's values in double.
      with torch.no_grad():
        pre = model.data_preprocessor
        for name in ("mean", "std"):
          value = torch.tensor(recipe.data_preprocessor[name], dtype=torch.float64)
          getattr(pre, name).copy_(value.view(getattr(pre, name).shape))
    optim_cfg = copy.deepcopy(recipe.optim_wrapper.to_dict())
    optim_cfg["optimizer"]["lr"] = lr
    self.model = model.train()
    self.optim_wrapper = build_optim_wrapper(model, optim_cfg)
    self.schedulers = []
    warmup, cosine = copy.deepcopy(recipe.param_scheduler)
    assert (warmup["type"], cosine["type"]) == ("LinearLR", "CosineAnnealingLR")
    warmup.update(begin=0, end=warmup_epochs)
    cosine.update(begin=warmup_epochs, end=epochs, T_max=epochs - warmup_epochs)
    for cfg in (warmup, cosine):
      self.schedulers.append(PARAM_SCHEDULERS.build(
          cfg, default_args=dict(optimizer=self.optim_wrapper, epoch_length=epoch_length)))

  def step(self, inputs, data_samples) -> float:
    """One iteration on a batch; returns its loss (before the update)."""
    log = self.model.train_step(dict(inputs=inputs, data_samples=data_samples),
                                self.optim_wrapper)
    for scheduler in self.schedulers:
      scheduler.step()
    return float(log["loss"])

  def group_lrs(self) -> list[float]:
    return [g["lr"] for g in self.optim_wrapper.optimizer.param_groups]
