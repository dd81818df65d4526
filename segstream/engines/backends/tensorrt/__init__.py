"""TensorRT: engine building and caching, and the inference backend.

Nothing here imports ``tensorrt`` at module load: ``versions.import_tensorrt`` does, after
``cuda_probe`` has confirmed a usable GPU (a TensorRT runtime created without a driver can
crash the interpreter instead of raising).
"""
