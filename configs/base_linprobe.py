"""MixMIM-B linear probe on ImageNet-1k, MAE's protocol.

  python -m mixmim_jax.finetune --config=configs/base_linprobe.py --workdir=gs://BUCKET/mixmim-b-lin \
      --config.init_from=gs://BUCKET/mixmim-b --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Frozen encoder; mean token -> BatchNorm without affine -> Linear; LARS lr
0.1 x 16384/256 = 6.4, momentum 0.9, no weight decay, 90 epochs (10 warmup),
RandomResizedCrop + flip only. Neither reference publishes a MixMIM-B linear
probe number; MAE-style hierarchical encoders are known to be weak here.
"""
from mixmim_jax.training.recipes import linprobe_defaults


def get_config():
  return linprobe_defaults()
