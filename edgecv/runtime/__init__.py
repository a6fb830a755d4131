"""The device half: loads bundles and runs them with TensorRT or ONNX Runtime. Never imports torch."""
