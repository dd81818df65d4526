"""Cityscapes label facts: the 19 train-id classes and their official colours."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# Train ids 0-18, in order. Colours are the official Cityscapes RGB colours.
CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("road", (128, 64, 128)),
    ("sidewalk", (244, 35, 232)),
    ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)),
    ("fence", (190, 153, 153)),
    ("pole", (153, 153, 153)),
    ("traffic light", (250, 170, 30)),
    ("traffic sign", (220, 220, 0)),
    ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)),
    ("sky", (70, 130, 180)),
    ("person", (220, 20, 60)),
    ("rider", (255, 0, 0)),
    ("car", (0, 0, 142)),
    ("truck", (0, 0, 70)),
    ("bus", (0, 60, 100)),
    ("train", (0, 80, 100)),
    ("motorcycle", (0, 0, 230)),
    ("bicycle", (119, 11, 32)),
)

CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in CLASSES)
PALETTE_BGR: tuple[tuple[int, int, int], ...] = tuple((b, g, r) for _, (r, g, b) in CLASSES)
IGNORE_INDEX = 255
ROAD = CLASS_NAMES.index("road")

# Cityscapes label ids (0-33, as in *_gtFine_labelIds.png, KITTI semantics and KITTI-360)
# to train ids (0-18, 255 = ignore).
LABEL_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}


def label_ids_to_train_ids(label_ids: "np.ndarray") -> "np.ndarray":
    """Map a Cityscapes label-id map to train ids (unlisted ids become ``IGNORE_INDEX``)."""
    import numpy as np

    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for label, train in LABEL_TO_TRAIN_ID.items():
        lut[label] = train
    return lut[label_ids]
