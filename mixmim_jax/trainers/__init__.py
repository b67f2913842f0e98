"""The two trainer programs built from training/: pretraining and fine-tuning."""
