"""MixMIM-L pretraining: the base recipe with the large encoder (C=192).

  python -m mixmim_jax.main --config=configs/large_pretrain.py --workdir=gs://BUCKET/mixmim-l \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets

The authors pretrain L for 600 epochs (85.9 % fine-tuned); set
--config.num_epochs=600 for that schedule. FSDP over 2 chips keeps the
parameters and AdamW moments within HBM on small slices; bfloat16 compute.
"""
from mixmim_jax.training.recipes import pretrain_defaults


def get_config():
  c = pretrain_defaults()
  c.arch = "large"
  c.model.dtype = "bfloat16"
  c.mesh.fsdp = 2
  return c
