"""MixMIM-H pretraining: the base recipe with the huge encoder (C=352).

  python -m mixmim_jax.main --config=configs/huge_pretrain.py --workdir=gs://BUCKET/mixmim-h \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Parameters and AdamW moments are sharded over 4 chips (FSDP), blocks are
rematerialised and compute runs in bfloat16 so that a per-chip batch of 32 fits.
"""
from mixmim_jax.training.recipes import pretrain_defaults


def get_config():
  c = pretrain_defaults()
  c.arch = "huge"
  c.model.dtype = "bfloat16"
  c.model.remat = True
  c.mesh.fsdp = 4
  return c
