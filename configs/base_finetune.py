"""MixMIM-B fine-tuning, mmpretrain's 100-epoch ImageNet-1k recipe.

  python -m mixmim_jax.finetune --config=configs/base_finetune.py --workdir=gs://BUCKET/mixmim-b-ft \
      --config.init_from=gs://BUCKET/mixmim-b --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Reproduces `mixmim-base_8xb128-coslr-100e_in1k.py`: batch 1024, AdamW lr
5e-4 x 1024/256 = 2e-3, betas (0.9, 0.999), weight decay 0.05 (not on '.ln' /
'.bias' names), layer decay 0.7, 5 warmup epochs from 1e-6 x lr then cosine to
1e-6, drop path 0.1, label smoothing 0.1, mixup 0.8 / cutmix 1.0, RandAugment
(2, 9, std 0.5), random erasing 0.25; eval resize 256 + centre crop 224.
Expected: 84.6 % top-1 from the 300-epoch mmpretrain pretraining (84.63 % there).

`get_config("384")`: the authors' 384-px fine-tune (windows 16/16/24/12; the
relative position tables are resized from the 224-px checkpoint on load; their
eval at 384 resizes the short side to 384 and takes the centre 384 crop, crop_pct
1.0): 86.3 % for their 600-epoch B.
"""
from mixmim_jax.training.recipes import finetune_defaults


def get_config(arg: str = ""):
  c = finetune_defaults()
  c.data.eval_split = "validation"
  if arg == "384":
    c.data.image_size = 384
    c.data.eval_resize = 384          # the authors' crop_pct 1.0 above 224 px
    c.model.window_sizes = (16, 16, 24, 12)
  elif arg:
    raise ValueError(f"base_finetune: unknown variant {arg!r}; expected '' or '384'.")
  return c
