"""Mask R-CNN's architecture: torchvision's layout key for key (so its weights load), its
box operations against their definitions, and a forward pass that detects."""

from __future__ import annotations

import pytest
import torch

from segstream.engines.models.maskrcnn import MaskRCNN, MaskRCNNConfig
from segstream.engines.models.maskrcnn.ops import batched_nms, box_iou, nms, roi_align, roi_levels
from segstream.engines.models.maskrcnn.weights import segstream_keys

# torchvision documents maskrcnn_resnet50_fpn with 44,401,393 parameters (its frozen
# batch norms hold buffers, not parameters).
TORCHVISION_R50_PARAMETERS = 44_401_393


def torchvision_layout() -> dict[str, tuple[int, ...]]:
    """The state dict torchvision's maskrcnn_resnet50_fpn saves (the official COCO weights'
    layout), built from its module structure: resnet50 body with frozen batch norm, FPN,
    RPN head, TwoMLPHead, FastRCNNPredictor, MaskRCNNHeads and MaskRCNNPredictor."""
    keys: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out: int, inp: int, k: int, bias: bool = False) -> None:
        keys[f"{name}.weight"] = (out, inp, k, k)
        if bias:
            keys[f"{name}.bias"] = (out,)

    def bn(name: str, channels: int) -> None:
        for part in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{name}.{part}"] = (channels,)

    body = "backbone.body"
    conv(f"{body}.conv1", 64, 3, 7)
    bn(f"{body}.bn1", 64)
    inp = 64
    for layer, blocks in enumerate((3, 4, 6, 3), 1):
        width = 64 * 2 ** (layer - 1)
        for b in range(blocks):
            p = f"{body}.layer{layer}.{b}"
            conv(f"{p}.conv1", width, inp, 1)
            bn(f"{p}.bn1", width)
            conv(f"{p}.conv2", width, width, 3)
            bn(f"{p}.bn2", width)
            conv(f"{p}.conv3", width * 4, width, 1)
            bn(f"{p}.bn3", width * 4)
            if b == 0:
                conv(f"{p}.downsample.0", width * 4, inp, 1)
                bn(f"{p}.downsample.1", width * 4)
            inp = width * 4
    for i, channels in enumerate((256, 512, 1024, 2048)):
        conv(f"backbone.fpn.inner_blocks.{i}", 256, channels, 1, bias=True)
        conv(f"backbone.fpn.layer_blocks.{i}", 256, 256, 3, bias=True)
    conv("rpn.head.conv", 256, 256, 3, bias=True)
    conv("rpn.head.cls_logits", 3, 256, 1, bias=True)
    conv("rpn.head.bbox_pred", 12, 256, 1, bias=True)
    keys.update({"roi_heads.box_head.fc6.weight": (1024, 256 * 7 * 7), "roi_heads.box_head.fc6.bias": (1024,),
                 "roi_heads.box_head.fc7.weight": (1024, 1024), "roi_heads.box_head.fc7.bias": (1024,),
                 "roi_heads.box_predictor.cls_score.weight": (91, 1024), "roi_heads.box_predictor.cls_score.bias": (91,),
                 "roi_heads.box_predictor.bbox_pred.weight": (364, 1024),
                 "roi_heads.box_predictor.bbox_pred.bias": (364,)})
    for k in range(1, 5):
        conv(f"roi_heads.mask_head.mask_fcn{k}", 256, 256, 3, bias=True)
    keys["roi_heads.mask_predictor.conv5_mask.weight"] = (256, 256, 2, 2)  # ConvTranspose2d: (in, out, kh, kw)
    keys["roi_heads.mask_predictor.conv5_mask.bias"] = (256,)
    conv("roi_heads.mask_predictor.mask_fcn_logits", 91, 256, 1, bias=True)
    return keys


def test_resnet50_fpn_matches_torchvision_key_for_key_and_shape_for_shape():
    model = MaskRCNN(MaskRCNNConfig())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == torchvision_layout()
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_R50_PARAMETERS


