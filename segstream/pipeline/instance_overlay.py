"""Drawing instances over frames: each instance in its own colour, its box, and its class
and score above the box; and the legend's rows, instances counted per class."""

from __future__ import annotations

import logging
from collections import Counter
from functools import lru_cache
from typing import Any, Sequence

import cv2
import numpy as np

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _colour_table() -> np.ndarray:
    """(65536, 3) uint8 BGR colours for every instance id (0: black, unused), hues spread
    by the golden ratio so that neighbouring ids differ."""
    ids = np.arange(1 << 16, dtype=np.float64)
    hsv = np.stack([((ids * 0.618034 + 0.1) % 1.0) * 180, np.full_like(ids, 217), np.full_like(ids, 255)], axis=1)
    table = cv2.cvtColor(hsv.astype(np.uint8)[:, None, :], cv2.COLOR_HSV2BGR)[:, 0]
    table[0] = 0
    table.flags.writeable = False
    return table


def instance_colour(instance_id: int) -> tuple[int, int, int]:
    """The BGR colour instance ``instance_id`` is drawn in (the same in every frame)."""
    return tuple(int(c) for c in _colour_table()[instance_id & 0xFFFF])  # type: ignore[return-value]


def blend_instances(frame: np.ndarray, ids: np.ndarray, opacity: float) -> np.ndarray:
    """The frame with each instance's pixels blended with its colour (others untouched)."""
    out = frame.copy()
    inside = ids > 0
    if not inside.any():
        return out
    colours = _colour_table()[ids[inside]].astype(np.float32)
    out[inside] = (frame[inside].astype(np.float32) * (1.0 - opacity) + colours * opacity).astype(np.uint8)
    return out


def draw_instances(image: np.ndarray, instances: Sequence[dict[str, Any]], scale: float,
                   label: Any) -> None:
    """Each instance's box in its colour, with ``class score`` above it (``label(image,
    text, org, scale)`` draws the text)."""
    thickness = max(int(2 * scale), 1)
    for item in reversed(list(instances)):  # the best last: on top
        x0, y0, x1, y1 = (int(round(float(v))) for v in item["box"])
        colour = instance_colour(int(item["id"]))
        cv2.rectangle(image, (x0, y0), (x1, y1), colour, thickness, cv2.LINE_AA)
        text = f"{item['label']} {float(item['score']):.2f}"
        label(image, text, (x0 + thickness, max(y0 - 4 * thickness, int(16 * scale))), 0.6 * scale)


def instance_counts(instances: Sequence[dict[str, Any]]) -> list[tuple[str, int, tuple[int, int, int]]]:
    """(class label, instances of it, colour of its best) per class, most first."""
    counts = Counter(str(i["label"]) for i in instances)
    best: dict[str, int] = {}
    for item in instances:
        best.setdefault(str(item["label"]), int(item["id"]))
    return [(name, n, instance_colour(best[name])) for name, n in counts.most_common()]
