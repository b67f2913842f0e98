"""Launch MixMIM pretraining on Cloud TPU and GPU machines (stdlib only)."""
