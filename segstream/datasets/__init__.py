"""Data on disk that every part reads: image listings in natural order, the dataset
layouts (Cityscapes, KITTI raw, KITTI semantics, KITTI-360) and the Cityscapes label table.

The pipeline replays these as sources, training reads its samples from them and offline
evaluation its ground truth; this package uses none of those.
"""
