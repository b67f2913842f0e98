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
    "build_model": "model.api", "classify": "model.api", "draw_mask": "model.api",
    "encode": "model.api", "init_params": "model.api", "param_shapes": "model.api",
    "pretrain_forward": "model.api",
    "ARCHS": "model.arch", "ModelConfig": "model.arch", "model_config": "model.arch",
    "ParamsFile": "weights.params_file", "load_params": "weights.params_file",
    "save_params": "weights.params_file",
    "get_model": "weights.hub", "list_models": "weights.hub", "inference_model": "inference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"mixmim_jax.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module 'mixmim_jax' has no attribute {name!r}")
