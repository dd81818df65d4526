"""ESPNet: checkpoints load key for key; ONNX Runtime agrees with PyTorch; masks look right."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import CITYSCAPES_FRAMES, DATA

from segstream.datasets import cityscapes
from segstream.engines.backends.base import labels_from_outputs, load_engine
from segstream.engines.models.espnet import ESPNet
from segstream.engines.preprocess import Preprocessor


@pytest.mark.parametrize("q, filename", [(8, "espnet_p_2_q_8.pth"), (3, "espnet_p_2_q_3.pth")])
def test_checkpoint_loads_with_no_missing_or_unexpected_keys(q, filename):
    state = torch.load(DATA / filename, map_location="cpu", weights_only=True)
    model = ESPNet(classes=20, p=2, q=q)
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert {k: tuple(v.shape) for k, v in model.state_dict().items() if "num_batches" not in k} == \
        {k: tuple(v.shape) for k, v in state.items()}


def test_output_is_20_channels_at_input_resolution():
    model = ESPNet(classes=20, p=2, q=3).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 128, 256)).shape == (1, 20, 128, 256)


def test_onnxruntime_agrees_with_pytorch_on_a_cityscapes_frame(espnet_onnx):
    ort_engine = load_engine(espnet_onnx, "onnxruntime")
    torch_engine = load_engine("espnet-cityscapes", "torch")
    tensor = Preprocessor(ort_engine.metadata)(cv2.imread(str(CITYSCAPES_FRAMES[-1])))
    ours = labels_from_outputs(ort_engine.infer(tensor), ort_engine.metadata)
    reference = labels_from_outputs(torch_engine.infer(tensor), torch_engine.metadata)
    assert ours.shape == (512, 1024) and ours.dtype == np.uint8
    assert (ours == reference).mean() >= 0.999
    # the graph maps ESPNet's 20th channel to the ignore label, like the logits path does
    assert set(np.unique(ours)) <= set(range(19)) | {255}


@pytest.mark.parametrize("path", CITYSCAPES_FRAMES, ids=lambda p: p.stem)
def test_road_covers_the_lower_middle_of_cityscapes_frames(espnet_onnx, path):
    engine = load_engine(espnet_onnx, "onnxruntime")
    labels = labels_from_outputs(engine.infer(Preprocessor(engine.metadata)(cv2.imread(str(path)))), engine.metadata)
    h, w = labels.shape
    # below the horizon and above the ego vehicle's bonnet, in the middle third
    window = labels[int(0.62 * h):int(0.75 * h), w // 3: 2 * w // 3]
    assert (window == cityscapes.ROAD).mean() > 0.6
    # and the sky or buildings sit on top, not road
    assert (labels[: h // 5] == cityscapes.ROAD).mean() < 0.05


def test_masks_agree_with_cityscapes_ground_truth(espnet_onnx):
    """Pixel accuracy on the frame with fine ground truth (colour-coded) is that of a real model."""
    engine = load_engine(espnet_onnx, "onnxruntime")
    image = cv2.imread(str(DATA / "frankfurt_000001_058914_leftImg8bit.png"))
    gt_colour = cv2.imread(str(DATA / "frankfurt_000001_058914_gtFine_color.png"))[:, :, :3]
    labels = labels_from_outputs(engine.infer(Preprocessor(engine.metadata)(image)), engine.metadata)
    labels = cv2.resize(labels, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    gt = np.full(gt_colour.shape[:2], 255, np.uint8)
    for train_id, bgr in enumerate(cityscapes.PALETTE_BGR):
        gt[(gt_colour == bgr).all(axis=2)] = train_id
    valid = gt != 255
    accuracy = (labels[valid] == gt[valid]).mean()
    assert accuracy > 0.85, accuracy
