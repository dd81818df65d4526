"""An instance model through the whole pipeline: detections, instance ids and the semantic
mask reach a plain ZeroMQ subscriber, the record folder and the overlay, and the recorded
run is scored by ``segstream eval --task instances``."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import CLIP, run_segstream
from pipeline_helpers import ResultCollector, start_pipeline, video_frames

from segstream.datasets.instances import write_coco

pytestmark = pytest.mark.integration

FRAMES = 6


@pytest.fixture(scope="module")
def instance_run(tmp_path_factory, instance_onnx):
    """The clip's first frames through the instance model, collected by a plain subscriber
    and recorded."""
    tmp = tmp_path_factory.mktemp("instances")
    endpoint = f"ipc://{tmp}/pub.sock"
    collector = ResultCollector(endpoint)
    try:
        proc = start_pipeline(["run", "--source", str(CLIP), "--model", str(instance_onnx), "--publish", endpoint,
                               "--policy", "lossless", "--rate", "max", "--max-frames", str(FRAMES), "--record",
                               str(tmp / "rec")], tmp / "run.log", tmp / "t")
        results = collector.collect(timeout_s=180)
        assert proc.wait(timeout=120) == 0, (tmp / "run.log").read_text()
    finally:
        collector.close()
    return results, tmp / "rec"


def test_instances_reach_a_plain_subscriber(instance_run):
    results, _ = instance_run
    assert [h["index"] for h, _ in results] == list(range(FRAMES))
    for header, arrays in results:
        instances = header["meta"]["instances"]
        ids, mask = arrays["instance_ids"], arrays["mask"]
        assert ids.dtype == np.uint16 and ids.shape == mask.shape == (540, 960)
        assert 0 < len(instances) <= 100
        assert [i["id"] for i in instances] == list(range(1, len(instances) + 1))
        assert [i["score"] for i in instances] == sorted((i["score"] for i in instances), reverse=True)
        assert set(np.unique(ids)) <= {0, *(i["id"] for i in instances)}
        for item in instances:
            assert item["label"] == "car" and item["class_id"] == 3 and item["score"] >= 0.5
            x0, y0, x1, y1 = item["box"]
            assert 0 <= x0 < x1 <= 960 and 0 <= y0 < y1 <= 540
            ys, xs = np.nonzero(ids == item["id"])
            if len(xs):  # its pixels lie in its box (published to 0.01 px: a pixel of rounding)
                assert xs.min() >= np.floor(x0) - 1 and xs.max() <= np.ceil(x1)
                assert ys.min() >= np.floor(y0) - 1 and ys.max() <= np.ceil(y1)
        # the semantic mask: each instance's class (car = 2, 0-based), the ignore index elsewhere
        assert (mask[ids > 0] == 2).all() and (mask[ids == 0] == 255).all()
        assert header["meta"]["model"] == "maskrcnn-r18-fpn"


def test_instances_are_recorded_and_drawn(instance_run):
    results, record = instance_run
    lines = [json.loads(line) for line in (record / "instances.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == [f"{k:06d}" for k in range(FRAMES)]
    for (header, arrays), line in zip(results, lines):
        assert line["instances"] == header["meta"]["instances"]
        ids = cv2.imread(str(record / "instances" / f"{line['frame']}.png"), cv2.IMREAD_UNCHANGED)
        assert ids.dtype == np.uint16 and (ids == arrays["instance_ids"]).all()
    overlay = video_frames(record / "overlay.mp4")
    assert len(overlay) == FRAMES
    clip = cv2.VideoCapture(str(CLIP))
    _, first = clip.read()
    clip.release()
    inside = results[0][1]["instance_ids"] > 0
    # instance pixels are coloured: the overlay differs from the frame there far more than elsewhere
    diff = np.abs(overlay[0].astype(int) - first.astype(int)).sum(axis=2)
    assert diff[inside].mean() > 3 * diff[~inside].mean() + 10


def test_eval_scores_a_recorded_instance_run(instance_run, tmp_path):
    results, record = instance_run
    images = []
    for header, arrays in results:
        ids = arrays["instance_ids"]
        truth = [("car", ids == i["id"]) for i in header["meta"]["instances"]]
        images.append((f"{header['name']}.png", np.zeros((540, 960, 3), np.uint8), truth))
    write_coco(tmp_path / "same", "val", images)
    shifted = [(name, image, [(c, np.roll(m, 200, axis=1)) for c, m in truth]) for name, image, truth in images]
    write_coco(tmp_path / "shifted", "val", shifted)

    same = run_segstream("eval", "--task", "instances", str(record), f"coco:{tmp_path / 'same'}:val", "--json",
                         str(tmp_path / "same.json"))
    assert same.returncode == 0, same.stderr
    assert "mask" in same.stdout and "car" in same.stdout
    scores = json.loads((tmp_path / "same.json").read_text())
    assert scores["images"] == FRAMES and scores["segm"]["ap50"] > 0.9
    moved = run_segstream("eval", "--task", "instances", str(record), f"coco:{tmp_path / 'shifted'}:val", "--json",
                          str(tmp_path / "shifted.json"))
    assert moved.returncode == 0, moved.stderr
    assert json.loads((tmp_path / "shifted.json").read_text())["segm"]["ap50"] < 0.5
    missing = run_segstream("eval", "--task", "instances", str(tmp_path), f"coco:{tmp_path / 'same'}:val")
    assert missing.returncode != 0 and "instances.jsonl" in missing.stderr


def _cityscapes_instance_tree(root):
    """``leftImg8bit/val/frankfurt`` with the shared frame that has fine ground truth, its
    label ids (from the official colours) and instance ids: each connected region of
    car pixels one car (``26 * 1000 + k``). Returns the frame's stem."""
    from conftest import DATA

    from segstream.evaluation.ground_truth import color_to_label_ids

    stem = "frankfurt_000001_058914"
    images, labels = root / "leftImg8bit" / "val" / "frankfurt", root / "gtFine" / "val" / "frankfurt"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    (images / f"{stem}_leftImg8bit.png").symlink_to(DATA / f"{stem}_leftImg8bit.png")
    label_ids = color_to_label_ids(cv2.imread(str(DATA / f"{stem}_gtFine_color.png")))
    cv2.imwrite(str(labels / f"{stem}_gtFine_labelIds.png"), label_ids)
    count, regions = cv2.connectedComponents((label_ids == 26).astype(np.uint8))
    ids = label_ids.astype(np.uint16)
    for k in range(1, count):
        ids[regions == k] = 26 * 1000 + k - 1
    cv2.imwrite(str(labels / f"{stem}_gtFine_instanceIds.png"), ids)
    return f"{stem}_leftImg8bit", count - 1


