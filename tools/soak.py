#!/usr/bin/env python3
"""Service soak: a pipeline run as operators run it, watched for growth. Prints a Markdown
table for RELIABILITY.md, and writes the samples (CSV) and a plot of them (PNG).

    python tools/soak.py [--minutes 120] [--churn-every 30] [--kill-every 300] [--out DIR]

The run: ``segstream run --api`` on the dash-cam clip looped, with the live view on (so
render runs too) and the metrics endpoint. Every ``--churn-every`` seconds a test pattern
is added through the API and the one added before is removed; every ``--kill-every``
seconds a random stage process (a capture too) is SIGKILLed and the supervisor restarts
it. Every ``--every`` seconds it samples, per process of the run (supervisor and each
non-capture stage, by name): resident memory (RSS), open fds and threads; and the run's
shared-memory segments, run-folder files, live captures and metrics body. The metrics
are scraped every 5 s throughout. At the end it compares the last sample with the one
``--window`` minutes before (growth in %), and stops the run with Ctrl-C. Exit status 1
if the run died or any figure grew more than ``--max-growth`` percent.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from segstream.pipeline.process_table import processes, stage_name

CLIP = Path(os.environ.get("SEGSTREAM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / \
    "solidWhiteRight.mp4"
SCRAPE_S = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_processes(session: int) -> dict[str, int]:
    """Name -> pid of the run's processes (``supervisor``, ``infer``, ``capture-3``...)."""
    out = {}
    for proc in processes():
        if proc.session != session:
            continue
        stage = stage_name(proc.cmdline)
        if stage:
            out[stage] = proc.pid
        elif "segstream run" in proc.cmdline or "segstream', 'run" in proc.cmdline or proc.pid == session:
            out["supervisor"] = proc.pid
    return out


def footprint(pid: int) -> tuple[float, int, int]:
    """RSS (MB), open fds and threads of ``pid``."""
    rss, threads = 0.0, 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd")), threads


