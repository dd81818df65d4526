"""Instance annotations (COCO JSON with polygons and both RLE forms, Cityscapes
instanceIds), the pseudo-labels made from a semantic model, and how instances are drawn."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from segstream.datasets.cityscapes import CLASS_NAMES
from segstream.datasets.instances import (
    open_instances,
    read_coco,
    rle_counts_from_string,
    rle_decode,
    rle_encode,
    write_coco,
)
from segstream.engines.training.pseudo_labels import PseudoLabelConfig, regions_as_instances
from segstream.errors import ModelError
from segstream.pipeline.instance_overlay import instance_colour, instance_counts
from segstream.pipeline.overlay import OverlayRenderer


def _blobs(height: int = 60, width: int = 80) -> list[np.ndarray]:
    a = np.zeros((height, width), bool)
    a[5:20, 10:40] = True
    b = np.zeros((height, width), bool)
    cv2.circle(b.view(np.uint8), (60, 40), 12, 1, -1)
    return [a, b]


def test_rle_round_trip_and_compressed_strings_match_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for mask in [*_blobs(), rng.random((37, 23)) > 0.6, np.ones((4, 5), bool), np.zeros((3, 3), bool)]:
        assert (rle_decode(rle_encode(mask)) == mask).all()
        compressed = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert (rle_decode(compressed) == mask).all()  # bytes counts, as pycocotools writes them
        assert (rle_decode({"size": compressed["size"], "counts": compressed["counts"].decode()}) == mask).all()
    with pytest.raises(ValueError, match="ends inside a number"):
        rle_counts_from_string("1l")  # 'l' carries the continuation bit
    with pytest.raises(ValueError, match="exceed"):
        rle_decode({"size": [2, 2], "counts": [1, 9]})


def test_coco_layout_written_and_read_back(tmp_path):
    image = np.full((60, 80, 3), 90, np.uint8)
    a, b = _blobs()
    path = write_coco(tmp_path, "val", [("000001.png", image, [("car", a), ("person", b)])])
    document = json.loads(path.read_text())
    assert {c["name"] for c in document["categories"]} >= {"car", "person"}
    # a polygon annotation, as most of COCO is written
    document["annotations"].append({"id": 9, "image_id": 1, "category_id": 3, "bbox": [50, 5, 20, 10], "iscrowd": 1,
                                    "area": 200, "segmentation": [[50, 5, 70, 5, 70, 15, 50, 15]]})
    path.write_text(json.dumps(document))
    images = read_coco(tmp_path, "val")
    assert len(images) == 1 and images[0].path == tmp_path / "val" / "000001.png"
    got = images[0].annotations()
    assert [g.name for g in got] == ["car", "person", "car"]
    assert (got[0].mask == a).all() and (got[1].mask == b).all()
    assert got[0].box == (10.0, 5.0, 40.0, 20.0)
    assert got[2].crowd and got[2].mask[5:16, 50:71].all() and got[2].mask.sum() == 11 * 21
    assert open_instances(f"coco:{tmp_path}:val")[0].key == "1"


def test_cityscapes_instance_ids_read_as_coco_classes(tmp_path):
    city = "frankfurt"
    images = tmp_path / "leftImg8bit" / "val" / city
    labels = tmp_path / "gtFine" / "val" / city
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    cv2.imwrite(str(images / "x_000001_leftImg8bit.png"), np.zeros((40, 60, 3), np.uint8))
    ids = np.full((40, 60), 7, np.uint16)  # road: no instance
    ids[5:15, 5:25] = 26 * 1000  # car 0
    ids[20:30, 30:50] = 26 * 1000 + 1  # car 1
    ids[2:8, 40:45] = 25 * 1000  # a rider: a person
    ids[30:35, 0:5] = 24  # a person region without instance id: not an instance
    cv2.imwrite(str(labels / "x_000001_gtFine_labelIds.png"), (ids // 1000).astype(np.uint8))
    cv2.imwrite(str(labels / "x_000001_gtFine_instanceIds.png"), ids)
    found = open_instances(f"cityscapes:{tmp_path}:val")
    assert len(found) == 1
    got = sorted((a.name, a.box) for a in found[0].annotations())
    assert got == [("car", (5.0, 5.0, 25.0, 15.0)), ("car", (30.0, 20.0, 50.0, 30.0)),
                   ("person", (40.0, 2.0, 45.0, 8.0))]
    with pytest.raises(ModelError, match="coco:ROOT"):
        open_instances(f"kitti:{tmp_path}")
    with pytest.raises(ModelError, match="instances_train2017.json"):
        open_instances(f"coco:{tmp_path}")


def test_pseudo_labels_split_regions_and_drop_specks():
    car = CLASS_NAMES.index("car")
    labels = np.zeros((100, 200), np.uint8)
    labels[10:40, 10:60] = car
    labels[50:90, 100:190] = car
    labels[95:97, 5:7] = car  # a speck: opened away
    labels[20:30, 150:160] = car  # 100 pixels: under min_area
    found = regions_as_instances(labels, PseudoLabelConfig(min_area=300))
    assert [name for name, _ in found] == ["car", "car"]
    assert sorted(int(m.sum()) for _, m in found) == [30 * 50, 40 * 90]


def test_overlay_draws_each_instance_in_its_colour_with_box_and_legend():
    frame = np.full((240, 320, 3), 40, np.uint8)
    ids = np.zeros((240, 320), np.uint16)
    ids[50:100, 40:120] = 1
    ids[120:200, 160:300] = 2
    instances = [{"id": 1, "class_id": 3, "label": "car", "score": 0.9, "box": [40, 50, 120, 100]},
                 {"id": 2, "class_id": 3, "label": "car", "score": 0.8, "box": [160, 120, 300, 200]}]
    renderer = OverlayRenderer(("person", "bicycle", "car"), ((0, 0, 255), (0, 255, 0), (255, 0, 0)))
    semantic = np.where(ids > 0, 2, 255).astype(np.uint8)
    out = renderer.annotate(frame, semantic, instances=(ids, instances))
    inside_1, inside_2 = out[75, 80].astype(int), out[160, 230].astype(int)
    assert (inside_1 != inside_2).any()  # two cars, two colours
    assert np.abs(inside_1 - (np.array(instance_colour(1)) + 40) // 2).max() <= 2  # blended at 0.5
    assert (out[230, 10] == 40).all()  # outside every instance: untouched
    assert np.abs(out[75, 40].astype(int) - instance_colour(1)).max() <= 16  # the box's left edge
    assert instance_counts(instances) == [("car", 2, instance_colour(1))]
    plain = renderer.annotate(frame, semantic)
    assert (out != plain).any()


def test_triton_repositories_say_instance_models_run_locally(tmp_path):
    from segstream.engines.triton_repo import write_repository

    with pytest.raises(ModelError, match="instance model .* run it locally"):
        write_repository("maskrcnn-r18-fpn", tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
