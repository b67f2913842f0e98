"""Evaluators: accuracy of a classifier over a split (and, in pretraining, of
representation probes)."""
