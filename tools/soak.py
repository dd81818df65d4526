#!/usr/bin/env python3
"""Soak test: a live run for a long while, watched for leaks. Prints a Markdown table for
RELIABILITY.md.

    python tools/soak.py [--minutes 15] [--source SRC] [--model NAME|FILE] [--record DIR]

Every ``--every`` seconds it samples, per process of the run (supervisor and each stage,
by name): resident memory (RSS) and open file descriptors; and the run's shared-memory
segments. At the end it compares the last sample with the one ``--window`` minutes before
it (growth in %), and stops the run with Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from segstream.pipeline.process_table import processes, stage_name


def run_processes(session: int) -> dict[str, int]:
    """Name -> pid of the run's processes (``supervisor``, ``capture-0``, ``infer``...)."""
    out = {}
    for proc in processes():
        if proc.session != session:
            continue
        stage = stage_name(proc.cmdline)
        if stage:
            out[stage] = proc.pid
        elif "segstream run" in proc.cmdline:
            out["supervisor"] = proc.pid
        elif "resource_tracker" in proc.cmdline:
            out[f"tracker-{proc.pid}"] = proc.pid
    return out


def sample(pid: int) -> tuple[float, int]:
    """RSS (MB) and open file descriptors of ``pid``."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--window", type=float, default=10.0, help="growth over the last N minutes")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--source", default="test-pattern:1280x720@30")
    parser.add_argument("--model", default="")
    parser.add_argument("--record", default="", help="also record here (masks, overlay video)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="soak-"))
    command = [sys.executable, "-m", "segstream", "run", "--source", args.source, "--publish", "", "--quiet"]
    if args.model:
        command += ["--model", args.model]
    if args.record:
        command += ["--record", args.record]
    log = open(folder / "run.log", "wb")
    run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    samples: list[tuple[float, dict[str, tuple[float, int]], int]] = []
    started = time.monotonic()
    run_id = ""
    try:
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(args.every)
            if run.poll() is not None:
                raise SystemExit(f"the run ended early ({run.returncode}); see {folder / 'run.log'}")
            if not run_id:
                found = re.search(r"run (\w+): ", (folder / "run.log").read_text(errors="replace"))
                run_id = found.group(1) if found else ""
            now = {}
            for name, pid in run_processes(run.pid).items():
                try:
                    now[name] = sample(pid)
                except OSError:
                    pass
            shm = len([n for n in os.listdir("/dev/shm") if run_id and n.startswith(f"segstream-{run_id}")])
            samples.append((time.monotonic() - started, now, shm))
            print(f"{samples[-1][0]:7.0f} s  shm {shm}  " + "  ".join(f"{n} {r:.0f}MB/{f}fd" for n, (r, f) in
                                                                      sorted(now.items())), file=sys.stderr)
    finally:
        os.killpg(run.pid, signal.SIGINT)
        run.wait(timeout=60)
    end_t, end, end_shm = samples[-1]
    base_t, base, base_shm = next(s for s in samples if s[0] >= end_t - args.window * 60)
    print(f"machine: {os.cpu_count()} cores; command: {' '.join(sys.argv)}; run {run_id}, "
          f"{args.minutes:g} min, growth from {base_t / 60:.1f} to {end_t / 60:.1f} min\n")
    print("| process | RSS at start of window (MB) | RSS at end (MB) | growth | open files (start -> end) |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for name in sorted(end):
        if name not in base:
            continue
        (r0, f0), (r1, f1) = base[name], end[name]
        growth = (r1 - r0) / r0 * 100 if r0 else 0.0
        worst = max(worst, growth)
        print(f"| {name} | {r0:.1f} | {r1:.1f} | {growth:+.2f} % | {f0} -> {f1} |")
    print(f"\nshared-memory segments: {base_shm} -> {end_shm}; worst RSS growth {worst:+.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