def test_newer_torchvision_names_load_too():
    model = MaskRCNN(MaskRCNNConfig(depth=18, classes=3))
    state = model.state_dict()
    modern = {}
    for key, value in state.items():  # as torchvision >= 0.13 saves them
        key = key.replace("rpn.head.conv.", "rpn.head.conv.0.0.")
        for kind in ("inner_blocks", "layer_blocks"):
            if f"fpn.{kind}." in key:
                head, tail = key.rsplit(".", 1)
                key = f"{head}.0.{tail}"
        if "mask_head.mask_fcn" in key:
            number, tail = key.split("mask_head.mask_fcn", 1)[1].split(".")
            key = f"roi_heads.mask_head.{int(number) - 1}.0.{tail}"
        modern[key] = value.clone() + 1
    modern["backbone.body.bn1.num_batches_tracked"] = torch.tensor(0)
    fresh = MaskRCNN(MaskRCNNConfig(depth=18, classes=3))
    fresh.load_state_dict(segstream_keys(modern), strict=True)
    assert all(torch.equal(fresh.state_dict()[k], state[k] + 1) for k in state)


def test_roi_align_on_a_linear_ramp_is_exact():
    # bilinear sampling reproduces a linear function, so each bin is the function at its centre
    height, width = 20, 30
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    feature = torch.stack([xs, ys, 2 * xs + 3 * ys])
    rois = torch.tensor([[4.0, 2.0, 20.0, 14.0], [0.0, 0.0, 10.0, 10.0]])
    out = roi_align(feature, rois, size=4, scale=0.5)  # the map is at half the image's resolution
    for k, (x0, y0, x1, y1) in enumerate((rois * 0.5).tolist()):
        bw, bh = (x1 - x0) / 4, (y1 - y0) / 4
        cx = torch.tensor([x0 + (j + 0.5) * bw for j in range(4)])
        cy = torch.tensor([y0 + (i + 0.5) * bh for i in range(4)])
        assert torch.allclose(out[k, 0], cx.expand(4, 4), atol=1e-5)
        assert torch.allclose(out[k, 1], cy[:, None].expand(4, 4), atol=1e-5)
        assert torch.allclose(out[k, 2], 2 * cx[None, :] + 3 * cy[:, None], atol=1e-4)


def test_nms_and_levels():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0, 0]), 0.5).tolist() == [3, 1, 2]
    assert torch.allclose(box_iou(boxes[:1], boxes[1:2]), torch.tensor([[81 / 100]]))
    sides = torch.tensor([16.0, 112.0, 224.0, 448.0, 2000.0])
    rois = torch.stack([torch.zeros(5), torch.zeros(5), sides, sides], 1)
    assert roi_levels(rois).tolist() == [0, 1, 2, 3, 3]  # P2 ... P5 (canonical 224 -> P4)


@pytest.mark.parametrize("depth", [18, 50])
def test_forward_detects_and_pads(depth):
    torch.manual_seed(0)
    model = MaskRCNN(MaskRCNNConfig(depth=depth, classes=3, detections=10)).eval()
    with torch.no_grad():  # make class 1 win everywhere: every proposal becomes a candidate
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-5.0, 5.0, -5.0]))
    images = torch.randn(2, 3, 128, 192)
    with torch.no_grad():
        out = model(images)
    assert out["boxes"].shape == (2, 10, 4) and out["masks"].shape == (2, 10, 28, 28)
    for i in range(2):
        n = int(out["count"][i])
        assert 0 < n <= 10
        assert (out["classes"][i, :n] == 1).all() and (out["classes"][i, n:] == 0).all()
        boxes = out["boxes"][i, :n]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 192).all() and (boxes[:, 3] <= 128).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        scores = out["scores"][i, :n]
        assert ((scores > 0.05) & (scores <= 1)).all() and torch.equal(scores, scores.sort(descending=True).values)
        masks = out["masks"][i, :n]
        assert ((masks >= 0) & (masks <= 1)).all() and (out["masks"][i, n:] == 0).all()


