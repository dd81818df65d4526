"""A live stream's frame is handed out as soon as it has come in, not one (or more) frames
later: FFmpeg's frame threading, OpenCV's default, holds each frame back until later ones
arrive. A real H.264 stream (HTTP-FLV from a local server, encoded by libx264 frame by
frame) is sent in lockstep: the next frame only once the source has handed out this one."""

from __future__ import annotations

import sys
import time
from typing import Iterator

import pytest
from conftest import ROOT

from segstream.errors import ConfigError
from segstream.pipeline.sources.streams import LiveOptions, open_stream

sys.path.insert(0, str(ROOT / "tools"))
from flv_stream import FlvStream, level  # noqa: E402

WAIT_S = 20.0  # for a frame that should come at once: generous, for a loaded machine


@pytest.fixture
def flv_stream() -> Iterator[FlvStream]:
    stream = FlvStream()
    try:
        yield stream
    finally:
        stream.close()


def _opened(stream: FlvStream, options: LiveOptions):
    """The stream opened by the project's source, past its first frame (frames sent
    meanwhile, one every 0.3 s, for FFmpeg to probe)."""
    for _ in range(10):
        stream.send()
    source = open_stream(stream.url, "cam", options)
    frames = source.frames()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        wait = time.monotonic() + 0.3
        while time.monotonic() < wait:
            if next(frames) is not None:
                return source, frames
        stream.send()
    source.close()
    raise AssertionError(f"no frame from {stream.url} in {WAIT_S} s")


def _arrives(frames, k: int, within_s: float) -> bool:
    """Whether the source hands out frame ``k`` within ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        frame = next(frames)
        if frame is not None and abs(float(frame.image.mean()) - level(k)) < 6:
            return True
    return False


def test_each_frame_of_a_live_stream_is_handed_out_before_the_next_one_is_sent(flv_stream):
    source, frames = _opened(flv_stream, LiveOptions())
    try:
        for _ in range(8):
            k = flv_stream.send()
            assert _arrives(frames, k, WAIT_S), f"frame {k} was not handed out before frame {k + 1} was sent"
    finally:
        source.close()


def test_frame_threading_holds_a_live_frame_back_until_the_next_one_comes(flv_stream):
    """Why the default is one decoding thread: with two, FFmpeg gives frame k out only once
    frame k+1 has come in (what every frame of a live stream would wait)."""
    source, frames = _opened(flv_stream, LiveOptions(decode_threads=2))
    try:
        k = flv_stream.send()
        assert not _arrives(frames, k, 1.5)
        flv_stream.send()
        assert _arrives(frames, k, WAIT_S)
    finally:
        source.close()


@pytest.mark.parametrize("threads", [-1, 65])
def test_decode_threads_out_of_range_is_a_clear_error(threads):
    with pytest.raises(ConfigError, match="decode_threads must be 0"):
        LiveOptions(decode_threads=threads)
