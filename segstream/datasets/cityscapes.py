"""Cityscapes label facts: the 19 train-id classes and their official colours."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
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


@dataclass(frozen=True)
class Label:
    """One row of the official Cityscapes label table (``cityscapesscripts.helpers.labels``).

    Attributes:
        name: label name.
        id: label id, as in ``*_gtFine_labelIds.png`` (KITTI semantics and KITTI-360 use
            the same ids).
        train_id: 0-18, or ``IGNORE_INDEX`` for labels left out of training and evaluation.
        category: one of ``CATEGORIES`` (or ``void``).
        ignore_in_eval: left out of the evaluation.
        color: RGB colour of ``*_gtFine_color.png``.
    """

    name: str
    id: int
    train_id: int
    category: str
    ignore_in_eval: bool
    color: tuple[int, int, int]


_I = IGNORE_INDEX
LABELS: tuple[Label, ...] = (
    Label("unlabeled", 0, _I, "void", True, (0, 0, 0)),
    Label("ego vehicle", 1, _I, "void", True, (0, 0, 0)),
    Label("rectification border", 2, _I, "void", True, (0, 0, 0)),
    Label("out of roi", 3, _I, "void", True, (0, 0, 0)),
    Label("static", 4, _I, "void", True, (0, 0, 0)),
    Label("dynamic", 5, _I, "void", True, (111, 74, 0)),
    Label("ground", 6, _I, "void", True, (81, 0, 81)),
    Label("road", 7, 0, "flat", False, (128, 64, 128)),
    Label("sidewalk", 8, 1, "flat", False, (244, 35, 232)),
    Label("parking", 9, _I, "flat", True, (250, 170, 160)),
    Label("rail track", 10, _I, "flat", True, (230, 150, 140)),
    Label("building", 11, 2, "construction", False, (70, 70, 70)),
    Label("wall", 12, 3, "construction", False, (102, 102, 156)),
    Label("fence", 13, 4, "construction", False, (190, 153, 153)),
    Label("guard rail", 14, _I, "construction", True, (180, 165, 180)),
    Label("bridge", 15, _I, "construction", True, (150, 100, 100)),
    Label("tunnel", 16, _I, "construction", True, (150, 120, 90)),
    Label("pole", 17, 5, "object", False, (153, 153, 153)),
    Label("polegroup", 18, _I, "object", True, (153, 153, 153)),
    Label("traffic light", 19, 6, "object", False, (250, 170, 30)),
    Label("traffic sign", 20, 7, "object", False, (220, 220, 0)),
    Label("vegetation", 21, 8, "nature", False, (107, 142, 35)),
    Label("terrain", 22, 9, "nature", False, (152, 251, 152)),
    Label("sky", 23, 10, "sky", False, (70, 130, 180)),
    Label("person", 24, 11, "human", False, (220, 20, 60)),
    Label("rider", 25, 12, "human", False, (255, 0, 0)),
    Label("car", 26, 13, "vehicle", False, (0, 0, 142)),
    Label("truck", 27, 14, "vehicle", False, (0, 0, 70)),
    Label("bus", 28, 15, "vehicle", False, (0, 60, 100)),
    Label("caravan", 29, _I, "vehicle", True, (0, 0, 90)),
    Label("trailer", 30, _I, "vehicle", True, (0, 0, 110)),
    Label("train", 31, 16, "vehicle", False, (0, 80, 100)),
    Label("motorcycle", 32, 17, "vehicle", False, (0, 0, 230)),
    Label("bicycle", 33, 18, "vehicle", False, (119, 11, 32)),
    Label("license plate", -1, -1, "vehicle", True, (0, 0, 142)),
)

# The seven categories the Cityscapes benchmark scores (void is not one of them).
CATEGORIES: tuple[str, ...] = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")

# Cityscapes label ids to train ids (0-18, 255 = ignore).
LABEL_TO_TRAIN_ID: dict[int, int] = {lab.id: lab.train_id for lab in LABELS if 0 <= lab.train_id < _I}
TRAIN_ID_TO_LABEL_ID: dict[int, int] = {train: label for label, train in LABEL_TO_TRAIN_ID.items()}
# The category of each train id, in train-id order.
TRAIN_ID_CATEGORY: tuple[str, ...] = tuple(
    next(lab.category for lab in LABELS if lab.train_id == train) for train in range(len(CLASSES)))


@lru_cache(maxsize=None)
def _lookup(table: tuple[tuple[int, int], ...], default: int) -> "np.ndarray":
    import numpy as np

    lut = np.full(256, default, np.uint8)
    for key, value in table:
        lut[key] = value
    return lut


def label_ids_to_train_ids(label_ids: "np.ndarray") -> "np.ndarray":
    """Map a Cityscapes label-id map to train ids (unlisted ids become ``IGNORE_INDEX``)."""
    return _lookup(tuple(LABEL_TO_TRAIN_ID.items()), IGNORE_INDEX)[label_ids]


UNLABELED = 0  # the label id for pixels without a class (ignored in evaluation)


def train_ids_to_label_ids(train_ids: "np.ndarray") -> "np.ndarray":
    """Map train ids (0-18) to Cityscapes label ids; anything else becomes 0 (unlabeled)."""
    return _lookup(tuple(TRAIN_ID_TO_LABEL_ID.items()), UNLABELED)[train_ids]
