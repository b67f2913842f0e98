"""MixMIM-L fine-tuning: the base recipe with the large encoder (C=192).

  python -m mixmim_jax.finetune --config=configs/large_finetune.py --workdir=gs://BUCKET/mixmim-l-ft \
      --config.init_from=gs://BUCKET/mixmim-l --config.data.data_dir=gs://BUCKET/tensorflow_datasets

The authors fine-tune L for 50 epochs with drop path 0.2 and layer decay 0.8
after 600 pretraining epochs (85.9 % top-1); those are the values set here.
bfloat16 compute; parameters and AdamW moments sharded over 2 chips (FSDP).
"""
from mixmim_jax.training.recipes import finetune_defaults


def get_config():
  c = finetune_defaults()
  c.arch = "large"
  c.model.drop_path_rate = 0.2
  c.model.dtype = "bfloat16"
  c.optim.layer_decay = 0.8
  c.num_epochs = 50.0
  c.mesh.fsdp = 2
  return c
