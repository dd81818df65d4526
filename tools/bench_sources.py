#!/usr/bin/env python3
"""Benchmark: many sources on one host, batch 1 against batch N, and adding a source live.

Measured in one run, so the ratios compare like with like on a shared, noisy machine.
Prints Markdown tables (paste them into BENCHMARKS.md):

1. aggregate throughput and per-source latency p50/p95 with 1, 2, 4 and 8 sources, each
   the dash-cam clip, in lossless flow at ``--rate max`` (the same total frames spread over
   the sources) and in live flow at the clip's own 25 fps, with ``--batch 1`` and
   ``--batch N``;
2. the time from ``POST /api/sources`` to the new source's first mask at a subscriber,
   in a running pipeline that already has a source.

    python tools/bench_sources.py [--model espnet-cityscapes-q3] [--size 256x512]
                                  [--backend onnxruntime] [--batch 4] [--frames 240]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import zmq

from segstream.assets import resolve_asset

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def export(model: str, size: str, folder: Path) -> Path:
    """``model`` exported at ``size`` (HxW), dynamic batch axis."""
    from segstream.engines.export import export_onnx

    height, width = (int(v) for v in size.split("x"))
    # speed only: a model without trained weights runs untrained
    return export_onnx(model, folder / f"{model}-{size}.onnx", height=height, width=width, random_weights=True)


def run(args: list[str], timeout: float = 900) -> dict:
    """``segstream run ARGS --record DIR``; its stats.json."""
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "rec"
        cmd = [sys.executable, "-m", "segstream", "run", *args, "--record", str(record), "--publish", "", "--quiet"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"run failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
        return json.loads((record / "stats.json").read_text())


def source_rows(model: Path, backend: str, clip: Path, batches: tuple[int, ...], frames: int) -> None:
    print("\n### Sources and batching (the dash-cam clip per source)\n")
    print("| flow | sources | batch | aggregate fps | frames per engine call | latency p50 ms (mean of sources) "
          "| latency p95 ms (worst source) | published / in |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for flow in ("lossless", "live"):
        for n in (1, 2, 4, 8):
            for batch in batches:
                per_source = max(frames // n, 1) if flow == "lossless" else 150  # live: 6 s of each clip
                args = [a for _ in range(n) for a in ("--source", str(clip))]
                args += ["--model", str(model), "--backend", backend, "--policy", flow, "--batch", str(batch),
                         "--max-frames", str(per_source), "--workers", "1"]
                if flow == "lossless":
                    args += ["--rate", "max"]
                stats = run(args)
                sources = stats["per_source"].values()
                p50 = statistics.mean(s["latency_ms"]["median"] for s in sources)
                p95 = max(s["latency_ms"]["p95"] for s in sources)
                infer = stats["stages"]["infer"]["extra"]
                print(f"| {flow} | {n} | {batch} | {stats['throughput_fps']:.1f} | {infer.get('frames_per_call', 0):.2f} "
                      f"| {p50:.0f} | {p95:.0f} | {stats['frames_published']} / {stats['frames_in']} |", flush=True)


def _api(port: int, method: str, path: str, body: object = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api{path}", data=data, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def time_to_first_mask(model: Path, backend: str, clip: Path, repeats: int) -> None:
    print("\n### From POST /api/sources to the new source's first mask at a subscriber\n")
    port, publish = free_port(), f"tcp://127.0.0.1:{free_port()}"
    tmp = Path(tempfile.mkdtemp())
    proc = subprocess.Popen([sys.executable, "-m", "segstream", "run", "--api", str(port), "--source",
                             "test-pattern:640x360@10", "--model", str(model), "--backend", backend,
                             "--publish", publish, "--quiet"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=(tmp / "run.log").open("wb"), start_new_session=True)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(publish)
    times: list[float] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if _api(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        for k in range(repeats):
            sid = f"clip-{k}"
            start = time.perf_counter()
            status, _ = _api(port, "POST", "/sources", {"uri": str(clip), "id": sid, "options": {"max_frames": 50}})
            assert status == 201
            first = None
            while first is None and time.perf_counter() - start < 60:
                if sub.poll(20):
                    topic, *_rest = sub.recv_multipart()
                    if topic == sid.encode():
                        first = time.perf_counter() - start
            times.append(first if first is not None else float("nan"))
            _api(port, "DELETE", f"/sources/{sid}")
            time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        sub.close(0)
        context.term()
    print("| repeats | p50 s | min s | max s |")
    print("|---:|---:|---:|---:|")
    print(f"| {len(times)} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="espnet-cityscapes", help="zoo model to export")
    parser.add_argument("--size", default="256x512", help="export size HxW")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--batch", type=int, default=4, help="the batch compared with 1")
    parser.add_argument("--frames", type=int, default=240, help="lossless: total frames over all sources")
    parser.add_argument("--repeats", type=int, default=5, help="sources added for the time to the first mask")
    parser.add_argument("--sections", default="1,2")
    args = parser.parse_args()
    clip = resolve_asset("solidWhiteRight.mp4")
    with tempfile.TemporaryDirectory() as tmp:
        model = export(args.model, args.size, Path(tmp))
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; model {args.model} "
              f"at {args.size}, backend {args.backend}; python {platform.python_version()}")
        sections = set(args.sections.split(","))
        if "1" in sections:
            source_rows(model, args.backend, clip, (1, args.batch), args.frames)
        if "2" in sections:
            time_to_first_mask(model, args.backend, clip, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
