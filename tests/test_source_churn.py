"""Sources added and removed many times through the control API leave nothing behind in
any stage: no mapped ring, fd, run-folder file, metric series or book entry grows with
churn (issue: a camera service that runs for a month). Real processes, 127.0.0.1."""

from __future__ import annotations

import os
import signal
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from pipeline_helpers import children_of, start_pipeline, wait_for_exit
from test_sources_api import api, wait_api, wait_state
from test_streams import free_port

from segstream.pipeline.process_table import stage_name

pytestmark = [pytest.mark.integration]

ROUNDS = 10
PER_ROUND = 5  # 50 sources added and removed in all


def _footprint(supervisor: int) -> dict[str, tuple[int, int, int]]:
    """Per stage that is not a capture (and the supervisor): (shm segments mapped, fds,
    threads)."""
    pids = {stage_name(cmd): pid for pid, cmd in children_of(supervisor).items()}
    pids = {name: pid for name, pid in pids.items() if name and not name.startswith("capture")}
    pids["supervisor"] = supervisor
    out = {}
    for name, pid in pids.items():
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        segments = {line.split(None, 5)[5].removesuffix(" (deleted)") for line in maps if "/dev/shm/segstream-" in line}
        threads = int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                           if line.startswith("Threads:")))
        out[name] = (len(segments), len(os.listdir(f"/proc/{pid}/fd")), threads)
        SEGMENTS[name] = sorted(segments)
    return out


SEGMENTS: dict[str, list[str]] = {}  # the last footprint's segment names per stage, for messages


def _run_folder_files(supervisor: int) -> list[str]:
    """The files in the run's folder (``segstream-*`` in the temp folder, or in /tmp when
    that path is too long for ipc sockets), found by the supervisor's pid in its owner file."""
    folders = [p for base in {Path(tempfile.gettempdir()), Path("/tmp")} for p in base.glob("segstream-*")
               if (p / "owner").is_file() and (p / "owner").read_text().split()[:1] == [str(supervisor)]]
    assert len(folders) == 1, folders
    return sorted(str(p.relative_to(folders[0])) for p in folders[0].rglob("*"))


def _metrics(port: int) -> str:
    """The metrics body, less the one stage that appears once the first released capture
    is added up (``captures-released``: one series per family, however many follow)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as response:
        body = response.read().decode()
    return "\n".join(line for line in body.splitlines() if 'stage="captures-released"' not in line)


def _grown_series(before: str, after: str) -> dict[str, tuple[int, int]]:
    """Metric families with more series after than before: (before, after)."""
    def count(body: str) -> Counter[str]:
        return Counter(line.split("{")[0].split(" ")[0] for line in body.splitlines() if line and line[0] != "#")
    was, now = count(before), count(after)
    return {name: (was[name], now[name]) for name in now if now[name] > was[name]}


def _churn(port: int, first: int) -> None:
    ids = [f"churn-{first + k}" for k in range(PER_ROUND)]
    for sid in ids:
        status, answer = api(port, "POST", "/sources", {"uri": "test-pattern:160x120@10", "id": sid})
        assert status == 201, answer
    for sid in ids:
        assert wait_state(port, sid, ("running",))["state"] == "running"
    for sid in ids:
        assert api(port, "DELETE", f"/sources/{sid}")[0] == 200
    for sid in ids:
        wait_state(port, sid, ("ended",))


def test_sources_added_and_removed_fifty_times_leave_nothing_behind(tmp_path, fast_onnx):
    port, metrics_port = free_port(), free_port()
    log, tmpdir, record = tmp_path / "run.log", tmp_path / "t", tmp_path / "rec"
    proc = start_pipeline(["run", "--source", "test-pattern:160x120@10", "--model", str(fast_onnx), "--api",
                           str(port), "--metrics-port", str(metrics_port), "--publish", "", "--record", str(record),
                           "--quiet"], log, tmpdir)
    try:
        wait_api(port, proc, log)
        _churn(port, 0)  # warm-up: one round's growth (imports, pools) is not a leak
        time.sleep(2.0)
        before, files_before, metrics_before = _footprint(proc.pid), _run_folder_files(proc.pid), _metrics(metrics_port)
        for k in range(1, ROUNDS):
            _churn(port, k * PER_ROUND)
        deadline = time.monotonic() + 20  # the stages release what the last round's ends let go (a frame
        while True:                       # still being drawn from a ring holds it a moment longer)
            after, files_after = _footprint(proc.pid), _run_folder_files(proc.pid)
            if (all(after[s][0] <= before[s][0] for s in after) and files_after == files_before) or \
                    time.monotonic() > deadline:
                break
            time.sleep(1.0)
        metrics_after = _metrics(metrics_port)
        assert proc.poll() is None, log.read_text()[-3000:]
        for stage, (segments, fds, threads) in after.items():
            was = before[stage]
            assert segments <= was[0], (stage, "shared memory segments still mapped", was, after[stage],
                                        SEGMENTS[stage])
            assert fds <= was[1] + 2, (stage, "fds", was, after[stage])
            assert threads <= was[2] + 2, (stage, "threads", was, after[stage])
        assert files_after == files_before, "the run folder kept files of removed sources"
        assert 'source="churn-' not in metrics_after, "metric series of removed sources are still exported"
        assert len(metrics_after) <= len(metrics_before) * 1.05, str(_grown_series(metrics_before, metrics_after))
        listed = api(port, "GET", "/sources")[1]
        assert len(listed) <= 1 + 32, "the book of sources grows with every source ever added"
        assert api(port, "GET", "/health")[1]["state"] == "running"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
    assert wait_for_exit(proc, log, 60) == 130
