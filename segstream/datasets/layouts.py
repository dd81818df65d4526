"""Dataset layouts: Cityscapes, KITTI raw, KITTI semantics and KITTI-360 folders.

Each layout becomes a ``DatasetListing``: its images in order, each with its ground truth
where the dataset has it and its timestamp where the dataset records it (so a replay at
``--rate native`` can follow them). The pipeline replays a listing as a source, training
reads its samples, offline evaluation its ground truth.

URIs:

- ``cityscapes:ROOT[:SPLIT[:CITY]]``: ``leftImg8bit_sequence/SPLIT/CITY/*_leftImg8bit.png``
  when that folder exists, else ``leftImg8bit/SPLIT/CITY/*_leftImg8bit.png`` (SPLIT
  defaults to ``val``, CITY to every city), paired with
  ``gtFine/SPLIT/CITY/*_gtFine_labelIds.png``. Nominal rate 17 Hz.
- ``kitti-raw:DRIVE_DIR[:image_02]``: ``DRIVE_DIR/image_02/data/*.png`` paced by
  ``image_02/timestamps.txt``.
- ``kitti-semantics:ROOT[:training]``: ``ROOT/training/image_2/*_10.png`` with
  ``ROOT/training/semantic/`` ground truth.
- ``kitti360:ROOT:SEQUENCE``: ``data_2d_raw/SEQUENCE/image_00/data_rect/*.png`` with
  ``data_2d_semantics/train/SEQUENCE/image_00/semantic/`` ground truth where present,
  paced by ``image_00/timestamps.txt`` when present.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from segstream.datasets.images import IMAGE_SUFFIXES, ImageEntry, image_files
from segstream.errors import SourceError

logger = logging.getLogger(__name__)

CITYSCAPES_FPS = 17.0
KITTI_FPS = 10.0
GT_CITYSCAPES_IDS = "cityscapes-label-ids"  # the 0-33 label ids of Cityscapes (KITTI uses them too)


@dataclass(frozen=True)
class DatasetListing:
    """The images of one dataset layout, in replay order.

    Attributes:
        entries: the images, each with its ground truth and timestamp if known.
        description: what the listing came from, for messages.
        fps: the dataset's nominal frame rate.
        gt_kind: what the ground truth holds (``GT_CITYSCAPES_IDS``), "" when no image has any.
    """

    entries: tuple[ImageEntry, ...]
    description: str
    fps: float
    gt_kind: str = ""

    @classmethod
    def of(cls, entries: list[ImageEntry], description: str, fps: float) -> "DatasetListing":
        """A listing whose ``gt_kind`` says whether any entry has ground truth."""
        if not entries:
            raise SourceError(f"{description} holds no images; expected files ending in "
                              f"{', '.join(sorted(IMAGE_SUFFIXES))}")
        has_gt = any(e.gt_path for e in entries)
        return cls(tuple(entries), description, fps, GT_CITYSCAPES_IDS if has_gt else "")


def _images(folder: Path, pattern: str = "*") -> list[Path]:
    return image_files(folder.glob(pattern))


def _require_dir(path: Path, what: str, layout: str) -> Path:
    if not path.is_dir():
        raise SourceError(f"{what}: {path} is not a folder; expected the {layout} layout")
    return path


def parse_kitti_timestamps(path: Path) -> list[float]:
    """Seconds since the first line of a KITTI ``timestamps.txt``.

    Lines look like ``2011-09-26 13:02:25.964389698`` (nanoseconds, more digits than
    ``datetime`` parses, so the fraction is read separately).
    """
    times: list[float] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        stamp, _, fraction = line.partition(".")
        try:
            whole = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp()
            times.append(whole + (float(f"0.{fraction}") if fraction else 0.0))
        except ValueError:
            raise SourceError(f"{path}:{number}: {line!r} is not a KITTI timestamp "
                              f"(expected e.g. 2011-09-26 13:02:25.964389698)") from None
    return [t - times[0] for t in times] if times else []


def _with_times(paths: list[Path], timestamps: Path) -> list[float | None]:
    if not timestamps.is_file():
        return [None] * len(paths)
    times = parse_kitti_timestamps(timestamps)
    if len(times) < len(paths):
        raise SourceError(f"{timestamps} has {len(times)} timestamps for {len(paths)} images; "
                          f"expected one line per image")
    # KITTI names frames by their index (0000000042.png): take the line of that index.
    out: list[float | None] = []
    for k, path in enumerate(paths):
        index = int(path.stem) if path.stem.isdigit() else k
        out.append(times[index] if index < len(times) else None)
    return out


def cityscapes(root: Path, split: str = "val", city: str = "") -> DatasetListing:
    """A Cityscapes replay (see module docstring)."""
    layout = "Cityscapes (leftImg8bit/SPLIT/CITY/*_leftImg8bit.png)"
    base = root / "leftImg8bit_sequence" / split
    if not base.is_dir():
        base = _require_dir(root / "leftImg8bit" / split, f"cityscapes split {split!r}", layout)
    cities = [base / city] if city else sorted(p for p in base.iterdir() if p.is_dir())
    entries = []
    for folder in cities:
        _require_dir(folder, f"cityscapes city {folder.name!r}", layout)
        for path in _images(folder, "*_leftImg8bit.png"):
            gt = root / "gtFine" / split / folder.name / path.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
            entries.append(ImageEntry(path, gt if gt.is_file() else None))
    return DatasetListing.of(entries, f"cityscapes {base}", CITYSCAPES_FPS)


def kitti_raw(drive: Path, camera: str = "image_02") -> DatasetListing:
    """A KITTI raw drive replay, paced by its timestamps."""
    layout = "KITTI raw (DRIVE/image_02/data/*.png and image_02/timestamps.txt)"
    folder = _require_dir(drive / camera / "data", f"kitti-raw camera {camera!r}", layout)
    paths = _images(folder)
    times = _with_times(paths, drive / camera / "timestamps.txt")
    return DatasetListing.of([ImageEntry(p, None, t) for p, t in zip(paths, times)], f"kitti-raw {folder}", KITTI_FPS)


def kitti_semantics(root: Path, split: str = "training") -> DatasetListing:
    """KITTI semantic segmentation benchmark frames with their ground truth."""
    layout = "KITTI semantics (training/image_2/*_10.png, training/semantic/)"
    folder = _require_dir(root / split / "image_2", f"kitti-semantics split {split!r}", layout)
    entries = []
    for path in _images(folder, "*_10.png"):
        gt = root / split / "semantic" / path.name
        entries.append(ImageEntry(path, gt if gt.is_file() else None))
    return DatasetListing.of(entries, f"kitti-semantics {folder}", KITTI_FPS)


def kitti360(root: Path, sequence: str) -> DatasetListing:
    """A KITTI-360 sequence, with semantic ground truth where the dataset has it."""
    layout = "KITTI-360 (data_2d_raw/SEQUENCE/image_00/data_rect/*.png)"
    camera = root / "data_2d_raw" / sequence / "image_00"
    folder = _require_dir(camera / "data_rect", f"kitti360 sequence {sequence!r}", layout)
    paths = _images(folder)
    times = _with_times(paths, camera / "timestamps.txt")
    semantic = root / "data_2d_semantics" / "train" / sequence / "image_00" / "semantic"
    entries = [ImageEntry(p, (semantic / p.name) if (semantic / p.name).is_file() else None, t)
               for p, t in zip(paths, times)]
    return DatasetListing.of(entries, f"kitti360 {folder}", KITTI_FPS)


def _open_cityscapes(args: list[str]) -> DatasetListing:
    return cityscapes(Path(args[0]), args[1] if len(args) > 1 and args[1] else "val",
                      args[2] if len(args) > 2 else "")


def _open_kitti_raw(args: list[str]) -> DatasetListing:
    return kitti_raw(Path(args[0]), args[1] if len(args) > 1 else "image_02")


def _open_kitti_semantics(args: list[str]) -> DatasetListing:
    return kitti_semantics(Path(args[0]), args[1] if len(args) > 1 else "training")


def _open_kitti360(args: list[str]) -> DatasetListing:
    if len(args) < 2:
        raise SourceError("kitti360 needs a sequence: kitti360:ROOT:SEQUENCE, e.g. "
                          "kitti360:/data/KITTI-360:2013_05_28_drive_0000_sync")
    return kitti360(Path(args[0]), args[1])


# scheme -> (opener, usage)
DATASETS: dict[str, tuple[Callable[[list[str]], DatasetListing], str]] = {
    "cityscapes": (_open_cityscapes, "cityscapes:ROOT[:SPLIT[:CITY]]"),
    "kitti-raw": (_open_kitti_raw, "kitti-raw:DRIVE_DIR[:image_02]"),
    "kitti-semantics": (_open_kitti_semantics, "kitti-semantics:ROOT[:training]"),
    "kitti360": (_open_kitti360, "kitti360:ROOT:SEQUENCE"),
}


def open_dataset(uri: str) -> DatasetListing:
    """Open a dataset URI (``SCHEME:ROOT[:...]``)."""
    scheme, _, rest = uri.partition(":")
    if scheme not in DATASETS:
        raise SourceError(f"{uri!r} is not a dataset; expected one of "
                          f"{', '.join(usage for _, usage in DATASETS.values())}")
    opener, usage = DATASETS[scheme]
    args = rest.split(":")
    if not args[0]:
        raise SourceError(f"{uri!r} names no folder; expected {usage}")
    root = Path(args[0]).expanduser()
    if not root.is_dir():
        raise SourceError(f"{uri!r}: {root} is not a folder; expected {usage}")
    return opener([str(root), *args[1:]])
