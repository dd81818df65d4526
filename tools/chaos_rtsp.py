#!/usr/bin/env python3
"""Chaos figures for RELIABILITY.md: RTSP outages and a paused server against a live run.

Starts the GStreamer RTSP test server (tools/rtsp_test_server.py, system Python) and a
``segstream run`` on its stream, subscribes to the published masks, then takes the server
down for each outage (killed, then started again on the same port) and pauses it
(SIGSTOP, then SIGCONT). For each, it measures how long after the server's return the
first new mask was published. Prints a Markdown table.

    python tools/chaos_rtsp.py [--outages 2,5,12] [--pause 8] [--repeat 1] [--model FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> float:
        """Start it; returns when it listens (monotonic)."""
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(ROOT / "tools" / "rtsp_test_server.py"), "--port",
                                      str(self.port)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        return time.monotonic()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


class Masks:
    """Receive times (monotonic) of published masks."""

    def __init__(self, endpoint: str) -> None:
        self.times: list[float] = []
        self._ctx = zmq.Context()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._sub.poll(50):
                _, header, *_ = self._sub.recv_multipart()
                if json.loads(header).get("kind") == "result":
                    self.times.append(time.monotonic())

    def first_after(self, t: float, timeout: float = 60.0) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            later = [x for x in self.times if x > t]
            if later:
                return later[0] - t
            time.sleep(0.02)
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sub.close(0)
        self._ctx.term()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outages", default="2,5,12", help="seconds the server is down, comma-separated")
    parser.add_argument("--pause", type=float, default=8.0, help="seconds the server is paused (SIGSTOP)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all outages")
    parser.add_argument("--model", default="", help="model for the run (default: the run's default)")
    args = parser.parse_args()
    outages = [float(x) for x in args.outages.split(",") if x]
    server = Server(free_port())
    server.start()
    folder = Path(tempfile.mkdtemp(prefix="chaos-"))
    endpoint = f"ipc://{folder}/pub.sock"
    masks = Masks(endpoint)
    command = [sys.executable, "-m", "segstream", "run", "--source", f"rtsp://127.0.0.1:{server.port}/test",
               "--publish", endpoint, "--quiet", "--connect-attempts", "1000"]
    if args.model:
        command += ["--model", args.model]
    log = open(folder / "run.log", "wb")
    run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rows: list[tuple[str, float | None]] = []
    try:
        if masks.first_after(0.0, timeout=120) is None:
            raise SystemExit(f"no mask within 120 s; see {folder / 'run.log'}")
        for _ in range(args.repeat):
            for down in outages:
                time.sleep(2)
                server.kill()
                time.sleep(down)
                back = server.start()
                rows.append((f"server killed, down {down:g} s", masks.first_after(back)))
            time.sleep(2)
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            time.sleep(args.pause)
            os.kill(server.proc.pid, signal.SIGCONT)
            back = time.monotonic()
            rows.append((f"server paused (SIGSTOP) {args.pause:g} s", masks.first_after(back)))
    finally:
        os.killpg(run.pid, signal.SIGINT)
        run.wait(timeout=30)
        masks.close()
        server.kill()
    print(f"machine: {os.cpu_count()} cores; command: {' '.join(sys.argv)}\n")
    print("| fault | masks again after the server's return (s) |")
    print("|---|---|")
    for name, resumed in rows:
        print(f"| {name} | {'never (60 s)' if resumed is None else f'{resumed:.2f}'} |")
    values = [r for _, r in rows if r is not None]
    if values:
        print(f"\nresumed {len(values)}/{len(rows)}; p50 {statistics.median(values):.2f} s, max {max(values):.2f} s")
    return 0 if len(values) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
