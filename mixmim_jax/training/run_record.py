"""What a workdir records of its run, and whether a config may go on from it.

A run's step means what its config and data make it mean: the batch, the
model, the data, the mask ratio, the schedule. The workdir records them in
config.json (the config the run was last started with) and in the meta saved
with every checkpoint (the model, seed and batch, and here the data's size,
the mask grouping and the step count). A resumed run is compared with both
before anything is read into memory or written:

- a key whose change would change what a step computes or which data it
  reads is refused in one sentence naming it, unless the config's
  `allow_config_change` names it ("batch_size,optim.base_lr");
- the keys of MAY_CHANGE (logging, saving, compiling, evaluation, the mesh,
  where the data lives) may change;
- the run may be made longer (num_train_steps, num_epochs), never shorter than
  the step it has reached;
- a workdir of another trainer (a pretraining workdir given to the
  fine-tuning trainer) is called what it is.

The trainers write config.json only after these checks pass.
"""
from __future__ import annotations

import json
import logging

from mixmim_jax import files
from mixmim_jax.model.arch import ModelConfig

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"

# Keys a resumed run may change: how it is run, logged, saved, compiled and
# evaluated, or where its data lives (its size is compared in the meta), not
# what a training step computes. A key ending in "." covers its subtree.
MAY_CHANGE = (
    "num_train_steps", "num_epochs",            # compared as the run's length: it may grow
    "checkpoint_every_steps", "checkpoint_keep", "checkpoint_async", "log_every_steps",
    "compile_cache", "image_every_steps", "num_image_pairs", "eval_every_steps",
    "eval_batch_size", "evals.",
    "mesh.",                                    # the mask grouping it implies: in the meta
    "model.dtype", "model.remat", "model.scan_blocks", "model.init",
    "init_from", "init_step",                   # a fine-tune's start; a resume reads its own
    "data.data_dir", "data.folder", "data.fashion_mnist_dir", "data.num_parallel_calls",
    "data.prefetch", "data.cache", "data.eval_split", "data.eval_resize",
    "allow_config_change")
# Facts of the meta compared beside the config's keys (also names for allow_config_change).
META_FACTS = {"num_examples": "the number of training examples",
              "group_size": "the images per mask (from the batch per device)"}
TRAINER_NAMES = {"pretrain": "a pretraining run's", "finetune": "a fine-tuning run's"}


def facts(plan, num_examples: int) -> dict:
  """What a checkpoint's meta records beside the model, seed and batch."""
  return dict(num_examples=int(num_examples), total_steps=int(plan.total_steps),
              group_size=int(plan.group_size))


def check_resume(workdir, config, plan, num_examples: int, checkpointer) -> None:
  """Refuses, in one sentence, a config that cannot go on from what `workdir`
  (a loop.Workdir) recorded, and logs when the run is made longer. Reads
  config.json and the newest checkpoint's meta; writes nothing."""
  allowed = _allowed(config)
  recorded = read_config(workdir)
  if recorded is not None:
    _check_trainer(recorded, config, workdir)
  reached = checkpointer.latest_step()
  if reached is None:
    return                                   # nothing to go on from: a fresh start
  if recorded is not None:
    _refuse_changes(workdir, _differences(_flat(recorded), _flat(_as_json(config)), allowed))
  meta = _newest_meta(checkpointer, reached)
  now = dict(facts(plan, num_examples), batch_size=config.batch_size, seed=config.seed)
  if allowed & {"batch_size", "grad_accum_steps"}:
    allowed.add("group_size")                # follows from the batch per device
  _refuse_changes(workdir, [(k, meta[k], now[k]) for k in ("batch_size", "seed", *META_FACTS)
                            if k in meta and k not in allowed and meta[k] != now[k]])
  _check_length(workdir, config, plan.total_steps, reached, meta.get("total_steps"))


def read_config(workdir) -> dict | None:
  """The recorded config.json as a dict; None when there is none."""
  return _read_json(workdir, CONFIG_FILE, "the settings this workdir's checkpoints were "
                    "made with: restore it, or delete it to resume checking only what the "
                    "checkpoints record")


