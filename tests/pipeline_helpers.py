"""Helpers for integration tests that start real pipelines."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
from conftest import ROOT, segstream_cmd

from segstream.pipeline.process_table import children_of, session_processes  # noqa: F401 - used by tests
from segstream.pipeline.sources.files import VideoFileSource

STARTED: list[subprocess.Popen[bytes]] = []


def start_pipeline(args: list[str], log: Path, tmpdir: Path) -> subprocess.Popen[bytes]:
    """Start ``segstream ARGS`` in its own session (like a terminal job), logging to ``log``.

    ``stop_started_pipelines`` (called after every test) kills whatever is left of it.
    """
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(segstream_cmd(*args), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)
    STARTED.append(proc)
    return proc


def wait_for_exit(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> int:
    """The pipeline's exit code; a run that does not end in ``timeout`` seconds fails the
    test with its log and the stages still alive (what a hang needs to be understood)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        from segstream.pipeline.process_table import children_of

        alive = sorted(children_of(proc.pid).values())
        raise AssertionError(f"the run did not end in {timeout:.0f} s; stages alive: {alive}\n"
                             f"{log.read_text()[-6000:]}") from None


def stop_started_pipelines() -> None:
    """Kill every process of the sessions tests started (a failed test leaves none)."""
    while STARTED:
        proc = STARTED.pop()
        for pid in session_processes(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def wait_for_log(log: Path, pattern: str, timeout: float = 90.0) -> re.Match[str]:
    """Wait until ``pattern`` appears in the log file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text(errors="replace"))
        if match:
            return match
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not in log after {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def free_port_block(size: int = 16) -> int:
    """The first of ``size`` consecutive tcp ports on 127.0.0.1 that are free now (tests on
    two workers must not pick the same ports), below the kernel's ephemeral range: there
    the outgoing side of any connection (another test's pipeline) can take one meanwhile."""
    import random
    import socket

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) \
        if Path("/proc/sys/net/ipv4/ip_local_port_range").exists() else 32768
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10000, max(low, 10000 + 2 * size) - size)
        socks = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError(f"no {size} consecutive free tcp ports")


def leftovers(run_id: str, tmpdir: Path) -> list[str]:
    """Shared memory segments and run folders (ipc sockets) a run left behind."""
    shm = [n for n in os.listdir("/dev/shm") if n.startswith(f"segstream-{run_id}")]
    return shm + [str(p) for p in tmpdir.glob("segstream-*")]


def video_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a video file, decoded (by the project's own video source)."""
    source = VideoFileSource(path, "test")
    try:
        return [frame.image for frame in source.frames()]
    finally:
        source.close()


def read_stats(record: Path) -> dict:
    return json.loads((record / "stats.json").read_text())


def run_config_to_end(tmp_path: Path, config_text: str, timeout: float) -> dict:
    """Run ``segstream run --config`` with ``config_text``, recording to ``tmp_path/rec``
    (its outputs stay there); assert it exits 0 within ``timeout`` s and return its stats.json."""
    config = tmp_path / "run.yaml"
    config.write_text(config_text)
    record = tmp_path / "rec"
    log = tmp_path / "run.log"
    proc = start_pipeline(["run", "--config", str(config), "--record", str(record)], log, tmp_path / "t")
    assert proc.wait(timeout=timeout) == 0, log.read_text()
    return read_stats(record)


class ResultCollector:
    """A plain ZeroMQ subscriber (wire format only) that collects results until every
    source it saw has ended."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self._zmq = zmq
        self.context = zmq.Context()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.connect(endpoint)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")

    def collect(self, timeout_s: float = 240) -> list[tuple[dict, dict[str, np.ndarray]]]:
        """(header, arrays by part name) per result, in arrival order."""
        results: list[tuple[dict, dict[str, np.ndarray]]] = []
        seen, ended = set(), set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not (seen and seen <= ended):
            if not self.sub.poll(200):
                continue
            _topic, raw, *payload = self.sub.recv_multipart()
            header = json.loads(raw)
            if header["kind"] == "eos":
                ended.add(header["source"])
                continue
            seen.add(header["source"])
            arrays = {p["name"]: np.frombuffer(payload[p["inline"]], p["dtype"]).reshape(p["shape"])
                      for p in header["parts"]}
            results.append((header, arrays))
        return results

    def close(self) -> None:
        self.sub.close(0)
        self.context.term()
