#!/usr/bin/env python3
"""A live H.264 stream served as HTTP-FLV on 127.0.0.1, one frame whenever ``send`` is
called (libx264, zerolatency: each frame's packet goes out at once). Frame ``k`` is a
flat grey of ``level(k)``, which tells frames apart after decoding. Used by
``tests/test_stream_latency.py`` and ``tools/bench_overhead.py`` (section 8).
"""

from __future__ import annotations

import http.server
import io
import queue
import threading

import numpy as np

WIDTH, HEIGHT = 160, 96


def level(k: int) -> int:
    """Frame ``k``'s grey level: neighbours differ by 20, told apart after H.264."""
    return 20 + (k * 20) % 220


class _Chunks(io.RawIOBase):
    """What the muxer writes, queued for the HTTP handler (None ends the response)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[bytes | None] = queue.Queue()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.queue.put(bytes(data))
        return len(data)


class FlvStream:
    """A one-client HTTP-FLV server on 127.0.0.1: H.264 frames sent when ``send`` says."""

    def __init__(self, width: int = WIDTH, height: int = HEIGHT, fps: int = 10) -> None:
        import av

        self.chunks = _Chunks()
        chunks = self.chunks

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "video/x-flv")
                self.end_headers()
                while (chunk := chunks.queue.get()) is not None:
                    try:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                    except OSError:
                        return

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/live"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.container = av.open(self.chunks, "w", format="flv", options={"flush_packets": "1"})
        self.stream = self.container.add_stream("libx264", rate=fps)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.gop_size = 5  # a reader that joins (or drops what it probed) decodes again soon
        # zerolatency: each frame's packet comes out of the encoder at once
        self.stream.options = {"preset": "ultrafast", "tune": "zerolatency", "qp": "10"}
        self.sent = 0

    def send(self) -> int:
        """Encode and send the next frame; its index."""
        import av

        image = np.full((self.stream.height, self.stream.width, 3), level(self.sent), np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = self.sent
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.sent += 1
        return self.sent - 1

    def close(self) -> None:
        # The container is closed here, not left to the garbage collector: PyAV 15
        # crashed the process finalizing an output container that writes to Python I/O.
        self.container.close()
        self.chunks.queue.put(None)
        self.server.shutdown()
        self.server.server_close()