def api(port: int, method: str, path: str, body: object = None) -> tuple[int, object]:
    """One control-API request: (status, JSON answer); (0, {}) when nothing answers."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError:  # not listening (yet, or any more): no answer
        return 0, {}


def metrics_bytes(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as response:
            return len(response.read())
    except OSError:
        return -1


def run_folder(supervisor: int) -> Path | None:
    """The run's folder in the temp folder (found by the supervisor's pid in its owner file)."""
    for base in {Path(tempfile.gettempdir()), Path("/tmp")}:
        for folder in base.glob("segstream-*"):
            owner = folder / "owner"
            try:
                if owner.read_text().split()[:1] == [str(supervisor)]:
                    return folder
            except OSError:
                continue
    return None


def plot(rows: list[dict[str, float]], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [row["t_s"] / 60 for row in rows]
    fig, axes = plt.subplots(4, 1, figsize=(10, 12), sharex=True)
    for name in names:
        for ax, figure in zip(axes[:3], ("rss_mb", "fds", "threads")):
            ax.plot(minutes, [row.get(f"{name}.{figure}", float("nan")) for row in rows], label=name)
    for key in ("shm", "run_folder_files", "captures", "metrics_kb"):
        axes[3].plot(minutes, [row[key] for row in rows], label=key)
    for ax, title in zip(axes, ("RSS (MB)", "open fds", "threads", "run-wide")):
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=4)
    axes[-1].set_xlabel("minutes")
    fig.suptitle("segstream service soak: per-process footprint")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=120.0)
    parser.add_argument("--window", type=float, default=60.0, help="growth over the last N minutes")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--churn-every", type=float, default=30.0, help="seconds between source add/remove")
    parser.add_argument("--kill-every", type=float, default=300.0, help="seconds between stage kills (0: none)")
    parser.add_argument("--model", default="")
    parser.add_argument("--max-growth", type=float, default=5.0, help="percent allowed over the window")
    parser.add_argument("--out", default="", help="folder for soak.csv, soak.png and run.log (default: a temp one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="soak-"))
    out.mkdir(parents=True, exist_ok=True)
    api_port, metrics_port, view_port = free_port(), free_port(), free_port()
    command = [sys.executable, "-m", "segstream", "run", "--source", str(CLIP), "--loop", "--api", str(api_port),
               "--metrics-port", str(metrics_port), "--view", f"127.0.0.1:{view_port}", "--publish", "", "--quiet",
               "--max-restarts", "1000"]
    if args.model:
        command += ["--model", args.model]
    log = open(out / "run.log", "wb")
    run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rng = random.Random(args.seed)
    rows: list[dict[str, float]] = []
    names: set[str] = set()
    started = time.monotonic()
    next_sample = next_churn = next_scrape = started + 10
    next_kill = started + args.kill_every if args.kill_every else float("inf")
    churned, previous, kills, died, run_id = 0, "", 0, "", ""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(0.5)
            now = time.monotonic()
            if run.poll() is not None:
                died = f"the run ended ({run.returncode}); see {out / 'run.log'}"
                break
            if now >= next_scrape:
                next_scrape = now + SCRAPE_S
                metrics_bytes(metrics_port)
            if now >= next_churn:
                next_churn = now + args.churn_every
                sid = f"churn-{churned}"
                if api(api_port, "POST", "/sources", {"uri": "test-pattern:320x240@10", "id": sid})[0] == 201:
                    churned += 1
                    if previous:
                        api(api_port, "DELETE", f"/sources/{previous}")
                    previous = sid
            if now >= next_kill:
                next_kill = now + args.kill_every
                stages = {n: p for n, p in run_processes(run.pid).items() if n != "supervisor"}
                if stages:
                    victim = rng.choice(sorted(stages))
                    os.kill(stages[victim], signal.SIGKILL)
                    kills += 1
                    print(f"{(now - started) / 60:6.1f} min  killed {victim}", file=sys.stderr)
            if now >= next_sample:
                next_sample = now + args.every
                pids = run_processes(run.pid)
                row: dict[str, float] = {"t_s": round(now - started, 1)}
                for name, pid in pids.items():
                    if name.startswith("capture"):
                        continue
                    try:
                        rss, fds, threads = footprint(pid)
                    except OSError:
                        continue
                    names.add(name)
                    row.update({f"{name}.rss_mb": round(rss, 1), f"{name}.fds": fds, f"{name}.threads": threads})
                folder = run_folder(run.pid)
                if not run_id:
                    found = re.search(r"run (\w+): ", (out / "run.log").read_text(errors="replace"))
                    run_id = found.group(1) if found else ""
                row["shm"] = len([n for n in os.listdir("/dev/shm") if run_id and n.startswith(f"segstream-{run_id}-")])
                row["run_folder_files"] = len(list(folder.iterdir())) if folder else -1
                row["captures"] = sum(1 for n in pids if n.startswith("capture"))
                row["metrics_kb"] = round(metrics_bytes(metrics_port) / 1024, 1)
                rows.append(row)
                print(f"{row['t_s'] / 60:6.1f} min  " + "  ".join(
                    f"{n} {row.get(n + '.rss_mb', 0):.0f}MB/{row.get(n + '.fds', 0):.0f}fd/"
                    f"{row.get(n + '.threads', 0):.0f}t" for n in sorted(names)) +
                    f"  shm {row['shm']} files {row['run_folder_files']} metrics {row['metrics_kb']} KB",
                    file=sys.stderr)
    except KeyboardInterrupt:  # ended early (Ctrl-C, SIGTERM): report what was sampled
        print(f"ended early at {(time.monotonic() - started) / 60:.1f} min", file=sys.stderr)
    finally:
        os.killpg(run.pid, signal.SIGINT)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
    columns = sorted({key for row in rows for key in row}, key=lambda k: (k != "t_s", k))
    with open(out / "soak.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    if rows:
        plot(rows, sorted(names), out / "soak.png")
    if died or len(rows) < 2:
        print(died or "too few samples", file=sys.stderr)
        return 1
    end = rows[-1]
    base = next(row for row in rows if row["t_s"] >= end["t_s"] - args.window * 60)
    print(f"machine: {os.cpu_count()} cores; command: python {' '.join(sys.argv)}; {args.minutes:g} min, "
          f"{churned} sources added and removed, {kills} stages killed; growth from {base['t_s'] / 60:.1f} to "
          f"{end['t_s'] / 60:.1f} min (samples: {out / 'soak.csv'}, plot: {out / 'soak.png'})\n")
    print("| process | RSS (MB) | growth | fds | threads |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for name in sorted(names):
        keys = [f"{name}.{k}" for k in ("rss_mb", "fds", "threads")]
        if not all(k in base and k in end for k in keys):
            continue
        r0, r1 = base[keys[0]], end[keys[0]]
        growth = (r1 - r0) / r0 * 100 if r0 else 0.0
        worst = max(worst, growth)
        print(f"| {name} | {r0:.1f} -> {r1:.1f} | {growth:+.2f} % | {base[keys[1]]:.0f} -> {end[keys[1]]:.0f} | "
              f"{base[keys[2]]:.0f} -> {end[keys[2]]:.0f} |")
    print(f"\nshared-memory segments {base['shm']:.0f} -> {end['shm']:.0f}; run-folder files "
          f"{base['run_folder_files']:.0f} -> {end['run_folder_files']:.0f}; metrics body {base['metrics_kb']} -> "
          f"{end['metrics_kb']} KB; worst RSS growth {worst:+.2f} %")
    return 0 if worst <= args.max_growth else 1


if __name__ == "__main__":
    sys.exit(main())