def test_live_eval_of_an_instance_model_equals_the_offline_eval(tmp_path, instance_onnx):
    frame, cars = _cityscapes_instance_tree(tmp_path / "cs")
    assert cars >= 3
    record = tmp_path / "rec"
    proc = start_pipeline(["run", "--source", f"cityscapes:{tmp_path / 'cs'}:val", "--model", str(instance_onnx),
                           "--publish", "", "--eval", "--record", str(record)], tmp_path / "run.log", tmp_path / "t")
    assert proc.wait(timeout=180) == 0, (tmp_path / "run.log").read_text()
    stats = json.loads((record / "stats.json").read_text())
    live = stats["eval"]["instances"]
    assert live["all"]["frames"] == 1 and len(live["sources"]) == 1
    offline = run_segstream("eval", "--task", "instances", str(record), f"cityscapes:{tmp_path / 'cs'}:val",
                            "--json", str(tmp_path / "offline.json"))
    assert offline.returncode == 0, offline.stderr
    scores = json.loads((tmp_path / "offline.json").read_text())
    assert scores["images"] == 1
    for kind in ("bbox", "segm"):
        for key in ("ap", "ap50", "ap75"):
            assert abs(scores[kind][key] - live["all"][kind][key]) < 1e-9, (kind, key)
    assert list(scores["segm"]["per_class"]) == ["car"]


def test_training_reads_cityscapes_instance_ids(tmp_path):
    """``segstream train`` on a Cityscapes layout with instance ids (the real frame's cars):
    it trains, validates and writes a checkpoint that the export takes."""
    import torch

    _cityscapes_instance_tree(tmp_path / "cs")
    done = run_segstream("train", "maskrcnn-r18-fpn", "--data", f"cityscapes:{tmp_path / 'cs'}:val", "--epochs", "1",
                         "--crop", "128x256", "--batch-size", "1", "--optimizer", "sgd", "--lr", "0.01", "-o",
                         str(tmp_path / "ckpt"), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mask_ap50" in done.stdout
    checkpoint = torch.load(tmp_path / "ckpt" / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["model"] == "maskrcnn-r18-fpn" and set(checkpoint["metrics"]) >= {"mask_ap", "box_ap50"}
    exported = run_segstream("export", "maskrcnn-r18-fpn", "--weights", str(tmp_path / "ckpt" / "last.pt"),
                             "--height", "128", "--width", "256", "-o", str(tmp_path / "m.onnx"))
    assert exported.returncode == 0, exported.stderr[-2000:]