def _bilinear(feature: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """torchvision's bilinear_interpolate (roi_align_kernel.cpp), one sample, literally."""
    _, height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(feature.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * feature[:, y_low, x_low] + hy * lx * feature[:, y_low, x_high]
            + ly * hx * feature[:, y_high, x_low] + ly * lx * feature[:, y_high, x_high])


def test_roi_align_at_the_borders_follows_torchvision():
    torch.manual_seed(1)
    feature = torch.randn(2, 6, 7)
    rois = torch.tensor([[-3.0, -2.0, 5.0, 4.0], [3.0, 2.0, 9.5, 8.0], [6.0, 5.5, 7.0, 6.5], [-9.0, -9.0, -4.0, -3.0]])
    size, sampling = 3, 2
    out = roi_align(feature, rois, size, 1.0, sampling)
    for k, (x0, y0, x1, y1) in enumerate(rois.tolist()):
        bw, bh = max(x1 - x0, 1.0) / size, max(y1 - y0, 1.0) / size
        for i in range(size):
            for j in range(size):
                samples = [_bilinear(feature, y0 + i * bh + (a + 0.5) * bh / sampling, x0 + j * bw + (b + 0.5) * bw / sampling)
                           for a in range(sampling) for b in range(sampling)]
                assert torch.allclose(out[k, :, i, j], torch.stack(samples).mean(0), atol=1e-5), (k, i, j)


@pytest.mark.slow
def test_onnx_export_uses_standard_ops_and_matches_torch(tmp_path):
    import collections

    import numpy as np
    import onnx
    import onnxruntime as ort

    from segstream.engines.models.maskrcnn.export import OUTPUTS, export_onnx

    torch.manual_seed(0)
    model = MaskRCNN(MaskRCNNConfig(depth=18, classes=3, detections=10)).eval()
    with torch.no_grad():  # scores that differ from one detection to the next (ties would order arbitrarily)
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-1.0, 1.5, -1.0]))
        model.roi_heads.box_predictor.cls_score.weight.mul_(50)
    path = export_onnx(model, tmp_path / "maskrcnn.onnx", 128, 192)
    graph = onnx.load(str(path)).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    assert ops["NonMaxSuppression"] == 2 and ops["RoiAlign"] == 8  # RPN and boxes; box and mask pooling x 4 levels
    assert all(node.domain in ("", "ai.onnx") for node in graph.node)  # no custom operator
    image = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        expected = model(image)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(OUTPUTS, session.run(None, {"image": image.numpy()})))
    assert int(got["count"][0]) == int(expected["count"][0]) > 0
    assert np.array_equal(got["classes"], expected["classes"].numpy())
    assert np.abs(got["boxes"] - expected["boxes"].numpy()).max() < 1.0  # within a pixel
    assert np.abs(got["scores"] - expected["scores"].numpy()).max() < 1e-3
    assert np.abs(got["masks"] - expected["masks"].numpy()).max() < 1e-3


def _instance_metadata(height: int, width: int):
    from segstream.engines.metadata import ChannelOrder, ModelMetadata, NormalizeOrder, OutputKind, OutputSpec

    outputs = tuple(OutputSpec(name, kind) for name, kind in (
        ("boxes", OutputKind.INSTANCE_BOXES), ("scores", OutputKind.INSTANCE_SCORES),
        ("classes", OutputKind.INSTANCE_CLASSES), ("masks", OutputKind.INSTANCE_MASKS),
        ("count", OutputKind.INSTANCE_COUNT)))
    return ModelMetadata(name="maskrcnn-test", input_name="image", input_width=width, input_height=height,
                         channel_order=ChannelOrder.RGB, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                         scale=1 / 255, normalize_order=NormalizeOrder.SCALE_THEN_STANDARDIZE,
                         class_names=("person", "car"), palette=((0, 0, 255), (255, 0, 0)), outputs=outputs)


