#!/usr/bin/env python3
"""Fairness in live flow: N test-pattern cameras (10 fps each) added through the control API,
masks counted per source at a subscriber for a window. Prints a Markdown table: what the
pipeline published in all, the equal share, the least and most a source got (min / share
must stay >= 0.8, or the camera's own rate where that is lower), and what the run costs
(processes and their RSS: one capture process per camera).

    python tools/bench_fairness.py [--sources 1 4 20 50] [--window 20] [--model NAME|FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq
from soak import api, free_port  # tools/soak.py: the same control-API client

from segstream.pipeline.process_table import processes

FPS = 10


def count(sub: zmq.Socket, seconds: float, into: dict[str, int]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sub.poll(50):
            _topic, raw, *_ = sub.recv_multipart()
            header = json.loads(raw)
            if header["kind"] == "result":
                into[header["source"]] = into.get(header["source"], 0) + 1


def session_rss(session: int) -> tuple[int, float]:
    pids = [p.pid for p in processes() if p.session == session]
    rss = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
        except OSError:
            pass
    return len(pids), rss


def measure(n: int, window: float, model: str) -> dict[str, float]:
    port, pub_port = free_port(), free_port()
    command = [sys.executable, "-m", "segstream", "run", "--source", f"test-pattern:160x120@{FPS}", "--api", str(port),
               "--publish", f"tcp://127.0.0.1:{pub_port}", "--quiet", "--policy", "live"]
    if model:
        command += ["--model", model]
    log = open(Path(tempfile.mkdtemp(prefix="fairness-")) / "run.log", "wb")
    run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{pub_port}")
    try:
        deadline = time.monotonic() + 120
        while api(port, "GET", "/health")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        ids = ["test-pattern"] + [f"cam{k}" for k in range(1, n)]
        for sid in ids[1:]:
            api(port, "POST", "/sources", {"uri": f"test-pattern:160x120@{FPS}", "id": sid})
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            listed = api(port, "GET", "/sources")[1]
            if isinstance(listed, list) and sum(s["state"] == "running" for s in listed) >= n:
                break
            time.sleep(1.0)
        count(sub, 5.0, {})  # settle
        got: dict[str, int] = {}
        count(sub, window, got)
        procs, rss = session_rss(run.pid)
        rates = [got.get(sid, 0) / window for sid in ids]
        total = sum(rates)
        share = total / n
        return {"n": n, "total": total, "share": share, "min": min(rates), "max": max(rates),
                "fair": min(rates) / min(share, FPS) if share else 0.0, "procs": procs, "rss_gb": rss / 1024}
    finally:
        sub.close(0)
        context.term()
        os.killpg(run.pid, signal.SIGINT)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, nargs="+", default=[1, 4, 20, 50])
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--model", default="")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; command: python {' '.join(sys.argv)}; cameras at {FPS} fps each\n")
    print("| sources | published/s | equal share/s | least/s | most/s | least / min(share, own rate) | processes | "
          "RSS (GB) |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sources:
        r = measure(n, args.window, args.model)
        print(f"| {n} | {r['total']:.1f} | {r['share']:.2f} | {r['min']:.2f} | {r['max']:.2f} | {r['fair']:.2f} | "
              f"{r['procs']} | {r['rss_gb']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
