"""DDRNet-23-slim (Hong et al., 2021): the real-time Cityscapes network of the zoo.

Why DDRNet-23-slim over BiSeNetV2 and PIDNet-S: 77.4 mIoU on Cityscapes val at about 100
FPS (2080 Ti, 2048x1024) from 5.7 M parameters; it is plain 3x3 convolutions, residual
blocks, average pooling and bilinear resizes, so it exports to standard ONNX operators and
builds into TensorRT without plugins; and its two-branch design (a high-resolution branch
at 1/8 kept through the network, fused both ways with a deep low-resolution branch) is
easy to follow in one file. PIDNet-S is a little more accurate but adds a third branch and
boundary-attention fusion; BiSeNetV2's aggregation layer and booster heads add more moving
parts for less accuracy.
"""