def test_instances_in_frame_pixels_with_ids_and_classes():
    import numpy as np

    from segstream.engines.instance_results import instances_from_outputs

    meta = _instance_metadata(64, 128)
    d = 5
    boxes = np.zeros((1, d, 4), np.float32)
    boxes[0, :4] = [[10, 10, 40, 30], [30, 20, 60, 50], [0, 0, 5, 5], [100, 40, 128, 64]]
    scores = np.array([[0.6, 0.9, 0.3, 0.8, 0.0]], np.float32)  # the third is below the threshold
    classes = np.array([[1, 2, 1, 3, 0]], np.int64)  # the fourth names no class of the model
    masks = np.ones((1, d, 28, 28), np.float32)
    outputs = {"boxes": boxes, "scores": scores, "classes": classes, "masks": masks, "count": np.array([4])}
    detections, ids, semantic = instances_from_outputs(outputs, meta, (128, 256))  # the frame is twice the input
    assert [(x.id, x.label, x.class_id) for x in detections] == [(1, "car", 2), (2, "person", 1)]  # best first
    assert detections[0].box == (60.0, 40.0, 120.0, 100.0) and detections[1].box == (20.0, 20.0, 80.0, 60.0)
    assert ids.dtype == np.uint16 and ids.shape == (128, 256) and semantic.shape == (128, 256)
    assert ids[25, 25] == 2 and semantic[25, 25] == 0  # the person alone
    assert ids[50, 70] == 1 and semantic[50, 70] == 1  # the overlap: the better (car) owns it
    assert ids[5, 5] == 0 and semantic[5, 5] == meta.ignore_index
    assert set(np.unique(ids)) == {0, 1, 2} and detections[0].to_json()["box"] == [60.0, 40.0, 120.0, 100.0]


def test_box_coding_round_trips_and_matching_follows_its_thresholds():
    from segstream.engines.models.maskrcnn.losses import BACKGROUND, IGNORED, encode_boxes, match
    from segstream.engines.models.maskrcnn.ops import decode_boxes

    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0], [0.0, 0.0, 8.0, 30.0]])
    targets = torch.tensor([[12.0, 8.0, 60.0, 44.0], [1.0, 2.0, 5.0, 20.0]])
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        decoded = decode_boxes(encode_boxes(targets, boxes, weights), boxes, weights)[:, 0]
        torch.testing.assert_close(decoded, targets)
    iou = torch.tensor([[0.9, 0.5, 0.1, 0.2], [0.1, 0.2, 0.25, 0.05]])
    assert match(iou, 0.7, 0.3, best_too=False).tolist() == [0, IGNORED, BACKGROUND, BACKGROUND]
    # each ground truth's best anchor is its own whatever the IoU (the second's is 0.25)
    assert match(iou, 0.7, 0.3, best_too=True).tolist() == [0, IGNORED, 1, BACKGROUND]
    assert match(torch.zeros((0, 3)), 0.7, 0.3, best_too=True).tolist() == [BACKGROUND] * 3


def test_the_losses_are_finite_and_train_every_head_with_and_without_objects():
    from segstream.engines.models.maskrcnn.losses import SamplingConfig, Targets, maskrcnn_losses

    torch.manual_seed(0)
    model = MaskRCNN(MaskRCNNConfig(depth=18, channels=32, representation=64, frozen_norm=False, pre_nms=100,
                                    post_nms=50)).train()
    images = torch.randn(2, 3, 64, 96)
    mask = torch.zeros(1, 64, 96)
    mask[0, 10:40, 20:60] = 1
    targets = [Targets(torch.tensor([[20.0, 10.0, 60.0, 40.0]]), torch.tensor([3]), mask),
               Targets(torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64), torch.zeros((0, 64, 96)))]
    losses = maskrcnn_losses(model, images, targets, SamplingConfig(rois=32))
    assert set(losses) == {"rpn_objectness", "rpn_box", "classifier", "box", "mask"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["mask"] > 0
    sum(losses.values()).backward()
    for name in ("rpn.head.cls_logits.weight", "roi_heads.box_predictor.cls_score.weight",
                 "roi_heads.mask_predictor.mask_fcn_logits.weight", "backbone.body.conv1.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name
