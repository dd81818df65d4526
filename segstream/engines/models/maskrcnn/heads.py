"""The heads of Mask R-CNN, named as torchvision names them: the RPN head
(``rpn.head.conv``, ``cls_logits``, ``bbox_pred``), the box head (``fc6``, ``fc7``) and
predictor (``cls_score``, ``bbox_pred``), the mask head (``mask_fcn1``-``4``) and
predictor (``conv5_mask``, ``mask_fcn_logits``)."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class RPNHead(nn.Module):
    """A shared 3x3 convolution, then per anchor an objectness logit and 4 box deltas."""

    def __init__(self, channels: int, anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)
        self.cls_logits = nn.Conv2d(channels, anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, anchors * 4, 1)
        for conv in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


class TwoMLPHead(nn.Module):
    """Two fully connected layers over the flattened RoI features."""

    def __init__(self, in_features: int, representation: int = 1024) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation)
        self.fc7 = nn.Linear(representation, representation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class FastRCNNPredictor(nn.Module):
    """Class logits and per-class box deltas."""

    def __init__(self, in_features: int, classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, classes)
        self.bbox_pred = nn.Linear(in_features, classes * 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class MaskRCNNHeads(nn.Sequential):
    """Four 3x3 convolutions with ReLU over the 14x14 RoI features."""

    def __init__(self, channels: int, layers: tuple[int, ...] = (256, 256, 256, 256)) -> None:
        modules: OrderedDict[str, nn.Module] = OrderedDict()
        previous = channels
        for k, width in enumerate(layers, 1):
            modules[f"mask_fcn{k}"] = nn.Conv2d(previous, width, 3, 1, 1)
            modules[f"relu{k}"] = nn.ReLU(inplace=True)
            previous = width
        super().__init__(modules)
        for name, param in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")


class MaskRCNNPredictor(nn.Sequential):
    """A 2x transposed convolution, then one 28x28 mask logit map per class."""

    def __init__(self, channels: int, reduced: int, classes: int) -> None:
        super().__init__(OrderedDict([
            ("conv5_mask", nn.ConvTranspose2d(channels, reduced, 2, 2, 0)),
            ("relu", nn.ReLU(inplace=True)),
            ("mask_fcn_logits", nn.Conv2d(reduced, classes, 1, 1, 0)),
        ]))
        for name, param in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")
