"""Chaos with real processes: stage processes SIGKILLed in the middle of a run.

The run must go on (the supervisor restarts the dead stage), masks must flow again, and
the accounting must stay exact: every frame read is published or skipped with a reason.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import CLIP
from pipeline_helpers import children_of, leftovers, read_stats, start_pipeline, wait_for_exit, wait_for_log

from segstream.pipeline.process_table import stage_name


def stage_pid(supervisor: int, stage: str) -> int:
    """The pid of the live process of ``stage`` (any incarnation)."""
    pids = [pid for pid, cmd in children_of(supervisor).items() if stage_name(cmd) == stage]
    assert len(pids) == 1, (stage, children_of(supervisor))
    return pids[0]


def wait_for_masks(folder: Path, more_than: int, timeout: float = 60.0) -> int:
    """Wait until ``folder`` holds more than ``more_than`` mask files; return how many."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = len(list(folder.glob("*.png"))) if folder.is_dir() else 0
        if count > more_than:
            return count
        time.sleep(0.1)
    raise AssertionError(f"no new mask in {folder} within {timeout} s (still {more_than})")


def kill_and_wait_for_restart(proc, log: Path, stage: str) -> None:
    """SIGKILL the process of ``stage`` and wait until the supervisor restarted it."""
    os.kill(stage_pid(proc.pid, stage), signal.SIGKILL)
    wait_for_log(log, rf"stage {re.escape(stage)} restarted", timeout=60)


@pytest.mark.slow
def test_every_stage_kind_killed_during_a_live_run_is_restarted_and_masks_resume(tmp_path, fast_onnx):
    record, log = tmp_path / "rec", tmp_path / "run.log"
    proc = start_pipeline(["run", "--source", str(CLIP), "--loop", "--policy", "live", "--rate", "native",
                           "--max-frames", "900", "--model", str(fast_onnx), "--record", str(record),
                           "--publish", ""], log, tmp_path / "t")
    run_id = wait_for_log(log, r"run (\w+): running").group(1)
    masks = wait_for_masks(record / "masks", 0)
    for stage in ("infer", "publish", "render", "capture-0"):  # live flow preprocesses in the worker
        kill_and_wait_for_restart(proc, log, stage)
        masks = wait_for_masks(record / "masks", masks)  # masks flow again
    assert wait_for_exit(proc, log, 120) == 0, log.read_text()[-3000:]
    stats = read_stats(record)
    assert stats["restarts"] == {"infer": 1, "publish": 1, "render": 1, "capture-0": 1}
    assert stats["frames_unaccounted"] == 0
    assert stats["frames_in"] == stats["frames_published"] + stats["frames_skipped"]["total"]
    assert stats["frames_in"] <= 900 and stats["frames_published"] > 0
    # Publish writes a frame's mask, then counts it: a kill between the two leaves the mask of
    # the frame that died with the process on disk (counted as skipped, stage-restart).
    written = len(list((record / "masks").glob("*.png")))
    assert stats["frames_published"] <= written <= stats["frames_published"] + stats["restarts"]["publish"]
    assert all(n >= 0 for reasons in stats["frames_skipped"]["by_stage"].values() for n in reasons.values())
    assert "restarted" in log.read_text() and leftovers(run_id, tmp_path / "t") == []


@pytest.mark.slow
def test_a_worker_killed_in_lossless_flow_does_not_hold_the_run_and_every_frame_is_accounted(tmp_path, fast_onnx):
    record, log = tmp_path / "rec", tmp_path / "run.log"
    proc = start_pipeline(["run", "--source", str(CLIP), "--max-frames", "200", "--workers", "2",
                           "--model", str(fast_onnx), "--record", str(record), "--publish", "", "--rate", "25", "-v"],
                          log, tmp_path / "t")
    wait_for_masks(record / "masks", 5)
    kill_and_wait_for_restart(proc, log, "infer-1")
    wait_for_masks(record / "masks", 10)
    kill_and_wait_for_restart(proc, log, "preprocess")
    assert wait_for_exit(proc, log, 120) == 0, log.read_text()[-3000:]
    stats = read_stats(record)
    assert stats["restarts"] == {"infer-1": 1, "preprocess": 1}
    assert stats["frames_in"] == 200 and stats["frames_unaccounted"] == 0
    assert stats["frames_published"] + stats["frames_skipped"]["total"] == 200
    assert stats["frames_published"] >= 150  # only what the dead worker held is lost
    assert len(list((record / "masks").glob("*.png"))) == stats["frames_published"]


def test_a_stage_that_keeps_dying_ends_the_run_once_its_restarts_are_spent(tmp_path, fast_onnx):
    log = tmp_path / "run.log"
    proc = start_pipeline(["run", "--source", "test-pattern:320x240@15", "--model", str(fast_onnx),
                           "--publish", "", "--max-restarts", "1"], log, tmp_path / "t")
    run_id = wait_for_log(log, r"run (\w+): running").group(1)
    kill_and_wait_for_restart(proc, log, "publish")
    wait_for_log(log, r"run \w+: running")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the new process is up once it is a child again
        try:
            os.kill(stage_pid(proc.pid, "publish"), signal.SIGKILL)
            break
        except AssertionError:
            time.sleep(0.1)
    assert proc.wait(timeout=30) == 1
    text = log.read_text()
    assert "stage 'publish'" in text and "--max-restarts 1" in text
    assert leftovers(run_id, tmp_path / "t") == []


