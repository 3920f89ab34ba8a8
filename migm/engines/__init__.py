"""Engines and bundles: ONNX Runtime sessions, TensorRT engines, the `NAME.plan/` bundle."""
