"""Pre- and postprocessing on the inference device, with PyTorch tensors.

GPU backends (PyTorch on CUDA, TensorRT) take the frame as uint8 at the model's input
size (a quarter of the bytes of the float tensor), upload it once and normalise it on the
GPU; they take the argmax there too, so only the uint8 label map comes back to the host.
The same code runs on a CPU device, which is how it is tested on machines without a GPU.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from segstream.engines.metadata import ChannelOrder, ModelMetadata
from segstream.engines.preprocess import normalization_affine

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class DevicePreprocessor:
    """Uploads BGR uint8 images and normalises them into a device tensor.

    Args:
        metadata: the model's metadata (input size, channel order, normalisation).
        device: a ``torch.device``; a CUDA device gets a pinned staging buffer so the
            upload is a single asynchronous DMA.
        dtype: the model input's dtype (float32, or float16 for fp16 models).

    Example:
        >>> import torch
        >>> pre = DevicePreprocessor(ModelMetadata.example(), torch.device("cpu"))
        >>> pre(np.zeros((512, 1024, 3), np.uint8)).shape
        torch.Size([1, 3, 512, 1024])
    """

    def __init__(self, metadata: ModelMetadata, device: "torch.device", dtype: "torch.dtype | None" = None) -> None:
        import torch

        self._torch = torch
        h, w = metadata.input_height, metadata.input_width
        self.shape = (h, w, 3)
        gain, offset = normalization_affine(metadata)
        self._gain = torch.from_numpy(gain).view(1, 3, 1, 1).to(device)
        self._offset = torch.from_numpy(offset).view(1, 3, 1, 1).to(device)
        self._swap = metadata.channel_order is ChannelOrder.RGB
        cuda = device.type == "cuda"
        self._host = torch.empty(self.shape, dtype=torch.uint8, pin_memory=cuda)
        self._upload = torch.empty(self.shape, dtype=torch.uint8, device=device)
        self._work = torch.empty((1, 3, h, w), dtype=torch.float32, device=device)
        self.output = torch.empty((1, 3, h, w), dtype=dtype or torch.float32, device=device)

    def __call__(self, image: np.ndarray, out: "torch.Tensor | None" = None) -> "torch.Tensor":
        """Normalise one (h, w, 3) BGR uint8 image into ``out`` (default: an owned buffer).

        Raises:
            ValueError: the image is not uint8 at the model's input size.
        """
        if image.shape != self.shape or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image of shape {self.shape} (the model's input size), found "
                             f"{image.dtype} {image.shape}; resize it first (Preprocessor.resize)")
        out = self.output if out is None else out
        self._host.numpy()[...] = image
        self._upload.copy_(self._host, non_blocking=True)
        chw = self._upload.permute(2, 0, 1).unsqueeze(0)
        if self._swap:
            chw = chw.flip(1)
        self._work.copy_(chw)
        self._torch.addcmul(self._offset, self._work, self._gain, out=self._work)
        out.copy_(self._work)
        return out


def device_labels(logits: "torch.Tensor", metadata: ModelMetadata) -> "torch.Tensor":
    """(1, H, W) uint8 class ids from (1, C, H, W) logits, on the logits' device.

    The model's ignore channel, if it has one, becomes the ignore index.
    """
    import torch

    labels = logits.argmax(1)
    if metadata.ignore_channel is not None:
        labels.masked_fill_(labels == metadata.ignore_channel, metadata.ignore_index)
    return labels.to(torch.uint8)
