"""Evaluation and benchmarks: FD and class accuracy, the quality sweep, the speed harness, the
plain-PyTorch baseline loop, and the tiny-scenes judge."""
