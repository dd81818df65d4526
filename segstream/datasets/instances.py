"""Instance annotations: the COCO JSON layout and Cityscapes' ``gtFine_instanceIds.png``.

``coco:ROOT[:SPLIT]`` reads ``ROOT/annotations/instances_SPLIT.json`` with its images in
``ROOT/SPLIT/`` (COCO 2017's layout; SPLIT defaults to ``train2017``). Segmentations may be
polygons, uncompressed RLE or compressed RLE (COCO's string encoding). ``cityscapes:ROOT[:SPLIT]``
reads the ``*_gtFine_instanceIds.png`` beside each image's labels: a pixel of an instance
holds ``label_id * 1000 + k``; Cityscapes' instance classes map to COCO's names (a rider
is a person).

``write_coco`` writes the COCO layout (masks as uncompressed RLE), which ``segstream
train`` and ``segstream eval --task instances`` read.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from segstream.datasets.coco import COCO_CLASS_NAMES
from segstream.errors import ModelError

logger = logging.getLogger(__name__)

# Cityscapes label ids of its instance classes -> COCO names.
CITYSCAPES_INSTANCE_CLASSES = {24: "person", 25: "person", 26: "car", 27: "truck", 28: "bus", 31: "train",
                               32: "motorcycle", 33: "bicycle"}


@dataclass(frozen=True)
class InstanceAnnotation:
    """One annotated instance.

    Attributes:
        name: its class name (COCO's names).
        box: (x0, y0, x1, y1) in pixels.
        mask: boolean (H, W) mask of the image.
        crowd: a crowd region (ignored by matching, never a miss).
    """

    name: str
    box: tuple[float, float, float, float]
    mask: np.ndarray
    crowd: bool = False


@dataclass(frozen=True)
class AnnotatedImage:
    """An image and the path of what annotates it (read on demand by ``annotations``)."""

    path: Path
    key: str
    source: Any  # the COCO annotations of the image, or the Cityscapes instanceIds path
    height: int = 0
    width: int = 0

    def annotations(self) -> list[InstanceAnnotation]:
        """The image's instances (decoded now)."""
        if isinstance(self.source, Path):
            return cityscapes_instances(self.source)
        return [_coco_instance(a, self.height, self.width, self.source[1]) for a in self.source[0]]


def rle_counts_from_string(text: str) -> list[int]:
    """The run lengths of COCO's compressed RLE string (6-bit groups from ``'0'``, 5 bits of
    value and a continuation bit; from the third run on, each is stored relative to the
    one two before)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        value = shift = 0
        more = True
        while more:
            if p >= len(text):
                raise ValueError("a compressed RLE string ends inside a number")
            c = ord(text[p]) - 48
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            p += 1
            shift += 1
            if not more and c & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """A boolean (H, W) mask from COCO RLE (``counts`` a list or a compressed string)."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (bytes, str)):
        counts = rle_counts_from_string(counts.decode() if isinstance(counts, bytes) else counts)
    flat = np.zeros(height * width, bool)
    position, value = 0, False
    for run in counts:
        run = int(run)
        if run < 0 or position + run > flat.size:
            raise ValueError(f"RLE runs exceed the {width}x{height} mask")
        if value:
            flat[position:position + run] = True
        position += run
        value = not value
    return flat.reshape(width, height).T  # column-major, as COCO stores masks


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE of a boolean (H, W) mask."""
    flat = np.asarray(mask, bool).T.reshape(-1)
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(edges).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(r) for r in runs]}


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """A boolean mask from COCO polygons (x, y pairs), filled with OpenCV at pixel centres."""
    mask = np.zeros((height, width), np.uint8)
    shapes = [np.round(np.asarray(p, np.float64).reshape(-1, 2)).astype(np.int32) for p in polygons if len(p) >= 6]
    if shapes:
        cv2.fillPoly(mask, shapes, 1)
    return mask.astype(bool)


def _coco_instance(annotation: dict[str, Any], height: int, width: int, names: dict[int, str]) -> InstanceAnnotation:
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):
        mask = polygons_to_mask(segmentation, height, width)
    elif isinstance(segmentation, dict):
        mask = rle_decode(segmentation)
    else:
        raise ValueError(f"annotation {annotation.get('id')} has no polygon or RLE segmentation")
    x, y, w, h = (float(v) for v in annotation["bbox"])
    return InstanceAnnotation(names[int(annotation["category_id"])], (x, y, x + w, y + h), mask,
                              bool(annotation.get("iscrowd", 0)))


def read_coco(root: Path, split: str = "train2017") -> list[AnnotatedImage]:
    """The annotated images of a COCO-layout dataset (see module docstring).

    Raises:
        ModelError: a missing file or a document that is not COCO's instance JSON.
    """
    path = root / "annotations" / f"instances_{split}.json"
    if not path.is_file():
        raise ModelError(f"coco:{root}:{split}: {path} does not exist; expected ROOT/annotations/"
                         f"instances_SPLIT.json with the images in ROOT/SPLIT/")
    try:
        document = json.loads(path.read_text())
        names = {int(c["id"]): str(c["name"]) for c in document["categories"]}
        by_image: dict[int, list[dict[str, Any]]] = {}
        for annotation in document["annotations"]:
            by_image.setdefault(int(annotation["image_id"]), []).append(annotation)
        images = [AnnotatedImage(root / split / str(i["file_name"]), str(i["id"]),
                                 (by_image.get(int(i["id"]), []), names), int(i["height"]), int(i["width"]))
                  for i in document["images"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path} is not COCO instance annotations (images, annotations, categories): "
                         f"{type(exc).__name__}: {exc}") from None
    return images


def mask_extent(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) bounding a boolean mask's pixels (x1, y1 exclusive), or None if it
    has none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def instances_of_ids(ids: np.ndarray) -> list[InstanceAnnotation]:
    """The instances in a Cityscapes instance-id map (``label_id * 1000 + k`` on an
    instance's pixels; values below 1000 are no instance), classes named as COCO names them."""
    out = []
    for value in np.unique(ids[ids >= 1000]):
        name = CITYSCAPES_INSTANCE_CLASSES.get(int(value) // 1000)
        if name is None:
            continue
        mask = ids == value
        out.append(InstanceAnnotation(name, tuple(float(v) for v in mask_extent(mask)), mask))  # type: ignore[arg-type]
    return out


def cityscapes_instances(path: Path) -> list[InstanceAnnotation]:
    """The instances of one ``*_gtFine_instanceIds.png``."""
    ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if ids is None or ids.ndim != 2:
        raise ModelError(f"cannot read {path} as a single-channel instance-id image")
    return instances_of_ids(ids)


def read_cityscapes_instances(root: Path, split: str = "val") -> list[AnnotatedImage]:
    """The Cityscapes images of ``split`` that have a ``gtFine_instanceIds.png``."""
    from segstream.datasets.layouts import cityscapes

    images = []
    for entry in cityscapes(root, split).entries:
        if entry.gt_path is None:
            continue
        ids = entry.gt_path.with_name(entry.gt_path.name.replace("_labelIds.png", "_instanceIds.png"))
        if ids.is_file():
            images.append(AnnotatedImage(entry.path, entry.path.name.replace("_leftImg8bit.png", ""), ids))
    if not images:
        raise ModelError(f"cityscapes:{root}:{split} has no gtFine/*_gtFine_instanceIds.png beside its labels")
    return images


def open_instances(uri: str) -> list[AnnotatedImage]:
    """The annotated images of ``coco:ROOT[:SPLIT]`` or ``cityscapes:ROOT[:SPLIT]``.

    Raises:
        ModelError: another scheme, or a dataset without instance annotations.
    """
    scheme, _, rest = uri.partition(":")
    root, _, split = rest.partition(":")
    if scheme == "coco" and root:
        return read_coco(Path(root), split or "train2017")
    if scheme == "cityscapes" and root:
        return read_cityscapes_instances(Path(root), split or "val")
    raise ModelError(f"{uri!r} is not an instance dataset; pass coco:ROOT[:SPLIT] (COCO JSON layout) or "
                     f"cityscapes:ROOT[:SPLIT] (gtFine_instanceIds.png)")


def write_coco(root: Path, split: str, images: Iterable[tuple[str, np.ndarray, list[tuple[str, np.ndarray]]]],
               class_names: Sequence[str] = COCO_CLASS_NAMES) -> Path:
    """Write images and their instances (class name, boolean mask) in the COCO layout.

    Returns:
        The annotation file written.
    """
    ids = {name: k + 1 for k, name in enumerate(class_names) if name != "N/A"}
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {"images": [], "annotations": [],
                                "categories": [{"id": i, "name": n} for n, i in ids.items()]}
    for image_id, (file_name, image, instances) in enumerate(images, 1):
        if not cv2.imwrite(str(root / split / file_name), image):
            raise ModelError(f"cannot write {root / split / file_name}")
        document["images"].append({"id": image_id, "file_name": file_name, "height": int(image.shape[0]),
                                   "width": int(image.shape[1])})
        for name, mask in instances:
            extent = mask_extent(mask)
            if extent is None:
                continue
            x0, y0, x1, y1 = extent
            document["annotations"].append({
                "id": len(document["annotations"]) + 1, "image_id": image_id, "category_id": ids[name],
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(np.count_nonzero(mask)),
                "iscrowd": 0, "segmentation": rle_encode(mask)})
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(document))
    return path
