"""The model: arch configs, fixed tables, init schemes, masking and mixing, the
objective, layers, encoder, decoder, linear probe, and the small functional API.
Pure Flax and NumPy; no device, data or file logic."""
