"""Mask R-CNN (He et al., ICCV 2017): ResNet-FPN backbone, RPN, RoIAlign, box and mask
heads, laid out so that a state dict of torchvision's ``maskrcnn_resnet50_fpn`` (the
official COCO weights included) loads key for key."""

from segstream.engines.models.maskrcnn.model import MaskRCNN, MaskRCNNConfig

__all__ = ["MaskRCNN", "MaskRCNNConfig"]
