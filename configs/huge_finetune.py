"""MixMIM-H fine-tuning: the base recipe with the huge encoder (C=352).

  python -m mixmim_jax.finetune --config=configs/huge_finetune.py --workdir=gs://BUCKET/mixmim-h-ft \
      --config.init_from=gs://BUCKET/mixmim-h --config.data.data_dir=gs://BUCKET/tensorflow_datasets

No published reference number; 50 epochs, drop path 0.3, layer decay 0.8 (the
large model's values, deeper regularisation for the wider model). bfloat16,
rematerialised blocks, FSDP over 4 chips.
"""
from mixmim_jax.training.recipes import finetune_defaults


def get_config():
  c = finetune_defaults()
  c.arch = "huge"
  c.model.drop_path_rate = 0.3
  c.model.dtype = "bfloat16"
  c.model.remat = True
  c.optim.layer_decay = 0.8
  c.num_epochs = 50.0
  c.mesh.fsdp = 4
  return c
