"""COCO's detection classes and a palette for instance models (no heavy imports: the zoo
lists models from here)."""

from __future__ import annotations

import colorsys

# COCO's 91 category ids of the detection models (torchvision's order): index = id - 1,
# "N/A" for the ids COCO 2017 does not use.
COCO_CLASS_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
    "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop",
    "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)



def coco_palette(count: int) -> tuple[tuple[int, int, int], ...]:
    """``count`` distinct BGR colours, hues spread by the golden ratio."""
    colours = []
    for k in range(count):
        r, g, b = colorsys.hsv_to_rgb(k * 0.618034 % 1.0, 0.8, 0.9)
        colours.append((round(b * 255), round(g * 255), round(r * 255)))
    return tuple(colours)
