"""MixMIM (mixed and masked image modeling) in JAX/Flax, equal to mmpretrain 1.2.0.

    import mixmim_jax as mm
    predict = mm.inference_model("mixmim-base_mixmim-pre_8xb128-coslr-100e_in1k", "bird.jpg")
    predict["pred_class"], predict["pred_score"]       # the published weights, downloaded once
    mm.list_models()                                   # the names; mm.get_model(name) -> ParamsFile

    cfg = mm.model_config("base", num_classes=1000)
    params = mm.init_params(cfg, "classifier")
    logits = mm.classify(cfg, params, images)          # images: (B, 224, 224, 3)

The names below load their modules (and JAX) on first use, so that tools that
only need a table (the launcher reads mixmim_jax.tools.chips) import nothing heavy.
"""
import importlib

_EXPORTS = {
    "build_model": "api", "classify": "api", "draw_mask": "api", "encode": "api",
    "init_params": "api", "param_shapes": "api", "pretrain_forward": "api",
    "ARCHS": "arch", "ModelConfig": "arch", "model_config": "arch",
    "ParamsFile": "params_io", "load_params": "params_io", "save_params": "params_io",
    "get_model": "hub", "list_models": "hub", "inference_model": "inference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"mixmim_jax.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module 'mixmim_jax' has no attribute {name!r}")
