"""Zoo models that classify, through the real pipeline: a joint model's mask and label
reach `segstream consume`; a classifier's labels reach the Python client, the record and
the overlay."""

from __future__ import annotations

import json
import subprocess

import cv2
import pytest
from conftest import CLIP, segstream_cmd
from pipeline_helpers import start_pipeline

from segstream.engines.export import export_onnx
from segstream.engines.models.zoo import SCENE_LABELS
from segstream.pipeline.client import MaskSubscriber

pytestmark = pytest.mark.integration
FRAMES = 3



def _check_labels(classification):
    assert [c["label"] for c in classification] and {c["label"] for c in classification} <= set(SCENE_LABELS)
    scores = [c["score"] for c in classification]
    assert scores == sorted(scores, reverse=True) and 0.0 < sum(scores) <= 1.001  # rounded to 4 places


def test_joint_model_mask_and_label_reach_consume(tmp_path):
    model = export_onnx("joint-resnet18", tmp_path / "joint.onnx", height=128, width=256, random_weights=True)
    endpoint = f"ipc://{tmp_path}/lossless.sock"
    record = tmp_path / "rec"
    proc = start_pipeline(["run", "--source", str(CLIP), "--model", str(model), "--max-frames", str(FRAMES),
                           "--publish", "", "--publish-lossless", endpoint, "--record", str(record)],
                          tmp_path / "run.log", tmp_path / "t")
    out = subprocess.run(segstream_cmd("consume", endpoint, "--lossless", "--timeout", "120"),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("source=") and "frame=" in line]
    assert len(lines) == FRAMES
    for line in lines:
        assert "shape=960x540" in line  # the mask, at the clip's resolution
        labels = line.split("labels=")[1].split()[0].split(",")
        assert {label.split(":")[0] for label in labels} <= set(SCENE_LABELS) and len(labels) == len(SCENE_LABELS)
    assert proc.wait(timeout=60) == 0
    assert len(list((record / "masks").glob("*.png"))) == FRAMES
    rows = [json.loads(line) for line in (record / "classifications.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(FRAMES))
    for row in rows:
        _check_labels(row["classification"])


def test_classifier_labels_reach_the_client_the_record_and_the_overlay(tmp_path):
    model = export_onnx("resnet18-classifier", tmp_path / "classifier.onnx", height=128, width=256,
                        random_weights=True)
    endpoint = f"ipc://{tmp_path}/lossless.sock"
    record = tmp_path / "rec"
    with MaskSubscriber(endpoint, timeout_s=120, lossless=True) as results:
        proc = start_pipeline(["run", "--source", str(CLIP), "--model", str(model), "--max-frames", str(FRAMES),
                               "--publish", "", "--publish-lossless", endpoint, "--record", str(record)],
                              tmp_path / "run.log", tmp_path / "t")
        got = list(results)
    assert proc.wait(timeout=60) == 0
    assert [r.index for r in got] == list(range(FRAMES))
    for result in got:
        assert result.mask is None and not result.classes
        _check_labels(result.classification)
    assert not (record / "masks").exists()
    assert len((record / "classifications.jsonl").read_text().splitlines()) == FRAMES
    video = cv2.VideoCapture(str(record / "overlay.mp4"))
    ok, frame = video.read()
    video.release()
    assert ok and frame.shape[:2] == (540, 960)
    stats = json.loads((record / "stats.json").read_text())
    assert stats["frames_published"] == FRAMES and stats["frames_unaccounted"] == 0
