"""torch -> ONNX, per component (base, shortcut, decoder), and precision conversion."""
