#!/usr/bin/env python3
"""Benchmark: local ONNX Runtime against a Triton Inference Server, one pipeline and four.

The same model (ESPNet exported at ``--size``) and the dash-cam clip, lossless ``--rate max``,
in one run: the pipeline with the model in its infer stage (ONNX Runtime CPU), then with
``--backend triton`` over gRPC, over gRPC with system shared memory (``--triton-shm``),
and four pipelines at once sharing the server. The server is the nvidia-pytriton
``tritonserver`` on this machine (``tools/triton_local.py``), serving a Python-backend model
that runs ONNX Runtime (the only backend that wheel has), with ``--instances`` instances.
Prints a Markdown table (paste it into BENCHMARKS.md).

    python tools/bench_triton.py [--model espnet-cityscapes] [--size 256x512] [--frames 120]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from segstream.assets import resolve_asset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from triton_local import LocalTriton  # noqa: E402


def segstream(*args: str) -> list[str]:
    return [sys.executable, "-m", "segstream", *args]


def runs(commands: list[list[str]], records: list[Path]) -> list[dict]:
    """Run the pipelines at once; their stats."""
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT) for c in commands]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise SystemExit(err.decode()[-3000:])
    return [json.loads((r / "stats.json").read_text()) for r in records]


def row(name: str, stats: list[dict]) -> str:
    fps = sum(s["throughput_fps"] for s in stats)
    p50 = statistics.mean(s["latency_ms"]["capture_to_publish"]["median"] for s in stats)
    p95 = max(s["latency_ms"]["capture_to_publish"]["p95"] for s in stats)
    published = sum(s["frames_published"] for s in stats)
    return f"| {name} | {len(stats)} | {fps:.1f} | {p50:.0f} | {p95:.0f} | {published} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="espnet-cityscapes")
    parser.add_argument("--size", default="256x512", help="HxW")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    height, width = args.size.split("x")
    clip = resolve_asset("solidWhiteRight.mp4")
    tmp = Path(tempfile.mkdtemp())
    repo, served = tmp / "repo", f"{args.model}-{args.size}"
    subprocess.run(segstream("triton-repo", args.model, "-o", str(repo), "--platform", "python", "--name", served,
                             "--height", height, "--width", width, "--max-batch", "8", "--instances",
                             str(args.instances)), check=True, capture_output=True, cwd=ROOT)
    local_model = tmp / "local.onnx"
    subprocess.run(segstream("export", args.model, "-o", str(local_model), "--height", height, "--width", width),
                   check=True, capture_output=True, cwd=ROOT)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; python "
          f"{platform.python_version()}; {args.model} at {args.size}; {args.frames} frames of the clip, lossless, "
          f"--rate max; Triton: {args.instances} Python-backend instances running ONNX Runtime (1 thread each), "
          f"--batch {args.batch}\n")
    print("| inference | pipelines | aggregate fps | latency p50 ms (mean) | p95 ms (worst) | published |")
    print("|---|---:|---:|---:|---:|---:|")
    common = ["--source", str(clip), "--policy", "lossless", "--rate", "max", "--publish", "", "--quiet"]

    def pipeline(tag: str, *extra: str, frames: int = args.frames) -> tuple[list[str], Path]:
        record = tmp / tag
        return segstream("run", *common, "--max-frames", str(frames), "--record", str(record), *extra), record

    cmd, rec = pipeline("local", "--model", str(local_model), "--backend", "onnxruntime")
    print(row("local ONNX Runtime", runs([cmd], [rec])), flush=True)
    server = LocalTriton(repo).start()
    try:
        triton = ["--backend", "triton", "--triton-url", server.url, "--model", served, "--batch", str(args.batch)]
        cmd, rec = pipeline("grpc", *triton)
        print(row("Triton, gRPC", runs([cmd], [rec])), flush=True)
        cmd, rec = pipeline("shm", *triton, "--triton-shm")
        print(row("Triton, gRPC + shared memory", runs([cmd], [rec])), flush=True)
        four = [pipeline(f"four-{k}", *triton, frames=args.frames // 4) for k in range(4)]
        print(row("Triton, gRPC, 4 pipelines sharing the server", runs([c for c, _ in four], [r for _, r in four])),
              flush=True)
        four = [pipeline(f"local-four-{k}", "--model", str(local_model), "--backend", "onnxruntime",
                         frames=args.frames // 4) for k in range(4)]
        print(row("local ONNX Runtime, 4 pipelines", runs([c for c, _ in four], [r for _, r in four])), flush=True)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
