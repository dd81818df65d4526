"""A source that cannot run fails alone: the others keep publishing, the run's restart
budget is not spent on it, and the service goes on (issue: a camera service that runs for
a month). Real processes and sockets; the control API on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from pipeline_helpers import start_pipeline, wait_for_exit
from test_chaos import stage_pid
from test_sources_api import Subscriber, api, wait_api, wait_state
from test_streams import free_port

from segstream.pipeline.restarts import CaptureDeaths

pytestmark = [pytest.mark.integration]


def _service(tmp_path, fast_onnx, *extra: str):
    port, publish = free_port(), f"tcp://127.0.0.1:{free_port()}"
    log, tmpdir = tmp_path / "run.log", tmp_path / "t"
    proc = start_pipeline(["run", "--source", "test-pattern:160x120@10", "--model", str(fast_onnx), "--api", str(port),
                           "--publish", publish, "--quiet", *extra], log, tmpdir)
    subscriber = Subscriber(publish)
    wait_api(port, proc, log)
    subscriber.wait(lambda: subscriber.masks.get("test-pattern", 0) > 0)
    return port, proc, log, subscriber


def test_a_test_pattern_too_large_for_a_frame_fails_alone(tmp_path, fast_onnx):
    """100000x100000 made the capture die of MemoryError six times, and the run ended."""
    port, proc, log, subscriber = _service(tmp_path, fast_onnx)
    try:
        for uri, sid in (("test-pattern:100000x100000@1", "huge"), ("test-pattern:0x0@5", "empty"),
                         ("test-pattern:64x64@0", "still")):
            status, answer = api(port, "POST", "/sources", {"uri": uri, "id": sid})
            assert status in (201, 400), answer
            if status == 201:
                failed = wait_state(port, sid, ("failed",))
                assert "test-pattern" in failed["error"], failed
        huge = api(port, "GET", "/sources/huge")[1]
        assert "pixels" in huge["error"] and "10000 M" in huge["error"], huge
        before = subscriber.masks["test-pattern"]
        subscriber.wait(lambda: subscriber.masks["test-pattern"] >= before + 5)  # the others go on
        status, health = api(port, "GET", "/health")
        assert health["state"] == "running" and proc.poll() is None
        assert api(port, "GET", "/stats")[1]["restarts"] == {}  # no restart was spent on them
    finally:
        subscriber.close()
        os.killpg(proc.pid, signal.SIGINT)
    assert wait_for_exit(proc, log, 30) == 130


def test_a_capture_that_keeps_dying_fails_its_source_not_the_run(tmp_path, fast_onnx):
    """Past --max-restarts, a capture's deaths end its source (``failed``, with why), not the
    run: the other source keeps publishing and the run's state stays ``running``."""
    port, proc, log, subscriber = _service(tmp_path, fast_onnx, "--max-restarts", "2")
    try:
        status, added = api(port, "POST", "/sources", {"uri": "test-pattern:96x64@10", "id": "doomed"})
        assert status == 201, added
        wait_state(port, "doomed", ("running",))
        kills, deadline = 0, time.monotonic() + 90
        while kills < 3 and time.monotonic() < deadline:  # two restarts allowed; the third death spends the budget
            try:
                pid = stage_pid(proc.pid, added["capture_stage"])
            except AssertionError:  # between a death and its restart
                time.sleep(0.05)
                continue
            os.kill(pid, signal.SIGKILL)
            kills += 1
            while time.monotonic() < deadline:  # until the supervisor reaped it
                try:
                    if stage_pid(proc.pid, added["capture_stage"]) != pid:
                        break
                except AssertionError:
                    break
                time.sleep(0.05)
        assert kills == 3
        failed = wait_state(port, "doomed", ("failed",))
        assert "died 3 times" in failed["error"] and "--max-restarts 2" in failed["error"], failed
        before = subscriber.masks["test-pattern"]
        subscriber.wait(lambda: subscriber.masks["test-pattern"] >= before + 5)
        assert "doomed" in subscriber.eos  # its stream was ended on its behalf, through every stage
        assert api(port, "GET", "/health")[1]["state"] == "running" and proc.poll() is None
    finally:
        subscriber.close()
        os.killpg(proc.pid, signal.SIGINT)
    assert wait_for_exit(proc, log, 30) == 130


