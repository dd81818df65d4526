"""Ground truth in the forms datasets ship it: Cityscapes label ids (also KITTI semantics
and KITTI-360) mapped to train ids, and colour-coded ``*_gtFine_color.png`` turned back into
``*_gtFine_labelIds.png``."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np

from segstream.datasets.cityscapes import LABELS, label_ids_to_train_ids
from segstream.datasets.layouts import GT_CITYSCAPES_IDS

logger = logging.getLogger(__name__)

COLOR_SUFFIX = "_gtFine_color.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"


def _color_table() -> dict[int, int]:
    """Packed RGB -> label id. A colour several labels share goes to the first of them in
    the official table: black to 0 (unlabeled; ids 0-4 are all ignored in evaluation),
    (153, 153, 153) to pole (not polegroup), (0, 0, 142) to car (not license plate)."""
    table: dict[int, int] = {}
    for label in LABELS:
        if label.id >= 0:
            r, g, b = label.color
            table.setdefault((r << 16) | (g << 8) | b, label.id)
    return table


COLOR_TO_LABEL_ID = _color_table()


def color_to_label_ids(color_bgr: np.ndarray, what: str = "image") -> np.ndarray:
    """Label ids of a colour-coded ground truth (BGR as OpenCV reads it; alpha ignored).

    Raises:
        ValueError: a pixel's colour is not in the Cityscapes label table (the message
            names the colours and their pixel counts).
    """
    if color_bgr.ndim != 3 or color_bgr.shape[2] not in (3, 4):
        raise ValueError(f"{what}: expected a colour image (H, W, 3), found shape {color_bgr.shape}")
    b, g, r = (color_bgr[:, :, i].astype(np.int64) for i in range(3))
    packed = (r << 16) | (g << 8) | b
    colors, inverse = np.unique(packed.ravel(), return_inverse=True)
    ids = np.array([COLOR_TO_LABEL_ID.get(int(c), -1) for c in colors], np.int64)
    unknown = colors[ids < 0]
    if unknown.size:
        counts = np.bincount(inverse, minlength=colors.size)[ids < 0]
        listed = ", ".join(f"RGB{(int(c) >> 16, (int(c) >> 8) & 255, int(c) & 255)} x{int(n)}"
                           for c, n in list(zip(unknown, counts))[:5])
        raise ValueError(f"{what}: {unknown.size} colour(s) are not Cityscapes label colours ({listed}); expected "
                         f"the official colour coding without antialiasing (a *_gtFine_color.png)")
    return ids[inverse].reshape(packed.shape).astype(np.uint8)


def label_ids_path(color_path: Path, out_dir: Path | None = None) -> Path:
    """Where the label-id file of a colour file goes: ``NAME_gtFine_labelIds.png`` beside
    it, or in ``out_dir``."""
    name = color_path.name
    stem = name[: -len(COLOR_SUFFIX)] if name.endswith(COLOR_SUFFIX) else color_path.stem
    return (out_dir or color_path.parent) / f"{stem}{LABEL_IDS_SUFFIX}"


def convert_color_file(color_path: Path, out_dir: Path | None = None) -> Path:
    """Write the label ids of one colour-coded ground truth file; returns the new path.

    Raises:
        ValueError: unreadable file or colours outside the label table.
    """
    image = cv2.imread(str(color_path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read {color_path}; expected a PNG such as NAME{COLOR_SUFFIX}")
    out = label_ids_path(color_path, out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), color_to_label_ids(image, str(color_path))):
        raise ValueError(f"cannot write {out}")
    logger.info("%s -> %s", color_path, out)
    return out


def cityscapes_layout(color_path: Path, root: Path, split: str = "val") -> tuple[Path, Path | None]:
    """Put one colour-coded ground truth file into a Cityscapes layout under ``root``, so
    that ``--source cityscapes:ROOT:SPLIT --eval`` replays and scores it: its label ids as
    ``gtFine/SPLIT/CITY/NAME_gtFine_labelIds.png`` and, where ``NAME_leftImg8bit.png`` lies
    beside it, a copy of that image as ``leftImg8bit/SPLIT/CITY/NAME_leftImg8bit.png``
    (CITY: the name's first part, ``frankfurt_000001_058914`` -> ``frankfurt``).

    Returns:
        ``(label ids path, image path or None)``.

    Raises:
        ValueError: a name that is not ``CITY_NNNNNN_NNNNNN_gtFine_color.png``, or an
            unreadable file.
    """
    name = color_path.name
    stem = name[: -len(COLOR_SUFFIX)] if name.endswith(COLOR_SUFFIX) else ""
    parts = stem.split("_")
    if len(parts) != 3 or not parts[0] or not all(p.isdigit() for p in parts[1:]):
        raise ValueError(f"{color_path}: a Cityscapes layout needs names like frankfurt_000001_058914{COLOR_SUFFIX}, "
                         f"found {name!r}; without --cityscapes-root any name converts")
    city = parts[0]
    labels = convert_color_file(color_path, root / "gtFine" / split / city)
    image = color_path.parent / f"{stem}_leftImg8bit.png"
    if not image.is_file():
        return labels, None
    target = root / "leftImg8bit" / split / city / image.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image, target)
    return labels, target


def gt_train_ids(gt: np.ndarray, gt_kind: str) -> np.ndarray:
    """Train ids (0-18, 255 = ignore) of a ground-truth map of the given kind.

    Raises:
        ValueError: a kind this project cannot score.
    """
    if gt_kind == GT_CITYSCAPES_IDS:
        return label_ids_to_train_ids(gt)
    raise ValueError(f"ground truth of kind {gt_kind!r} cannot be scored; expected {GT_CITYSCAPES_IDS!r} "
                     f"(Cityscapes, KITTI semantics, KITTI-360)")
