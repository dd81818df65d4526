"""RTSP out: the overlay pushed as H.264 reaches a receiver on 127.0.0.1 as decodable frames."""

from __future__ import annotations

import shutil
import subprocess

import cv2
import pytest
from conftest import CLIP
from pipeline_helpers import start_pipeline
from test_streams import free_port

pytestmark = pytest.mark.integration

FFMPEG = shutil.which("ffmpeg")


def _has_x264() -> bool:
    if FFMPEG is None:
        return False
    encoders = subprocess.run([FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return "libx264" in encoders



@pytest.mark.skipif(not _has_x264(), reason="needs Debian's ffmpeg (with libx264): apt-get install ffmpeg")
def test_rtsp_out_delivers_decodable_h264(tmp_path, fast_onnx):
    url = f"rtsp://127.0.0.1:{free_port()}/overlay"
    received = tmp_path / "received.mkv"
    # The receiver: ffmpeg as an RTSP server that accepts the publisher and keeps 20 frames.
    receiver = subprocess.Popen([FFMPEG, "-hide_banner", "-loglevel", "error", "-rtsp_flags", "listen",
                                 "-timeout", "60", "-i", url, "-frames:v", "20", "-c", "copy", str(received)],
                                stderr=subprocess.PIPE, text=True)
    try:
        proc = start_pipeline(["run", "--source", str(CLIP), "--model", str(fast_onnx), "--max-frames", "40",
                               "--publish", "", "--rtsp-out", url], tmp_path / "run.log", tmp_path / "t")
        assert proc.wait(timeout=120) == 0, (tmp_path / "run.log").read_text()
        assert receiver.wait(timeout=30) == 0, receiver.stderr.read()
    finally:
        receiver.kill()
    probe = subprocess.run([FFMPEG.replace("ffmpeg", "ffprobe"), "-v", "error", "-select_streams", "v:0",
                            "-show_entries", "stream=codec_name,width,height", "-of", "csv=p=0", str(received)],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "h264,960,540"
    cap = cv2.VideoCapture(str(received))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 20
