"""The HTTP control API (``segstream run --api``) with real processes: sources added and
removed while the pipeline runs, their masks at a subscriber, their end of stream and
complete records, clear refusals, and a run that waits for sources until stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import pytest
from conftest import CLIP, ROOT, segstream_cmd
from dataset_trees import cityscapes_tree
from pipeline_helpers import leftovers, read_stats, start_pipeline, wait_for_exit
from test_chaos import stage_pid
from test_streams import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def api(port: int, method: str, path: str, body: object = None, raw: bytes | None = None,
        token: str = "") -> tuple[int, object]:
    """One request to the control API: (status, JSON answer)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api{path}", data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_api(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if api(port, "GET", "/health")[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"the control API did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


def source(port: int, sid: str) -> dict:
    status, answer = api(port, "GET", f"/sources/{sid}")
    assert status == 200, answer
    return answer  # type: ignore[return-value]


def wait_state(port: int, sid: str, states: tuple[str, ...], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = source(port, sid)
        if answer["state"] in states:
            return answer
        time.sleep(0.2)
    raise AssertionError(f"source {sid} not in {states} after {timeout} s: {answer}")


class Subscriber:
    """A plain ZeroMQ SUB on the run's PUB socket: masks and ends of stream by source."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self.context = zmq.Context()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(endpoint)
        self.masks: dict[str, int] = {}
        self.eos: dict[str, dict] = {}

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.sub.poll(50):
                continue
            _topic, raw, *payload = self.sub.recv_multipart()
            header = json.loads(raw)
            if header["kind"] == "eos":
                self.eos[header["source"]] = header["meta"]
            else:
                assert any(p["name"] == "mask" for p in header["parts"])
                self.masks[header["source"]] = self.masks.get(header["source"], 0) + 1

    def wait(self, condition, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            self.pump(0.2)
        assert condition(), f"masks {self.masks}, ends {list(self.eos)}"

    def close(self) -> None:
        self.sub.close(0)
        self.context.term()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(segstream_cmd("sources", *args), capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_sources_added_and_removed_while_running(tmp_path, fast_onnx):
    port, publish = free_port(), f"tcp://127.0.0.1:{free_port()}"
    record, log, tmpdir = tmp_path / "rec", tmp_path / "run.log", tmp_path / "t"
    tree = tmp_path / "cityscapes"
    cityscapes_tree(tree, frames=6, size=(512, 256))
    proc = start_pipeline(["run", "--source", "test-pattern:320x240@10", "--model", str(fast_onnx), "--api", str(port),
                           "--publish", publish, "--record", str(record), "--quiet"], log, tmpdir)
    subscriber = Subscriber(publish)
    try:
        wait_api(port, proc, log)
        subscriber.wait(lambda: subscriber.masks.get("test-pattern", 0) > 0)

        # the dash-cam clip through the API, the Cityscapes replay through the CLI client
        status, clip = api(port, "POST", "/sources", {"uri": str(CLIP), "id": "clip", "options": {"loop": True}})
        assert status == 201 and clip["id"] == "clip" and clip["state"] in ("connecting", "running"), clip
        added = cli("add", f"cityscapes:{tree}", "--id", "frankfurt", "--option", "rate=4", "--api", f"127.0.0.1:{port}")
        assert added.returncode == 0 and "frankfurt" in added.stdout, added.stderr
        subscriber.wait(lambda: all(subscriber.masks.get(s, 0) >= 3 for s in ("clip", "frankfurt")))
        listed = cli("list", "--api", f"http://127.0.0.1:{port}")
        assert listed.returncode == 0 and all(s in listed.stdout for s in ("test-pattern", "clip", "frankfurt"))

        # kill the inference worker (it joined the new sources while running) and the clip's
        # capture: each is restarted and the clip's masks go on
        for stage in ("infer", clip["capture_stage"]):
            before = subscriber.masks["clip"]
            os.kill(stage_pid(proc.pid, stage), signal.SIGKILL)
            subscriber.wait(lambda: subscriber.masks["clip"] >= before + 5)

        # refusals: each a clear 4xx, and nothing else disturbed
        status, answer = api(port, "POST", "/sources", raw=b"{not json")
        assert status == 400 and "JSON" in answer["error"]
        status, answer = api(port, "POST", "/sources", {"uri": "test-pattern", "id": "clip"})
        assert status == 409 and "clip" in answer["error"]
        for body in ({"uri": 5}, {"uri": "test-pattern", "id": "../etc"}, {"uri": "test-pattern", "colour": 1},
                     {"uri": "test-pattern", "options": {"max_frames": -1}}, [1, 2], {"uri": ""},
                     {"uri": "a\x00b"}, {"uri": "x" * 5000}, {"uri": "test-pattern", "id": ""},
                     {"uri": "test-pattern", "id": 5}, {"uri": "test-pattern", "options": {"rate": "fast"}},
                     {"uri": "test-pattern", "options": {"max_frames": "ten"}},
                     {"uri": "test-pattern", "options": {"live": {"bogus": 1}}}, {"uri": "test-pattern", "options": 3}):
            status, answer = api(port, "POST", "/sources", body)
            assert status == 400 and answer["error"], (body, answer)
        for raw in (b'{"uri": NaN}', b"[" * 60_000, b"\xff\xfe", b""):
            status, answer = api(port, "POST", "/sources", raw=raw)
            assert status == 400 and answer["error"], (raw[:20], answer)
        assert api(port, "DELETE", "/sources/nosuch")[0] == 404
        assert api(port, "GET", "/nosuch")[0] == 404
        status, broken = api(port, "POST", "/sources", {"uri": str(tmp_path / "missing.mp4"), "id": "missing"})
        assert status == 201
        failed = wait_state(port, "missing", ("failed",))
        assert "missing.mp4" in failed["error"]

        # remove the clip: its end of stream reaches the subscriber, its records are complete
        status, removed = api(port, "DELETE", "/sources/clip")
        assert status == 200 and removed["removed"]
        subscriber.wait(lambda: "clip" in subscriber.eos)
        assert subscriber.eos["clip"].get("removed") is True
        clip = wait_state(port, "clip", ("ended",))
        masks_before = source(port, "test-pattern")["frames_published"]
        subscriber.pump(3.0)
        assert source(port, "test-pattern")["frames_published"] > masks_before  # the others go on
        assert source(port, "test-pattern")["state"] == "running"
        published = clip["frames_published"]
        assert published == subscriber.masks["clip"]
        assert len(list((record / "clip" / "masks").glob("*.png"))) == published
        assert len((record / "clip" / "frames.jsonl").read_text().splitlines()) == published
        video = cv2.VideoCapture(str(record / "clip" / "overlay.mp4"))
        assert video.isOpened() and video.get(cv2.CAP_PROP_FRAME_COUNT) > 0  # closed: its index is written
        video.release()
        status, stats = api(port, "GET", "/stats")
        assert status == 200 and stats["per_source"]["clip"]["frames_published"] == published
    finally:
        subscriber.close()
    os.killpg(proc.pid, signal.SIGINT)
    assert wait_for_exit(proc, log, 30) == 130
    stats = read_stats(record)
    assert set(stats["per_source"]) == {"test-pattern", "clip", "frankfurt", "missing"}
    assert stats["per_source"]["clip"]["frames_published"] == published  # its figures stay
    assert stats["per_source"]["missing"]["error"] and stats["error"] == ""
    assert stats["restarts"].get("infer") == 1 and stats["restarts"].get(clip["capture_stage"]) == 1
    assert leftovers(stats["run_id"], tmpdir) == []


def test_a_run_with_api_and_no_source_waits_for_sources(tmp_path, fast_onnx):
    port = free_port()
    log, tmpdir = tmp_path / "run.log", tmp_path / "t"
    record = tmp_path / "cams"
    proc = start_pipeline(["run", "--api", f"127.0.0.1:{port}", "--model", str(fast_onnx), "--publish", "",
                           "--quiet", "--record", str(record)], log, tmpdir)
    wait_api(port, proc, log)
    assert api(port, "GET", "/sources") == (200, [])
    listed = cli("list", "--api", str(port))  # a bare port, as run --api takes it
    assert listed.returncode == 0, listed.stderr
    status, answer = api(port, "POST", "/sources", {"uri": "test-pattern:160x120@20", "id": "short",
                                                     "options": {"max_frames": 15}})
    assert status == 201, answer
    ended = wait_state(port, "short", ("ended",))
    assert ended["frames_in"] == 15 and ended["frames_published"] > 0
    time.sleep(1.0)
    status, health = api(port, "GET", "/health")
    assert status == 200 and health["state"] == "running" and proc.poll() is None  # it waits for more
    listed = cli("list", "--api", str(port))
    assert listed.returncode == 0 and "short" in listed.stdout, listed.stderr
    assert "--api takes PORT, HOST:PORT" in cli("list", "--api", "nonsense").stderr
    os.killpg(proc.pid, signal.SIGINT)
    assert wait_for_exit(proc, log, 30) == 130
    # the end summary names the folders written: the source's own, under its id
    summary = next(line for line in log.read_text().splitlines() if "outputs in" in line)
    assert f"outputs in {record}/:" in summary and "short/ (" in summary and "masks/" in summary
    assert (record / "short" / "masks").is_dir() and "stats.json" in summary


def test_control_api_token_and_bind_rules(tmp_path):
    from segstream.errors import ConfigError
    from segstream.pipeline.config import PipelineConfig
    from segstream.pipeline.control_api import ApiRequests, ControlApi

    with pytest.raises(ConfigError, match="--api-token"):
        PipelineConfig(api="0.0.0.0:8081", sources=())
    with pytest.raises(ConfigError, match=r"\[HOST:\]PORT"):
        PipelineConfig(api="127.0.0.1:http", sources=())
    requests = ApiRequests()
    server = ControlApi("127.0.0.1", 0, "s3cret", requests)
    answered: list[str] = []

    def serve() -> None:  # the supervisor's side, on this thread
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not answered:
            requests.serve(lambda r: (answered.append(r.path) or 200, {"path": r.path}))
            time.sleep(0.01)

    import threading

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert api(server.port, "GET", "/sources")[0] == 401
        assert api(server.port, "GET", "/sources", token="wrong")[0] == 401
        assert api(server.port, "GET", "/sources", token="s3cret") == (200, {"path": "/api/sources"})
        status, answer = api(server.port, "POST", "/sources", raw=b"x" * (70 << 10), token="s3cret")
        assert status == 413 and "at most" in answer["error"]
    finally:
        thread.join()
        server.close()
