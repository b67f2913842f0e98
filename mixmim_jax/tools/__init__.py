"""Measurement and reference tools, apart from the runtime: step and kernel
benchmarks, TPU ahead-of-time compiles, HLO statistics, the chip table, and the
PyTorch reference builder the tests and benchmarks compare against."""
