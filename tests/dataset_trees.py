"""Small dataset trees in the real layouts, built from the frames in ../shared/data."""

from __future__ import annotations

import datetime
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from conftest import CITYSCAPES_FRAMES, KITTI_FRAMES

SEQUENCE = "2013_05_28_drive_0000_sync"
DRIVE = "2011_09_26_drive_0001_sync"


@lru_cache(maxsize=32)
def espnet_train_ids(src: Path, model: str = "espnet-cityscapes") -> np.ndarray:
    """A pretrained ESPNet's train ids for a frame, run at the frame's own aspect ratio
    (height 512 for Cityscapes-sized frames, 384 for smaller ones), at frame resolution.
    Computed once per frame and test process (several tests label the same frames: the
    model at 1024x512 on the CPU is a second or more a frame), read-only."""
    import torch

    from segstream.engines.export import inference_module
    from segstream.engines.preprocess import Preprocessor

    frame = cv2.imread(str(src))
    h = 512 if frame.shape[0] >= 1024 else 384
    w = round(frame.shape[1] * h / frame.shape[0] / 8) * 8
    net, meta = inference_module(model, height=h, width=w)
    with torch.inference_mode():
        labels = net(torch.from_numpy(Preprocessor(meta)(frame)))[0].numpy()
    out = cv2.resize(labels, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
    out.flags.writeable = False
    return out


def synthetic_gt(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A recognisable label-id map: horizontal bands whose values depend on ``seed``."""
    gt = np.zeros(shape, np.uint8)
    for k in range(4):
        gt[k * shape[0] // 4:(k + 1) * shape[0] // 4] = (7 + 4 * k + seed) % 34
    return gt


def cityscapes_tree(root: Path, frames: int = 3, size: tuple[int, int] | None = None) -> list[str]:
    """``leftImg8bit/val/frankfurt`` with ``frames`` images (cycling over the shared ones),
    ground truth for every other frame. Returns the frame stems in order."""
    images = root / "leftImg8bit" / "val" / "frankfurt"
    gts = root / "gtFine" / "val" / "frankfurt"
    images.mkdir(parents=True)
    gts.mkdir(parents=True)
    stems = []
    for k in range(frames):
        stem = f"frankfurt_000000_{k:06d}_leftImg8bit"
        source = CITYSCAPES_FRAMES[k % len(CITYSCAPES_FRAMES)]
        if size is None:
            (images / f"{stem}.png").symlink_to(source)
            shape = (1024, 2048)
        else:
            cv2.imwrite(str(images / f"{stem}.png"), cv2.resize(cv2.imread(str(source)), size))
            shape = (size[1], size[0])
        if k % 2 == 0:
            cv2.imwrite(str(gts / f"frankfurt_000000_{k:06d}_gtFine_labelIds.png"), synthetic_gt(shape, k))
        stems.append(stem)
    return stems


def kitti_raw_tree(root: Path, frames: int = 3, period_s: float = 0.1037) -> tuple[Path, list[float]]:
    """``DATE/DRIVE/image_02/data`` plus a timestamps file with jittered periods.

    Returns the drive folder and the timestamps (seconds from the first)."""
    drive = root / "2011_09_26" / DRIVE
    data = drive / "image_02" / "data"
    data.mkdir(parents=True)
    start = datetime.datetime(2011, 9, 26, 13, 2, 25)
    lines, times = [], []
    for k in range(frames):
        (data / f"{k:010d}.png").symlink_to(KITTI_FRAMES[k % len(KITTI_FRAMES)])
        t = k * period_s + (0.004 if k % 3 == 1 else 0.0)
        times.append(t)
        stamp = start + datetime.timedelta(seconds=t)
        lines.append(stamp.strftime("%Y-%m-%d %H:%M:%S.") + f"{stamp.microsecond:06d}123")
    (drive / "image_02" / "timestamps.txt").write_text("\n".join(lines) + "\n")
    return drive, times


def _link_frame(source: Path, image: Path, gt: Path | None, seed: int) -> None:
    """``image`` links to the shared frame ``source``; ``gt``, if given, gets synthetic
    ground truth of the frame's size."""
    image.symlink_to(source)
    if gt is not None:
        h, w = cv2.imread(str(source)).shape[:2]
        cv2.imwrite(str(gt), synthetic_gt((h, w), seed))


def kitti_semantics_tree(root: Path) -> list[str]:
    """``training/image_2/*_10.png`` with ``training/semantic`` for each frame."""
    images, semantic = root / "training" / "image_2", root / "training" / "semantic"
    images.mkdir(parents=True)
    semantic.mkdir(parents=True)
    stems = []
    for k, source in enumerate(KITTI_FRAMES):
        name = f"{k:06d}_10.png"
        _link_frame(source, images / name, semantic / name, k)
        (images / f"{k:06d}_11.png").symlink_to(source)  # the other frame of the pair: not replayed
        stems.append(f"{k:06d}_10")
    return stems


def kitti360_tree(root: Path) -> list[str]:
    """``data_2d_raw/SEQ/image_00/data_rect`` with semantics for frames 1 and 2 only."""
    data = root / "data_2d_raw" / SEQUENCE / "image_00" / "data_rect"
    semantic = root / "data_2d_semantics" / "train" / SEQUENCE / "image_00" / "semantic"
    data.mkdir(parents=True)
    semantic.mkdir(parents=True)
    stems = []
    for k, source in enumerate(KITTI_FRAMES):
        name = f"{k:010d}.png"
        _link_frame(source, data / name, semantic / name if k > 0 else None, k)
        stems.append(f"{k:010d}")
    return stems
