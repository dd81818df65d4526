#!/usr/bin/env python3
"""How long a running pipeline takes to stop on Ctrl-C (SIGINT to its process group), and
whether anything is left. Prints a Markdown table for RELIABILITY.md.

    python tools/stop_time.py [--runs 5] [--source SRC] [--model NAME|FILE] [--record]

Each run starts ``segstream run``, waits until it is running and has published for a
moment, sends SIGINT, and measures until every process of the session is gone.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from segstream.pipeline.process_table import session_processes


def one_stop(args: argparse.Namespace, folder: Path) -> tuple[float, int, int]:
    log = folder / "run.log"
    command = [sys.executable, "-m", "segstream", "run", "--source", args.source, "--publish", ""]
    if args.model:
        command += ["--model", args.model]
    if args.record:
        command += ["--record", str(folder / "rec")]
    env = {**os.environ, "TMPDIR": str(folder)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    deadline = time.monotonic() + 120
    while not re.search(r"run (\w+): running", log.read_text(errors="replace")):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"the run did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    run_id = re.search(r"run (\w+): running", log.read_text()).group(1)
    time.sleep(args.settle)
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    while session_processes(proc.pid):
        time.sleep(0.01)
    took = time.monotonic() - start
    shm = [n for n in os.listdir("/dev/shm") if n.startswith(f"segstream-{run_id}")]
    owners = [p for base in (folder, Path("/tmp")) for p in base.glob("segstream-*/owner")]
    folders = [p.parent for p in owners if run_id in p.read_text()]
    left = len(shm) + len(folders)
    return took, proc.returncode, left


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--source", default="test-pattern:1280x720@30")
    parser.add_argument("--model", default="")
    parser.add_argument("--record", action="store_true", help="also record (masks, overlay video)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of running before the stop")
    args = parser.parse_args()
    times = []
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; command: {' '.join(sys.argv)}\n")
    print("| run | stop took (s) | exit code | leftovers |")
    print("|---|---|---|---|")
    for k in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="stop-") as tmp:
            took, code, left = one_stop(args, Path(tmp))
        times.append(took)
        print(f"| {k + 1} | {took:.2f} | {code} | {left} |", flush=True)
    print(f"\np50 {statistics.median(times):.2f} s, max {max(times):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
