"""torch -> ONNX per component, graph clean-up, and precision in the graph: FP16 conversion, INT8 Q/DQ
with calibration drawn from the sampler."""
