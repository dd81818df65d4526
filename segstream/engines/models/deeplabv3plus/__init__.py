"""DeepLabV3+ (Chen et al., ECCV 2018)."""