def test_a_run_embedded_in_another_program_is_not_swept_and_a_reused_pid_does_not_keep_a_dead_run(tmp_path):
    """A supervisor run from a program of the user's (the Python API), whose command line
    says nothing of segstream, keeps its folder while it lives; a folder whose owner's pid
    now belongs to a process started later (the pid was reused) is swept."""
    import subprocess
    import sys

    from segstream.pipeline.run_folder import claim, sweep_orphans

    embedded = tmp_path / "segstream-embedded"
    embedded.mkdir()
    claim(embedded, "0badcafe")  # by this test's process: pytest, not "segstream" on its command line
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "segstream"])
    try:
        reused = tmp_path / "segstream-reused"
        reused.mkdir()
        # owner: the other process's pid, but a start time before it began (as a dead
        # supervisor's pid taken by a newer process would read)
        (reused / "owner").write_text(f"{other.pid} feedface 1\n")
        removed = sweep_orphans(tmp_path)
        assert removed == [str(reused)]
        assert embedded.is_dir()
    finally:
        other.kill()
        other.wait()


def test_the_next_run_sweeps_what_runs_with_a_dead_supervisor_left_and_nothing_of_a_live_one(tmp_path):
    import subprocess
    import sys

    from segstream.pipeline.run_folder import sweep_orphans
    from segstream.pipeline.wire.shm_segments import Segment, unlink_segment

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "segstream"])
    try:
        orphan, running = tmp_path / "segstream-orphan", tmp_path / "segstream-running"
        for folder in (orphan, running):
            folder.mkdir()
            (folder / "control.sock").write_text("")
        (orphan / "owner").write_text(f"{dead.pid} deadbeef\n")
        (running / "owner").write_text(f"{live.pid} cafebabe\n")
        segments = []
        for name in ("segstream-deadbeef-capture-0-0", "segstream-cafebabe-capture-0-0"):
            segments.append(Segment(name, create=True, size=64))
        removed = sweep_orphans(tmp_path)
        assert sorted(removed) == sorted(["segstream-deadbeef-capture-0-0", str(orphan)])
        assert not orphan.exists() and running.is_dir()
        assert "segstream-cafebabe-capture-0-0" in os.listdir("/dev/shm")
    finally:
        live.kill()
        live.wait()
        for shm in segments:
            shm.close()
            unlink_segment(shm.name)


def test_a_ledger_outlives_its_killed_process_and_corrects_the_last_report(tmp_path):
    """The counters a stage wrote after its last report survive a SIGKILL."""
    import subprocess
    import sys

    from segstream.pipeline.telemetry.ledger import Entry, read_ledger
    from segstream.pipeline.telemetry.stats import StageReport, StageStats, combine, retire

    path = tmp_path / "infer.ledger"
    child = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from pathlib import Path
from segstream.pipeline.telemetry.ledger import Ledger
from segstream.pipeline.telemetry.stats import StageStats
stats = StageStats("infer")
stats.keep_ledger(Ledger(Path({str(path)!r})))
for k in range(7):
    stats.count_in()
for k in range(5):
    stats.record_out("cam", k)
stats.skipped.add("superseded", "cam")
print("ready", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.kill()
    child.wait()
    ledger = read_ledger(path)
    assert ledger is not None and ledger[Entry.FRAMES_IN] == 7 and ledger[Entry.FRAMES_OUT] == 5
    last_report = StageReport("infer", frames_in=3, frames_out=2)  # sent a second before it died
    dead = retire(last_report, "infer", ledger)
    # one skip its report never told (reason lost), one frame it held when it died
    assert (dead.frames_in, dead.frames_out, dead.skipped) == (7, 5, {"stage-restart": 2})
    successor = StageStats("infer")
    successor.count_in()
    successor.record_out("cam", 1)
    both = combine(dead, successor.report(), restarts=1)
    assert (both.frames_in, both.frames_out, both.restarts) == (8, 6, 1)


def test_restarts_and_lost_frames_reach_stats_prometheus_and_the_status_line():
    """The figures a run with one restarted stage reports, assembled as the supervisor does."""
    from segstream.engines.backends.choice import BackendChoice
    from segstream.engines.metadata import ModelMetadata
    from segstream.engines.resolve import InferenceModel
    from segstream.pipeline.spec import CaptureSettings
    from segstream.pipeline.telemetry.prometheus import prometheus_text
    from segstream.pipeline.telemetry.run_stats import RunFacts, assemble_stats
    from segstream.pipeline.telemetry.stats import StageReport
    from segstream.pipeline.telemetry.status_line import StatusLine
    from segstream.pipeline.wire.choices import FlowPolicy

    model = InferenceModel("m.onnx", ModelMetadata.example(), BackendChoice("onnxruntime", "cpu"))
    facts = RunFacts("0a1b2c3d", 0.0, 10.0, FlowPolicy.LIVE, model, ("clip.mp4",),
                     (("capture-0", CaptureSettings("clip.mp4", "clip")),), {}, 0, {"infer": 1}, True, 2)
    reports = {"capture-0": StageReport("capture-0", 100, 100),
               "infer": StageReport("infer", 95, 90, skipped={"superseded": 5}, restarts=1),
               "publish": StageReport("publish", 90, 88, skipped={"superseded": 2}, per_source={"clip": 88})}
    stats = assemble_stats(facts, reports, stopped=False, error="")
    # 100 in = 88 published + 7 skipped + 5 that died with the infer process
    assert stats["restarts"] == {"infer": 1} and stats["peers_refused"] == 2
    assert stats["frames_skipped"]["by_stage"]["infer"] == {"superseded": 5, "stage-restart": 5}
    assert stats["frames_unaccounted"] == 0
    assert 'segstream_stage_restarts_total{stage="infer"} 1.0' in prometheus_text(stats)
    assert "restarted infer x1" in StatusLine().text(stats, 1.0)
    stopped = assemble_stats(facts, reports, stopped=True, error="")  # in flight at a stop: not a restart loss
    assert stopped["frames_unaccounted"] == 5 and "stage-restart" not in stopped["frames_skipped"]["by_stage"]["infer"]
