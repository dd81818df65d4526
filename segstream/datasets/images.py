"""Image files in natural order, and one listed image with its ground truth and timestamp."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".flv",
                            ".wmv"})


def natural_key(text: str) -> list[object]:
    """Sort key that orders ``frame2`` before ``frame10``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


def image_files(paths: Iterable[Path]) -> list[Path]:
    """The image files among ``paths`` (by suffix), in natural order (``2.png`` before ``10.png``)."""
    return sorted((p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))


@dataclass(frozen=True)
class ImageEntry:
    """One image of an image listing, with its ground truth and timestamp if known."""

    path: Path
    gt_path: Path | None = None
    time_s: float | None = None
