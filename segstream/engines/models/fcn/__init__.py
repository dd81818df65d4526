"""FCN (Long et al., CVPR 2015) on a ResNet encoder."""
