"""Inference backends behind one ``Engine`` contract (``base.py``): ONNX Runtime, PyTorch and TensorRT."""
