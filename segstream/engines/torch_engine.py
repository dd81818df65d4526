"""PyTorch backend: runs a zoo model eagerly (the reference for parity checks)."""

from __future__ import annotations

import logging
import os

import numpy as np

from segstream.engines.metadata import ModelMetadata

logger = logging.getLogger(__name__)


class TorchEngine:
    """Runs a zoo model with PyTorch and returns the same outputs as its ONNX export.

    Args:
        model: a zoo model name (see ``segstream models``).
        weights: weights file overriding the asset lookup.
        device: torch device string.
    """

    def __init__(self, model: str, weights: str | os.PathLike[str] | None = None, device: str = "cpu") -> None:
        import torch

        from segstream.engines.export import load_torch_model

        module, spec = load_torch_model(str(model), weights)
        self.metadata: ModelMetadata = spec.metadata
        self._torch = torch
        self._device = torch.device(device)
        self._module = module.to(self._device)

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; returns the logits and the label map (as the ONNX export does)."""
        torch = self._torch
        meta = self.metadata
        with torch.inference_mode():
            logits = self._module(torch.from_numpy(tensor).to(self._device))
            labels = logits.argmax(1)
            if meta.ignore_channel is not None:
                labels[labels == meta.ignore_channel] = meta.ignore_index
        return {"logits": logits.cpu().numpy(), meta.outputs[0].name: labels.to(torch.uint8).cpu().numpy()}

    def close(self) -> None:
        """Drop the module."""
        self._module = None
