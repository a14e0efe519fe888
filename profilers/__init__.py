"""Profilers: backends, shape enumeration, measurement, remote bundles, ONNX export."""
