#!/usr/bin/env python3
"""Chaos figures for RELIABILITY.md: stage processes SIGKILLed during a live run.

Runs the dash-cam clip in a loop through a live pipeline (recording masks), kills each
stage kind ``--rounds`` times in turn, and measures how long after each kill the next mask
was written. At the end it checks the accounting in stats.json. Prints a Markdown table.

    python tools/chaos_stages.py [--rounds 2] [--model NAME|FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from segstream.pipeline.process_table import children_of, stage_name

STAGES = ("infer", "publish", "render", "capture-0")  # live flow: the worker preprocesses


def stage_pid(supervisor: int, stage: str) -> int | None:
    return next((pid for pid, cmd in children_of(supervisor).items() if stage_name(cmd) == stage), None)


def newest_mask(folder: Path) -> float:
    times = [p.stat().st_mtime for p in folder.glob("*.png")]
    return max(times) if times else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="")
    parser.add_argument("--clip", default=str(Path(os.environ.get("SEGSTREAM_DATA", "../shared/data"))
                                             / "solidWhiteRight.mp4"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="chaos-stages-"))
    record = folder / "rec"
    command = [sys.executable, "-m", "segstream", "run", "--source", args.clip, "--loop", "--policy", "live",
               "--rate", "native", "--record", str(record), "--publish", "", "--quiet"]
    if args.model:
        command += ["--model", args.model]
    log = open(folder / "run.log", "wb")
    run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rows = []
    try:
        deadline = time.monotonic() + 120
        while newest_mask(record / "masks") == 0.0:
            if time.monotonic() > deadline:
                raise SystemExit(f"no mask within 120 s; see {folder / 'run.log'}")
            time.sleep(0.2)
        for _ in range(args.rounds):
            for stage in STAGES:
                time.sleep(3)
                pid = stage_pid(run.pid, stage)
                if pid is None:
                    raise SystemExit(f"no process for {stage}")
                killed = time.time()
                os.kill(pid, signal.SIGKILL)
                resumed = None
                while time.time() - killed < 60:
                    if newest_mask(record / "masks") > killed:
                        resumed = newest_mask(record / "masks") - killed
                        break
                    time.sleep(0.05)
                rows.append((stage, resumed))
        time.sleep(3)
    finally:
        os.killpg(run.pid, signal.SIGINT)
        run.wait(timeout=60)
    stats = json.loads((record / "stats.json").read_text())
    masks = len(list((record / "masks").glob("*.png")))
    print(f"machine: {os.cpu_count()} cores; command: {' '.join(sys.argv)}\n")
    print("| stage killed (SIGKILL) | next mask written after (s) |")
    print("|---|---|")
    for stage, resumed in rows:
        print(f"| {stage} | {'never (60 s)' if resumed is None else f'{resumed:.2f}'} |")
    values = [r for _, r in rows if r is not None]
    print(f"\nkills {len(rows)}, survived {len(values)}; resume p50 {statistics.median(values):.2f} s, "
          f"max {max(values):.2f} s; restarts {stats['restarts']}")
    print(f"frames in {stats['frames_in']}, published {stats['frames_published']}, skipped "
          f"{stats['frames_skipped']['total']}, unaccounted {stats['frames_unaccounted']} (stopped: frames in "
          f"flight at the stop); masks on disk {masks}")
    return 0 if len(values) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
