"""The control API holds against clients it does not control (issue: a camera service that
runs for a month): slowloris connections are shut, a flood gets 503s instead of threads,
200 clients at once are all answered (none reset), a stranger's body is never read, a
short body does not hold a connection, and --api-allow limits what may be added. Real
processes and sockets on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from pipeline_helpers import start_pipeline, wait_for_exit
from test_sources_api import api
from test_streams import free_port

from segstream.pipeline.http_server import MAX_CONNECTIONS, REQUEST_DEADLINE_S
from segstream.pipeline.source_allow import allowed, canonical_source

pytestmark = [pytest.mark.integration]

TOKEN = "s3cret-token-for-tests"


def _threads(pid: int) -> int:
    return int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("Threads:")))


def _service(tmp_path, fast_onnx, *extra: str):
    port = free_port()
    log = tmp_path / "run.log"
    proc = start_pipeline(["run", "--source", "test-pattern:160x120@5", "--model", str(fast_onnx), "--api", str(port),
                           "--api-token", TOKEN, "--publish", "", "--quiet", *extra], log, tmp_path / "t")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            status, health = api(port, "GET", "/health", token=TOKEN)
            if status == 200 and health["state"] == "running":
                return port, proc, log
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the control API did not answer:\n{log.read_text()[-3000:]}")


def _raw(port: int, data: bytes, timeout: float = 20.0) -> bytes:
    """Send ``data`` on a new connection; what the server answers before it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def test_slowloris_connections_are_shut_and_a_flood_costs_no_threads(tmp_path, fast_onnx):
    """Was: 1000 slowloris connections all held after 48 s (1008 threads, 1023 fds)."""
    port, proc, log = _service(tmp_path, fast_onnx)
    threads_before = _threads(proc.pid)
    slow: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")  # never finished
            slow.append(sock)
        time.sleep(1.0)
        assert _threads(proc.pid) <= threads_before + MAX_CONNECTIONS + 2  # the rest got a 503, no thread
        deadline = time.monotonic() + REQUEST_DEADLINE_S + 20
        open_ones = list(slow)
        while open_ones and time.monotonic() < deadline:  # trickle a byte a second; the server shuts them
            still = []
            for sock in open_ones:
                try:
                    sock.sendall(b"X")
                    sock.settimeout(0.001)
                    if sock.recv(4096) == b"":
                        continue
                except (BlockingIOError, TimeoutError, socket.timeout):
                    pass
                except OSError:
                    continue
                still.append(sock)
            open_ones = still
            time.sleep(1.0)
        assert not open_ones, f"{len(open_ones)} slow connections still held after {REQUEST_DEADLINE_S + 20:.0f} s"
        status, health = api(port, "GET", "/health", token=TOKEN)  # and the API serves again
        assert status == 200 and health["state"] == "running"
        assert _threads(proc.pid) <= threads_before + 2
    finally:
        for sock in slow:
            sock.close()
        os.killpg(proc.pid, signal.SIGINT)
    assert wait_for_exit(proc, log, 30) == 130


def test_two_hundred_clients_at_once_are_all_answered(tmp_path, fast_onnx):
    """Was: 9-29 of 200 concurrent POSTs got ECONNRESET."""
    port, proc, log = _service(tmp_path, fast_onnx)
    statuses: list[int] = []
    errors: list[str] = []
    barrier = threading.Barrier(200)

    def client(k: int) -> None:
        barrier.wait()
        try:
            if k % 2:
                statuses.append(api(port, "GET", "/sources", token=TOKEN)[0])
            else:  # refused by the supervisor (an unknown field): the whole path, and no capture to start
                statuses.append(api(port, "POST", "/sources", {"uri": "test-pattern:32x32@1", "colour": k},
                                    token=TOKEN)[0])
        except Exception as exc:  # noqa: BLE001 - what the test counts
            errors.append(f"{type(exc).__name__}: {exc}")

    try:
        clients = [threading.Thread(target=client, args=(k,)) for k in range(200)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(timeout=120)
        assert not errors, errors[:5]
        assert len(statuses) == 200 and set(statuses) <= {200, 400, 503}, sorted(set(statuses))
        assert statuses.count(200) + statuses.count(400) >= 100  # a 503 is a clear "busy", never a reset
        assert api(port, "GET", "/health", token=TOKEN)[1]["state"] == "running"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
    assert wait_for_exit(proc, log, 60) == 130


def test_the_token_is_checked_before_the_body_and_a_short_body_holds_nothing(tmp_path, fast_onnx):
    """Was: unauthenticated 64 KiB bodies were read before the token check, and a body
    shorter than its Content-Length held a connection until the client gave up."""
    port, proc, log = _service(tmp_path, fast_onnx)
    try:
        start = time.monotonic()
        answer = _raw(port, b"POST /api/sources HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n")  # no body
        assert answer.startswith(b"HTTP/1.0 401") and time.monotonic() - start < REQUEST_DEADLINE_S / 2, answer[:200]
        start = time.monotonic()
        answer = _raw(port, b"POST /api/sources HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                      b"\r\nContent-Length: 100\r\n\r\n{\"uri\":", timeout=REQUEST_DEADLINE_S + 20)
        assert time.monotonic() - start < REQUEST_DEADLINE_S + 10  # shut at the deadline, not held
        assert answer == b"" or answer.startswith(b"HTTP/1.0 400"), answer[:200]
        assert api(port, "GET", "/health", token=TOKEN)[0] == 200
    finally:
        os.killpg(proc.pid, signal.SIGINT)
    assert wait_for_exit(proc, log, 30) == 130


def test_api_allow_limits_what_a_client_may_add(tmp_path, fast_onnx):
    allowed_dir = tmp_path / "videos"
    allowed_dir.mkdir()
    port, proc, log = _service(tmp_path, fast_onnx, "--api-allow", f"{allowed_dir}/*", "--api-allow",
                               "test-pattern:*", "--api-allow", "rtsp://10.0.0.*/*")
    try:
        for uri in ("/etc", "/etc/passwd", f"{allowed_dir}/../../etc/passwd", "rtsp://192.168.1.5/cam",
                    "rtsp://user:pw@10.0.1.5/cam", "http://10.0.0.5/cam", "kitti-semantics:/etc"):
            status, answer = api(port, "POST", "/sources", {"uri": uri}, token=TOKEN)
            assert status == 403 and "--api-allow" in answer["error"], (uri, answer)
        status, answer = api(port, "POST", "/sources", {"uri": "test-pattern:32x32@2", "id": "ok"}, token=TOKEN)
        assert status == 201, answer
    finally:
        os.killpg(proc.pid, signal.SIGINT)
    assert wait_for_exit(proc, log, 30) == 130


def test_canonical_sources_resolve_paths_and_drop_credentials(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "link").symlink_to("/etc")
    patterns = (f"{tmp_path}/a/*",)
    assert allowed(f"{tmp_path}/a/clip.mp4", patterns)
    assert not allowed(f"{tmp_path}/a/../../x", patterns)
    assert not allowed(f"{tmp_path}/link/passwd", (f"{tmp_path}/*",))  # a symlink out is followed
    assert canonical_source("rtsp://admin:pw@10.0.0.7:554/s") == "rtsp://10.0.0.7:554/s"
    assert allowed("rtsp://admin:pw@10.0.0.7:554/s", ("rtsp://10.0.0.*",))
    assert allowed("anything", ())
