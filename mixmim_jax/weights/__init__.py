"""Weights in and out: the PyTorch name table and checkpoint reading and writing,
our params files, any source a model can start from, the published-model
registry and its download cache."""
