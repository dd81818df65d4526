#!/usr/bin/python3
"""A real RTSP server on 127.0.0.1 for tests and demos (GStreamer's RTSP server).

Run with the system Python, which has the GStreamer bindings (Debian: python3-gi,
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-{base,good,ugly}, gstreamer1.0-libav):

    /usr/bin/python3 tools/rtsp_test_server.py --port 8554 [--video clip.mp4]

Serves rtsp://127.0.0.1:PORT/test: a live test pattern (or a video file, looped),
H.264 at 25 fps. Prints "ready" once it listens; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

ENCODE = "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bitrate=2000 ! rtph264pay name=pay0 pt=96"


def launch_line(video: str | None, width: int, height: int) -> str:
    if video:
        return (f"( multifilesrc location={video} loop=true ! decodebin ! videoconvert ! videoscale ! "
                f"video/x-raw,width={width},height={height} ! videorate ! video/x-raw,framerate=25/1 ! {ENCODE} )")
    return (f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},framerate=25/1 ! "
            f"videoconvert ! {ENCODE} )")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--video", help="serve this file (looped) instead of a test pattern")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    args = parser.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args.video, args.width, args.height))
    factory.set_shared(True)
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print("ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
