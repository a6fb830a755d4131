"""`edgecv export`: prune, distill, ONNX, int8 calibration, accuracy and speed gates, deploy bundle."""
