"""Inference: backends behind one Engine contract (backends/), the model zoo (models/), model
metadata, metadata-driven preprocessing, ONNX export and training."""
