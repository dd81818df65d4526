"""Live sources: RTSP against a real GStreamer RTSP server on 127.0.0.1, reconnects, and the
camera code path (the newest-frame reader) driven by OpenCV on a video file."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CLIP, ROOT
from pipeline_helpers import ResultCollector, read_stats, start_pipeline

from segstream.errors import ConfigError, SourceError
from segstream.pipeline.sources import default_source_id, is_live_uri, open_source
from segstream.pipeline.sources.streams import LatestFrameSource, LiveOptions

SYSTEM_PYTHON = "/usr/bin/python3"


def _has_rtsp_server() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = ("import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer, Gst; "
             "Gst.init(None); assert Gst.ElementFactory.find('x264enc')")
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True).returncode == 0


needs_rtsp = pytest.mark.skipif(not _has_rtsp_server(), reason="GStreamer RTSP server not installed (Debian: "
                                "gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-ugly python3-gi)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RtspServer:
    """tools/rtsp_test_server.py as a child process."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"rtsp://127.0.0.1:{port}/test"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(ROOT / "tools" / "rtsp_test_server.py"), "--port",
                                      str(self.port)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def rtsp_server():
    server = RtspServer(free_port())
    server.start()
    yield server
    server.stop()



def test_live_uris_and_ids():
    assert is_live_uri("rtsp://cam/stream") and is_live_uri("camera:0") and is_live_uri("/dev/video2")
    assert not is_live_uri("clip.mp4")
    assert default_source_id("rtsp://127.0.0.1:8554/test") == "127.0.0.1_8554_test"
    assert default_source_id("camera:1") == "camera1"
    with pytest.raises(ConfigError, match="rtsp_transport must be"):
        LiveOptions(rtsp_transport="quic")


def test_camera_code_path_keeps_only_the_newest_frame():
    """The reader thread behind cameras and streams, fed by OpenCV from a video file."""
    source = LatestFrameSource("fake-camera", "fake camera", lambda: cv2.VideoCapture(str(CLIP)),
                               LiveOptions(), reconnect=False)
    frames = []
    for frame in source.frames():
        if frame is not None:
            frames.append(frame)
            time.sleep(0.05)  # a consumer slower than the decoder
    source.close()
    # far fewer than the clip's 221 frames were handed on, and never an old one twice
    assert 2 <= len(frames) < 150
    assert [f.name for f in frames] == [f"{k:06d}" for k in range(len(frames))]
    assert not any(np.array_equal(a.image, b.image) for a, b in zip(frames, frames[1:]))


def test_a_stream_that_never_opens_is_a_clear_error_within_its_attempts():
    options = LiveOptions(open_timeout_s=1.0, connect_attempts=2, backoff_initial_s=0.2)
    source = open_source(f"rtsp://127.0.0.1:{free_port()}/nothing", live_options=options)
    start = time.monotonic()
    with pytest.raises(SourceError, match="could not open stream .* after 2 attempts"):
        for _ in source.frames():
            pass
    source.close()
    assert time.monotonic() - start < 10


@needs_rtsp
def test_rtsp_frames_arrive_at_the_stream_rate(rtsp_server):
    source = open_source(rtsp_server.url)
    stamps = []
    for frame in source.frames():
        if frame is not None:
            stamps.append(time.monotonic())
            if len(stamps) == 60:
                break
    source.close()
    interval = np.median(np.diff(stamps))
    assert interval == pytest.approx(0.04, abs=0.01)


def test_pipeline_on_an_unserved_url_ends_with_a_clear_error(tmp_path, fast_onnx):
    log = tmp_path / "run.log"
    proc = start_pipeline(["run", "--source", f"rtsp://127.0.0.1:{free_port()}/nothing", "--model", str(fast_onnx),
                           "--publish", "", "--connect-attempts", "2"], log, tmp_path / "t")
    assert proc.wait(timeout=60) != 0
    text = log.read_text()
    assert "pipeline failed: source 127.0.0.1_" in text and "after 2 attempts" in text


@needs_rtsp
def test_rtsp_outage_reconnects_and_masks_resume(tmp_path, fast_onnx, rtsp_server):
    endpoint = f"ipc://{tmp_path}/pub.sock"
    collector = ResultCollector(endpoint)
    results: list = []
    thread = threading.Thread(target=lambda: results.extend(collector.collect(timeout_s=120)))
    thread.start()
    record = tmp_path / "rec"
    log = tmp_path / "run.log"
    try:
        proc = start_pipeline(["run", "--source", rtsp_server.url, "--model", str(fast_onnx), "--publish", endpoint,
                               "--record", str(record), "--max-frames", "120"], log, tmp_path / "t")
        deadline = time.monotonic() + 60
        while len(list(record.glob("masks/*.png"))) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        rtsp_server.stop()
        outage_start = time.time_ns()
        time.sleep(3)
        rtsp_server.start()
        back = time.time_ns()
        assert proc.wait(timeout=90) == 0, log.read_text()
        thread.join(timeout=30)
    finally:
        collector.close()
    stats = read_stats(record)
    capture = stats["stages"]["capture-0"]
    assert capture["reconnects"] >= 1
    assert "reconnecting" in log.read_text()
    before = [h for h, _ in results if h["wall_ns"] < outage_start]
    after = [h for h, _ in results if h["wall_ns"] > back]
    assert len(before) >= 10 and len(after) >= 10
    assert stats["frames_in"] == 120 and stats["frames_unaccounted"] == 0


