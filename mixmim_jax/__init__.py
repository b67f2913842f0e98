"""MixMIM (mixed and masked image modeling) in JAX/Flax, equal to mmpretrain 1.2.0.

    import mixmim_jax as mm
    cfg = mm.model_config("base", num_classes=1000)
    params = mm.init_params(cfg, "classifier")
    logits = mm.classify(cfg, params, images)          # images: (B, 224, 224, 3)
"""
from mixmim_jax.api import (build_model, classify, draw_mask, encode, init_params,
                            param_shapes, pretrain_forward)
from mixmim_jax.arch import ARCHS, ModelConfig, model_config
from mixmim_jax.params_io import ParamsFile, load_params, save_params

__all__ = [
    "ARCHS", "ModelConfig", "ParamsFile", "build_model", "classify", "draw_mask", "encode",
    "init_params", "load_params", "model_config", "param_shapes", "pretrain_forward",
    "save_params",
]