def test_a_capture_that_dies_at_start_up_on_the_same_error_is_not_restarted_in_a_loop():
    deaths = CaptureDeaths()
    assert deaths.give_up("capture-1", "MemoryError: cannot allocate", started=False) is None
    reason = deaths.give_up("capture-1", "MemoryError: cannot allocate", started=False)
    assert reason is not None and "twice at start-up" in reason and "MemoryError" in reason
    # another error, a death after it started, or no error (a kill) restart as usual
    assert deaths.give_up("capture-2", "OSError: x", started=False) is None
    assert deaths.give_up("capture-2", "ValueError: y", started=False) is None
    assert deaths.give_up("capture-3", "MemoryError", started=True) is None
    assert deaths.give_up("capture-3", "MemoryError", started=True) is None
    assert deaths.give_up("capture-4", "", started=False) is None
    assert deaths.give_up("capture-4", "", started=False) is None


def test_well_formed_control_events_from_outside_the_run_are_refused(tmp_path, fast_onnx):
    """Another process of the same user that reaches the control socket sends what a stage
    would: a source failure, an error and a stage's end. Without the run's token none is
    taken: the source stays running, the run goes on, each is counted."""
    import tempfile

    import zmq

    from segstream.pipeline.control import EventKind, StageEvent
    from segstream.pipeline.control import encode as encode_control

    port, proc, log, subscriber = _service(tmp_path, fast_onnx)
    try:
        run_id = api(port, "GET", "/health")[1]["run_id"]
        run_dirs = [p.parent for base in (tmp_path / "t", Path(tempfile.gettempdir()))
                    for p in base.glob("segstream-*/owner") if p.read_text().split()[1:2] == [run_id]]
        context = zmq.Context()
        push = context.socket(zmq.PUSH)
        push.connect(f"ipc://{run_dirs[0] / 'control.sock'}")
        forged = [StageEvent("capture-0", EventKind.SOURCE_FAILED, source="test-pattern", message="forged"),
                  StageEvent("infer", EventKind.ERROR, message="forged"),
                  StageEvent("publish", EventKind.DONE, exit_code=1),
                  StageEvent("capture-0", EventKind.SOURCE_FAILED, source="test-pattern", message="forged",
                             token="not-the-token")]
        for event in forged:
            push.send(encode_control(event))
        push.close(linger=5000)
        context.term()
        before = subscriber.masks["test-pattern"]
        subscriber.wait(lambda: subscriber.masks["test-pattern"] >= before + 5)
        source = api(port, "GET", "/sources/test-pattern")[1]
        assert source["state"] == "running" and not source.get("error"), source
        assert api(port, "GET", "/stats")[1]["control_events_refused"] == len(forged)
    finally:
        subscriber.close()
        os.killpg(proc.pid, signal.SIGINT)
    assert wait_for_exit(proc, log, 30) == 130


def test_a_fifo_source_removed_while_it_waits_for_a_writer_ends_within_a_bounded_time(tmp_path, fast_onnx):
    """Was: a FIFO as a source stayed 'connecting'; DELETE answered 200 but its capture
    stayed until the run stopped."""
    port, proc, log, subscriber = _service(tmp_path, fast_onnx)
    fifo = tmp_path / "feed.fifo"
    os.mkfifo(fifo)
    try:
        status, answer = api(port, "POST", "/sources", {"uri": str(fifo), "id": "pipe"})
        assert status == 201, answer
        time.sleep(2.0)
        assert api(port, "GET", "/sources/pipe")[1]["state"] == "connecting"
        capture = api(port, "GET", "/sources/pipe")[1]["capture_stage"]
        start = time.monotonic()
        assert api(port, "DELETE", "/sources/pipe")[0] == 200
        ended = wait_state(port, "pipe", ("ended",), timeout=60)
        assert ended["removed"] and time.monotonic() - start < 30
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # its capture process is gone (no process of that stage)
            try:
                stage_pid(proc.pid, capture)
            except AssertionError:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"{capture} still runs after its source was removed")
        before = subscriber.masks["test-pattern"]
        subscriber.wait(lambda: subscriber.masks["test-pattern"] >= before + 5)  # the others go on
        assert api(port, "GET", "/health")[1]["state"] == "running"
    finally:
        subscriber.close()
        os.killpg(proc.pid, signal.SIGINT)
    assert wait_for_exit(proc, log, 30) == 130