@needs_rtsp
def test_one_failing_source_does_not_stop_the_others(tmp_path, fast_onnx, rtsp_server):
    """Two streams, one nobody serves: the other runs to its end; the run reports the
    failed one, by name, and exits non-zero."""
    record = tmp_path / "rec"
    log = tmp_path / "run.log"
    dead = f"rtsp://127.0.0.1:{free_port()}/nothing"
    proc = start_pipeline(["run", "--source", rtsp_server.url, "--source", dead, "--model", str(fast_onnx),
                           "--publish", "", "--record", str(record), "--max-frames", "40",
                           "--connect-attempts", "2"], log, tmp_path / "t")
    assert proc.wait(timeout=90) == 1, log.read_text()
    stats = read_stats(record)
    good, bad = stats["per_source"].values()
    # the source ran to its 40 frames; live flow skips what it cannot keep up with (more on a
    # loaded machine), and every frame is accounted for
    assert good["frames_in"] == 40 and good["frames_published"] >= 1 and good["error"] == ""
    assert stats["frames_unaccounted"] == 0
    assert bad["frames_in"] == 0 and bad["frames_published"] == 0 and "after 2 attempts" in bad["error"]
    assert len(list(record.glob("*/masks/*.png"))) == good["frames_published"]
    assert "failed" in log.read_text()


def test_ctrl_c_while_connecting_stops_within_two_seconds(tmp_path, fast_onnx):
    import os
    import signal

    from pipeline_helpers import session_processes, wait_for_log

    log = tmp_path / "run.log"
    proc = start_pipeline(["run", "--source", f"rtsp://127.0.0.1:{free_port()}/nothing", "--model", str(fast_onnx),
                           "--publish", "", "--connect-attempts", "100"], log, tmp_path / "t")
    wait_for_log(log, r"open attempt 2 failed")
    os.killpg(proc.pid, signal.SIGINT)
    start = time.monotonic()
    assert proc.wait(timeout=10) == 130
    assert time.monotonic() - start < 2.0
    time.sleep(0.2)
    assert session_processes(proc.pid) == []


@needs_rtsp
def test_rtsp_over_udp(rtsp_server):
    source = open_source(rtsp_server.url, live_options=LiveOptions(rtsp_transport="udp"))
    got = 0
    for frame in source.frames():
        if frame is not None:
            got += 1
            if got == 10:
                break
    source.close()
    assert got == 10


@needs_rtsp
def test_a_stalled_stream_is_reopened(rtsp_server):
    """The server freezes (SIGSTOP: the connection stays open, nothing arrives): after the
    stall timeout the source reconnects, and frames resume once the server thaws."""
    import os
    import signal

    options = LiveOptions(stall_timeout_s=1.5, open_timeout_s=2.0, backoff_initial_s=0.2, backoff_max_s=1.0)
    source = open_source(rtsp_server.url, live_options=options)
    frames = source.frames()
    got = 0
    while got < 10:
        got += next(frames) is not None
    os.kill(rtsp_server.proc.pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            next(frames)
    finally:
        os.kill(rtsp_server.proc.pid, signal.SIGCONT)
    resumed = 0
    deadline = time.monotonic() + 30
    while resumed < 10 and time.monotonic() < deadline:
        resumed += next(frames) is not None
    source.close()
    assert resumed == 10
    assert source.reconnects >= 1
    assert source.stalls >= 1  # the watchdog saw it, not only a read that failed later


def test_the_wait_between_attempts_doubles_to_its_cap_and_starts_over_once_a_stream_opens():
    from segstream.pipeline.sources.streams import Backoff

    backoff = Backoff(0.25, 2.0)
    assert [backoff.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    backoff.reset()
    assert backoff.next() == 0.25
    assert LiveOptions().backoff_max_s == 2.0 and LiveOptions().stall_timeout_s == 5.0


def test_stream_options_do_not_leak_into_later_captures(tmp_path):
    """FFmpeg options for a stream (fflags nobuffer...) are set only while it opens: left in
    the environment they made later video files of the process unreadable."""
    import os

    from segstream.pipeline.sources.streams import _OPTIONS_ENV, _open_with_options

    os.environ.pop(_OPTIONS_ENV, None)
    _open_with_options(str(tmp_path / "missing.mp4"), [], "rtsp_transport;tcp|fflags;nobuffer").release()
    assert _OPTIONS_ENV not in os.environ
    os.environ[_OPTIONS_ENV] = "mine"
    try:
        _open_with_options(str(tmp_path / "missing.mp4"), [], "rtsp_transport;udp").release()
        assert os.environ[_OPTIONS_ENV] == "mine"  # a user's own setting is put back
    finally:
        del os.environ[_OPTIONS_ENV]
