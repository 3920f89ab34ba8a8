"""Calibration data from shortcut trajectories and INT8 Q/DQ quantization."""