def read_model_config(workdir, name: str) -> ModelConfig:
  """A fine-tune workdir's model (its `name` file), or one sentence naming
  the file when it is missing or cannot be read."""
  what = ("the model this workdir's checkpoints hold (written when the run started): "
          "restore it, or use a fresh --workdir")
  found = _read_json(workdir, name, what)
  if found is None:
    raise FileNotFoundError(f"{workdir.join(name)} is missing; it records {what}.")
  try:
    return ModelConfig.from_dict(found)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{workdir.join(name)} does not describe a model ({e}); it records "
                     f"{what}.") from e


# ------------------------------------------------------------------ the checks

def _read_json(workdir, name: str, what: str) -> dict | None:
  if not workdir.exists(name):
    return None
  path = workdir.join(name)
  try:
    return json.loads(workdir.read_text(name))
  except ValueError as e:
    raise ValueError(f"{path} cannot be read ({e}); it records {what}.") from e
  except OSError as e:
    raise files.StorageError(f"{path} cannot be read ({files.reason(e)}); it records "
                             f"{what}.") from e


def _as_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def _may_change(key: str) -> bool:
  return any(key == k or (k.endswith(".") and key.startswith(k)) for k in MAY_CHANGE)


def _allowed(config) -> set[str]:
  names = {n.strip() for n in str(config.get("allow_config_change", "") or "").split(",")}
  names.discard("")
  known = set(_flat(_as_json(config))) | set(META_FACTS)
  unknown = sorted(names - known)
  if unknown:
    raise ValueError(f"allow_config_change names {', '.join(map(repr, unknown))}, which "
                     "the config has no key for; name config keys such as batch_size or "
                     "optim.base_lr.")
  return names


def _differences(before: dict, now: dict, allowed: set[str]) -> list[tuple[str, object, object]]:
  """(key, recorded value, new value) of every compared key that differs.
  A key only one side has (a newer or older version's) is not compared."""
  return [(k, before[k], now[k]) for k in sorted(before.keys() & now.keys())
          if before[k] != now[k] and not _may_change(k) and k not in allowed]


def _refuse_changes(workdir, differ: list) -> None:
  if not differ:
    return
  keys = ",".join(k for k, _, _ in differ)
  said = "; ".join(f"{k}={new!r} (its run has {old!r}"
                   + (f": {META_FACTS[k]})" if k in META_FACTS else ")")
                   for k, old, new in differ)
  values = "the recorded values" if len(differ) > 1 else "the recorded value"
  raise ValueError(f"cannot resume {workdir} with {said}: that changes what a step means; "
                   f"resume with {values}, give another --workdir, or allow the change with "
                   f"--config.allow_config_change={keys}.")


def _check_trainer(recorded: dict, config, workdir) -> None:
  theirs, ours = recorded.get("trainer", "pretrain"), config.get("trainer", "pretrain")
  if theirs == ours:
    return
  hint = (f"to fine-tune from it, pass --config.init_from={workdir} and give a new --workdir"
          if (theirs, ours) == ("pretrain", "finetune") else "give another --workdir")
  raise ValueError(f"{workdir} is {TRAINER_NAMES.get(theirs, repr(theirs))} workdir (its "
                   f"{CONFIG_FILE} names trainer {theirs!r}), not {TRAINER_NAMES.get(ours)}; "
                   f"{hint}.")


def _newest_meta(checkpointer, step: int) -> dict:
  """The newest checkpoint's meta; {} when it cannot be read (the restore sets
  a damaged checkpoint aside and says so)."""
  try:
    return dict(checkpointer.meta(step))
  except Exception:  # pylint: disable=broad-except
    return {}


def _check_length(workdir, config, total: int, reached: int, recorded_total) -> None:
  asked = (f"num_train_steps={config.num_train_steps}" if config.num_train_steps > 0
           else f"num_epochs={config.num_epochs} ({total} steps)")
  if total < reached:
    raise ValueError(f"the run in {workdir} has reached step {reached}, beyond the end that "
                     f"{asked} sets; to go on, give num_train_steps > {reached} (or more "
                     "epochs), or give another --workdir.")
  if recorded_total and recorded_total != total:
    logger.warning("the run in %s is made %s: %d steps instead of %d; the learning-rate "
                   "schedule is stretched to the new end, so from step %d on it differs from "
                   "the first plan's.", workdir, "longer" if total > recorded_total else
                   "shorter", total, recorded_total, reached)
  if total == reached:
    logger.info("the run in %s has already done its %d steps; nothing to train (give more "
                "steps to go on).", workdir, total)
