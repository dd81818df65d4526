"""A sink failure stays in the sink (issue: a camera service that runs for a month): an
unwritable record path is refused before the run starts; a full disk or a full broker makes
the sink count, wait (lossless, bounded) and stop with a clear error naming it, while the
stage lives and stats.json is always written. Real processes, a real tmpfs, a real Redis."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import CLIP, run_segstream
from test_brokers import REDIS, Broker

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize("target", ["/etc/passwd", "/proc/self", "file"])
def test_record_into_an_unwritable_path_is_refused_before_the_run_starts(tmp_path, fast_onnx, target):
    if target == "file":
        target = str(tmp_path / "a-file")
        Path(target).write_text("not a folder")
    result = run_segstream("run", "--source", "test-pattern:64x64@5", "--max-frames", "3", "--model", str(fast_onnx),
                           "--record", str(Path(target) / "rec") if target == "/proc/self" else target,
                           "--publish", "", timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--record" in result.stderr and "Traceback" not in result.stderr
    assert "stages started" not in result.stderr  # refused before any process started


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs, mounted for the test (skipped where mounting is not allowed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _stats_of(result: subprocess.CompletedProcess[str], record: Path) -> dict:
    """stats.json: in the record folder, or where the run said it put it instead."""
    moved = re.search(r"stats\.json written to (\S+) instead", result.stderr + result.stdout)
    return json.loads(Path(moved.group(1) if moved else record / "stats.json").read_text())


@pytest.mark.parametrize("policy", ["lossless", "live"])
def test_a_full_disk_stops_or_drops_in_the_sink_and_the_run_goes_on(tmp_path, fast_onnx, small_disk, policy):
    """Was: the mask sink crashed publish 5 times in 12 s, the pipeline stalled, and the CLI
    died with a traceback writing stats.json (a 0-byte .stats.json.tmp, no stats.json)."""
    record = small_disk / "rec"
    result = run_segstream("run", "--source", str(CLIP), "--loop", "--max-frames", "300", "--policy", policy,
                           "--rate", "max",
                           "--model", str(fast_onnx), "--record", str(record), "--publish", "", "--sink-wait-s", "2",
                           timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    stats = _stats_of(result, record)
    assert stats["restarts"] == {} and stats["error"] == ""  # no stage died
    assert stats["frames_in"] == 300 and stats["frames_unaccounted"] == 0
    masks = stats["stages"]["publish"]["sinks"]["masks"]
    if policy == "lossless":
        assert "No space left" in masks["error"] and "waited 2 s" in masks["error"], masks
        assert any("sink masks" in w for w in stats["warnings"])
        assert stats["frames_published"] == 300  # the masks go on to subscribers and the other sinks
    else:
        assert masks["failed"] > 0 and "No space left" in masks["last_error"] and "error" not in masks, masks
    assert not list(record.glob(".stats.json.tmp"))


@pytest.mark.skipif(not REDIS, reason="no redis-server here (.ci/run installs it)")
@pytest.mark.parametrize("frames", [40, 150])  # fewer than the sink's queue holds (waits at the end), and more
def test_a_full_redis_in_lossless_flow_stops_the_sink_after_a_bounded_wait(tmp_path, fast_onnx, frames):
    """Was: Redis at maxmemory with noeviction blocked a lossless run forever, and publish
    had to be SIGKILLed at stop."""
    redis = Broker("redis", tmp_path, extra=("--maxmemory", "1mb", "--maxmemory-policy", "noeviction")).start()
    try:
        record = tmp_path / "rec"
        result = run_segstream("run", "--source", str(CLIP), "--max-frames", str(frames), "--policy", "lossless",
                               "--model", str(fast_onnx), "--sink", redis.uri("masks"), "--mask-encoding", "raw",
                               "--record", str(record), "--publish", "", "--sink-wait-s", "2", timeout=180)
    finally:
        redis.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((record / "stats.json").read_text())
    figures = stats["stages"]["publish"]["sinks"]["redis"]
    assert "redis://127.0.0.1" in figures["error"] and "maxmemory" in figures["error"], figures
    assert "--sink-wait-s" in figures["error"]
    assert any("sink redis" in w for w in stats["warnings"])
    assert stats["frames_published"] == frames and stats["restarts"] == {}
