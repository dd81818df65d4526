#!/usr/bin/env python3
"""Benchmark: an instance model (Mask R-CNN) on the dash-cam clip, bare and in the pipeline.

In one run: the exported model in a single-process loop (decode, preprocess, ONNX Runtime,
detections and instance ids at frame resolution), then the pipeline lossless at
``--rate max`` and live at the clip's own 25 fps, both recording masks, instance ids and
the overlay video (``--record``). Pass the weights of a trained model (``segstream train``; see
``tools/bench_maskrcnn_training.py``) to measure with real detections. Prints a Markdown
table (paste it into BENCHMARKS.md).

    python tools/bench_instances.py --weights CKPT [--size 288x512] [--frames 120]
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pipeline(model: Path, clip: Path, record: Path, *args: str) -> dict:
    """``segstream run`` on the clip with ``args``; its stats.json."""
    command = [sys.executable, "-m", "segstream", "run", "--source", str(clip), "--model", str(model), "--publish",
               "", "--record", str(record), "--quiet", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return json.loads((record / "stats.json").read_text())


def bare(model: Path, clip: Path, frames: int) -> tuple[float, float, float]:
    """(fps, per-frame ms p50, mean detections) of the single-process loop."""
    import cv2

    from segstream.engines.backends.base import load_engine
    from segstream.engines.instance_results import instance_thresholds, instances_from_outputs
    from segstream.engines.preprocess import Preprocessor

    engine = load_engine(model, "onnxruntime")
    preprocess = Preprocessor(engine.metadata)
    thresholds = instance_thresholds(engine.metadata)
    capture = cv2.VideoCapture(str(clip))
    times, found = [], []
    started = time.perf_counter()
    for _ in range(frames):
        t0 = time.perf_counter()
        ok, frame = capture.read()
        if not ok:
            break
        outputs = engine.infer(preprocess(frame))
        detections, _, _ = instances_from_outputs(outputs, engine.metadata, frame.shape[:2], *thresholds)
        times.append((time.perf_counter() - t0) * 1e3)
        found.append(len(detections))
    elapsed = time.perf_counter() - started
    capture.release()
    return len(times) / elapsed, statistics.median(times), statistics.mean(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="maskrcnn-r18-fpn")
    parser.add_argument("--weights", help="trained weights (default: untrained)")
    parser.add_argument("--size", default="288x512", help="HxW the model is exported at")
    parser.add_argument("--frames", type=int, default=120)
    args = parser.parse_args()

    from segstream.engines.export import export_onnx

    data = Path(os.environ.get("SEGSTREAM_DATA", ROOT.parent / "shared" / "data"))
    clip = data / "solidWhiteRight.mp4"
    work = Path(tempfile.mkdtemp(prefix="segstream-instances-"))
    height, width = (int(v) for v in args.size.split("x"))
    # without --weights the model runs untrained: its speed, not its detections, is measured
    model = export_onnx(args.model, work / "model.onnx", weights=args.weights, height=height, width=width,
                        random_weights=True)
    fps, frame_ms, detections = bare(model, clip, args.frames)
    limit = ("--max-frames", str(args.frames))
    recorded = pipeline(model, clip, work / "recorded", "--policy", "lossless", "--rate", "max", *limit)
    live = pipeline(model, clip, work / "live", "--policy", "live", "--rate", "native", *limit)
    instances = [len(json.loads(line)["instances"]) for line in (work / "recorded" / "instances.jsonl").open()]

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.model} at "
          f"{width}x{height}, ONNX Runtime CPU, {args.frames} frames of the clip (960x540); "
          f"weights: {args.weights or 'untrained'}")
    print(f"instances per frame (score >= 0.5): bare {detections:.1f}, pipeline {statistics.mean(instances):.1f}")
    print("| run | fps | latency p50 ms | latency p95 ms | infer ms p50 (per worker) | published / in |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| single-process loop | {fps:.1f} | {frame_ms:.0f} (per frame) | | | |")
    for name, stats in (("pipeline, lossless --rate max", recorded), ("pipeline, live at 25 fps", live)):
        latency = stats["latency_ms"]["capture_to_publish"]
        infer = statistics.mean(st["process_ms"]["median"] for name, st in stats["stages"].items()
                                if name.startswith("infer"))  # each worker's
        print(f"| {name} | {stats['throughput_fps']:.1f} | {latency['median']:.0f} | {latency['p95']:.0f} | "
              f"{infer:.0f} | {stats['frames_published']} / {stats['frames_in']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
