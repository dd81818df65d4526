"""The Python client against a real pipeline: filtering, gaps, end of stream, timeout."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
from conftest import KITTI_FRAMES
from pipeline_helpers import start_pipeline, wait_for_log

from segstream.datasets.cityscapes import CLASS_NAMES
from segstream.pipeline.client import MaskSubscriber

pytestmark = pytest.mark.integration



def test_subscriber_filters_sources_and_ends_with_the_stream(tmp_path, fast_onnx):
    endpoint = f"ipc://{tmp_path}/pub.sock"
    glob = str(KITTI_FRAMES[0].parent / "kitti_*.png")
    results = []
    with MaskSubscriber(endpoint, sources=["kitti"], timeout_s=120) as masks:
        proc = start_pipeline(["run", "--source", glob, "--source", glob, "--model", str(fast_onnx),
                               "--publish", endpoint], tmp_path / "run.log", tmp_path / "t")
        results = list(masks)
        assert not masks.timed_out and masks.ended == {"kitti"} and masks.gaps == {"kitti": 0}
    assert proc.wait(timeout=60) == 0
    # two sources ("kitti" and "kitti-1"): only the one asked for, in order, complete
    assert [(r.source, r.index, r.name) for r in results] == [("kitti", k, p.stem) for k, p in enumerate(KITTI_FRAMES)]
    for result, path in zip(results, KITTI_FRAMES):
        assert result.mask.shape == cv2.imread(str(path)).shape[:2]
        assert list(result.mask.shape) == result.header["parts"][0]["shape"]
    for result in results:
        share_ignored = (result.mask == 255).mean()
        assert sum(result.classes.values()) == pytest.approx(1 - share_ignored, abs=1e-3)
        assert result.latency_ms > 0
        # every class in the mask is named, by the model's own names
        assert set(result.class_names) == set(np.unique(result.mask).tolist()) - {255} == set(result.classes)
        assert all(result.class_names[k] == CLASS_NAMES[k] for k in result.class_names)
        assert result.named_classes() == {CLASS_NAMES[k]: v for k, v in result.classes.items()}


def test_a_subscriber_waiting_for_a_source_that_never_comes_says_what_it_waited_for(tmp_path, fast_onnx, caplog):
    endpoint = f"ipc://{tmp_path}/pub.sock"
    with MaskSubscriber(endpoint, sources=["no-such-camera"], timeout_s=3) as masks:
        proc = start_pipeline(["run", "--source", str(KITTI_FRAMES[0].parent / "kitti_*.png"), "--model",
                               str(fast_onnx), "--publish", endpoint, "--rate", "2"], tmp_path / "run.log",
                              tmp_path / "t")
        assert list(masks) == [] and masks.timed_out
    proc.wait(timeout=60)
    assert "no mask of sources ['no-such-camera'] for 3 s" in masks.timeout_reason()
    assert "file's stem" in masks.timeout_reason()
    assert masks.timeout_reason() in caplog.text


def test_subscriber_reports_gaps_of_a_live_pipeline_and_times_out(tmp_path, fast_onnx):
    endpoint = f"ipc://{tmp_path}/pub.sock"
    config = tmp_path / "slow.yaml"
    config.write_text("sources: ['test-pattern:320x240@50']\npolicy: live\nmax_frames: 100\n"
                      "stage_delay_ms: {infer: 200}\n")
    got = []
    # The subscriber counts silence from when it starts reading: it starts once the
    # pipeline runs (start-up takes seconds on a loaded machine), then gives up after 6 s
    # of silence once the pipeline has ended.
    with MaskSubscriber(endpoint, timeout_s=6, until_end=False) as masks:
        proc = start_pipeline(["run", "--config", str(config), "--model", str(fast_onnx), "--publish", endpoint],
                              tmp_path / "run.log", tmp_path / "t")
        wait_for_log(tmp_path / "run.log", r"run \w+: running")
        thread = threading.Thread(target=lambda: got.extend(masks))
        start = time.monotonic()
        thread.start()
        assert proc.wait(timeout=60) == 0
        thread.join(timeout=30)
        assert masks.timed_out and time.monotonic() - start < 60
        assert masks.gaps["test-pattern"] > 0 and sum(r.gap for r in got) == masks.gaps["test-pattern"]
    assert [r.index for r in got] == sorted(r.index for r in got)


@pytest.mark.parametrize("encoding", ["png", "rle"])
def test_encoded_masks_decode_to_the_recorded_ones(tmp_path, fast_onnx, encoding):
    endpoint = f"ipc://{tmp_path}/pub.sock"
    glob = str(KITTI_FRAMES[0].parent / "kitti_*.png")
    record = tmp_path / "rec"
    with MaskSubscriber(endpoint, timeout_s=120) as masks:
        proc = start_pipeline(["run", "--source", glob, "--model", str(fast_onnx), "--publish", endpoint,
                               "--mask-encoding", encoding, "--record", str(record)], tmp_path / "run.log",
                              tmp_path / "t")
        results = list(masks)
    assert proc.wait(timeout=60) == 0
    assert len(results) == 3
    for result in results:
        assert result.header["parts"][0]["encoding"] == encoding
        recorded = cv2.imread(str(record / "masks" / f"{result.name}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(result.mask, recorded)


def test_stalled_subscriber_costs_nothing_and_a_lossless_consumer_gets_every_mask(tmp_path, fast_onnx):
    """A PUB subscriber that never reads does not slow a lossless replay of the dash-cam
    clip; a consumer on the lossless channel receives every mask, in order (here at the
    model's resolution)."""
    import zmq
    from conftest import CLIP
    from pipeline_helpers import read_stats

    def run(name: str, *extra: str) -> dict:
        record = tmp_path / name
        proc = start_pipeline(["run", "--source", str(CLIP), "--model", str(fast_onnx), "--max-frames", "80",
                               "--record", str(record), *extra], tmp_path / f"{name}.log", tmp_path / "t")
        assert proc.wait(timeout=180) == 0, (tmp_path / f"{name}.log").read_text()
        return read_stats(record)

    pub, lossless = f"ipc://{tmp_path}/pub.sock", f"ipc://{tmp_path}/lossless.sock"
    context = zmq.Context()
    stalled = context.socket(zmq.SUB)
    stalled.connect(pub)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    got = []
    try:
        with MaskSubscriber(lossless, lossless=True, timeout_s=120) as masks:
            thread = threading.Thread(target=lambda: got.extend(masks))
            thread.start()
            watched = run("watched", "--publish", pub, "--publish-lossless", lossless, "--mask-resolution", "model")
            thread.join(timeout=60)
    finally:
        stalled.close(0)
        context.term()
    assert [r.index for r in got] == list(range(80))
    assert all(r.mask.shape == (128, 256) for r in got)
    # PUB never waits for a subscriber that does not read: the run published everything
    # and skipped nothing (how fast it went beside one is a benchmark figure, not asserted).
    assert watched["frames_published"] == 80 and watched["frames_skipped"]["total"] == 0


def test_confidence_maps_travel_with_the_masks(tmp_path):
    """A model exported with a confidence output: the winning class's probability x 255,
    at the mask's resolution, agreeing with PyTorch's softmax."""
    import torch

    from segstream.engines.backends.base import load_engine
    from segstream.engines.export import export_onnx, load_torch_model
    from segstream.engines.preprocess import Preprocessor

    model = export_onnx("espnet-cityscapes-q3", tmp_path / "conf.onnx", height=128, width=256, confidence=True)
    engine = load_engine(model)
    frame = cv2.imread(str(KITTI_FRAMES[0]))
    tensor = Preprocessor(engine.metadata)(frame)
    confidence = engine.infer(tensor)["confidence"][0]
    module, _ = load_torch_model("espnet-cityscapes-q3")
    with torch.no_grad():
        expected = (torch.softmax(module(torch.from_numpy(tensor)), 1).amax(1)[0] * 255).numpy()
    assert confidence.dtype == np.uint8 and confidence.shape == (128, 256)
    assert np.abs(confidence.astype(float) - expected).max() <= 1.0

    endpoint = f"ipc://{tmp_path}/pub.sock"
    glob = str(KITTI_FRAMES[0].parent / "kitti_*.png")
    with MaskSubscriber(endpoint, timeout_s=120) as masks:
        proc = start_pipeline(["run", "--source", glob, "--model", str(model), "--publish", endpoint, "--confidence"],
                              tmp_path / "run.log", tmp_path / "t")
        results = list(masks)
    assert proc.wait(timeout=60) == 0
    assert len(results) == 3
    for result in results:
        assert result.confidence is not None and result.confidence.shape == result.mask.shape
        assert 255 // 19 <= result.confidence.min() and result.confidence.mean() > 100


def test_the_client_returns_an_instance_models_detections_typed(tmp_path, instance_onnx):
    """PNG-encoded results (16-bit instance ids): the client decodes them to what was recorded."""
    from segstream.engines.instance_results import Detection

    endpoint = f"ipc://{tmp_path}/pub.sock"
    record = tmp_path / "rec"
    with MaskSubscriber(endpoint, timeout_s=120) as masks:
        proc = start_pipeline(["run", "--source", str(KITTI_FRAMES[0]), "--model", str(instance_onnx), "--publish",
                               endpoint, "--mask-encoding", "png", "--record", str(record)], tmp_path / "run.log",
                              tmp_path / "t")
        results = list(masks)
    assert proc.wait(timeout=120) == 0
    assert len(results) == 1
    result = results[0]
    assert result.instances and all(isinstance(i, Detection) and i.label == "car" for i in result.instances)
    recorded = cv2.imread(str(record / "instances" / f"{result.name}.png"), cv2.IMREAD_UNCHANGED)
    assert result.instance_ids.dtype == np.uint16
    np.testing.assert_array_equal(result.instance_ids, recorded)
    assert set(np.unique(result.instance_ids)) <= {0, *(i.id for i in result.instances)}


def _result_frames(source: str, index: int, mask: np.ndarray) -> list[bytes]:
    from segstream.pipeline.wire.messages import Header, Kind, Message, Part, encode

    header = Header(Kind.RESULT, source, index, f"{index:06d}", 1, time.time_ns(),
                    parts=[Part("mask", mask.shape, "uint8", inline=0)],
                    meta={"classes": {"0": 1.0}, "ignore_index": 255, "model": "example"})
    return [bytes(f) if not isinstance(f, np.ndarray) else f.tobytes() for f in encode(Message(header, [mask]))]


def test_a_subscriber_given_sources_waits_for_the_end_of_each_even_when_one_ends_first(tmp_path):
    # A broker topic of several partitions (Kafka) hands one source's results and end of
    # stream before another's first result: the subscriber must not stop at the first end.
    import zmq

    from segstream.pipeline.wire.messages import encode, eos

    endpoint = f"ipc://{tmp_path}/lossless.sock"
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.bind(endpoint)
    mask = np.zeros((4, 6), np.uint8)
    try:
        with MaskSubscriber(endpoint, sources=["a", "b"], timeout_s=30, lossless=True) as masks:
            for source in ("a", "b"):
                for index in range(3):
                    push.send_multipart(_result_frames(source, index, mask))
                push.send_multipart([bytes(f) for f in encode(eos(source))])
            got = [(r.source, r.index) for r in masks]
    finally:
        push.close(0)
        context.term()
    assert not masks.timed_out and masks.ended == {"a", "b"}
    assert got == [(s, k) for s in ("a", "b") for k in range(3)]
