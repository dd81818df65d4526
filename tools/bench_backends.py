#!/usr/bin/env python3
"""Benchmark: every inference backend this machine runs, bare and in the full pipeline.

Bare: ``engine.infer`` (or ``infer_image`` for GPU engines, which normalise on the GPU)
on frames of the dash-cam clip prepared beforehand, after a warm-up, at each input size.
Pipeline: ``segstream run`` on the clip in lossless flow with that backend at the
model's own size. Backends that cannot run here are listed with the reason. Prints
Markdown tables (paste them into BENCHMARKS.md); ratios are to ONNX Runtime CPU in the
same run.

    python tools/bench_backends.py [--sizes 1024x512,2048x1024] [--frames 20] [--pipeline-frames 100]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from segstream.assets import resolve_asset
from segstream.engines.backends.base import load_engine
from segstream.engines.export import export_onnx
from segstream.engines.preprocess import Preprocessor
from segstream.engines.resolve import resolve_inference
from segstream.pipeline.config import PipelineConfig
from segstream.pipeline.sources.files import VideoFileSource
from segstream.pipeline.supervisor import Supervisor

MODEL = "espnet-cityscapes"
WARMUP = 3

# label -> (backend, options, why it cannot run here or None)
CANDIDATES = [
    ("onnxruntime cpu", "onnxruntime", {}),
    ("onnxruntime cuda", "onnxruntime", {"providers": ("cuda",)}),
    ("torch cpu", "torch", {"device": "cpu"}),
    ("torch cuda fp32", "torch", {"device": "cuda"}),
    ("torch cuda fp16", "torch", {"device": "cuda", "precision": "fp16"}),
    ("torch cuda fp16 graph", "torch", {"device": "cuda", "precision": "fp16", "cuda_graph": True}),
    ("tensorrt fp32", "tensorrt", {"precision": "fp32"}),
    ("tensorrt fp16", "tensorrt", {"precision": "fp16"}),
]


def why_not(label: str, backend: str, options: dict) -> str | None:
    if backend == "torch" and options.get("device") == "cuda":
        from segstream.engines.backends.torch_engine import torch_cuda_missing

        return torch_cuda_missing()
    if backend == "tensorrt":
        from segstream.engines.backends.tensorrt.versions import tensorrt_missing

        return tensorrt_missing()
    if "cuda" in options.get("providers", ()):
        from segstream.engines.backends.choice import ort_provider_missing

        return ort_provider_missing()
    return None


def bare_fps(backend: str, options: dict, onnx_path: Path, frames: list[np.ndarray], size: tuple[int, int]) -> float:
    if backend == "torch":
        engine = load_engine(MODEL, "torch", height=size[1], width=size[0], **options)
    else:
        engine = load_engine(onnx_path, backend, **options)
    pre = Preprocessor(engine.metadata)
    inputs = [pre.resize(f) if engine.takes_images else pre(f).copy() for f in frames]
    run = engine.infer_image if engine.takes_images else engine.infer
    for x in inputs[:WARMUP]:
        run(x)
    t0 = time.perf_counter()
    for x in inputs:
        run(x)
    elapsed = time.perf_counter() - t0
    engine.close()
    return len(inputs) / elapsed


def pipeline_fps(backend: str, options: dict, clip: Path, count: int) -> tuple[float, float]:
    model = resolve_inference(MODEL, backend=backend, precision=options.get("precision", "fp32"),
                              providers=tuple(options.get("providers", ())), cuda_graph=options.get("cuda_graph", False))
    config = PipelineConfig(sources=(str(clip),), model=MODEL, publish="", max_frames=count, policy="lossless",
                            backend=backend)
    stats = Supervisor(config, model).run().stats
    return stats["throughput_fps"], stats["latency_ms"]["capture_to_publish"].get("median", 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024x512,2048x1024", help="input sizes WxH, comma-separated")
    parser.add_argument("--frames", type=int, default=20, help="timed frames per bare measurement")
    parser.add_argument("--pipeline-frames", type=int, default=100, help="frames of the clip for the pipeline runs "
                                                                          "(0: skip)")
    args = parser.parse_args()
    clip = resolve_asset("solidWhiteRight.mp4")
    source = VideoFileSource(clip, "bench")
    frames = [f.image for f, _ in zip(source.frames(), range(args.frames + WARMUP))]
    source.close()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    runnable = [(label, b, o) for label, b, o in CANDIDATES if why_not(label, b, o) is None]
    print(f"machine: {platform.processor() or platform.machine()}, python {sys.version.split()[0]}")
    for label, backend, options in CANDIDATES:
        reason = why_not(label, backend, options)
        if reason:
            print(f"- {label}: not here ({reason.split(';')[0]})")
    print("\n| backend | input | bare fps | ms/frame | vs onnxruntime cpu |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in sizes:
            onnx_path = export_onnx(MODEL, Path(tmp) / f"espnet-{w}x{h}.onnx", height=h, width=w)
            base = None
            for label, backend, options in runnable:
                fps = bare_fps(backend, options, onnx_path, frames, (w, h))
                base = base or fps
                print(f"| {label} | {w}x{h} | {fps:.2f} | {1000 / fps:.1f} | {fps / base:.2f}x |", flush=True)
    if args.pipeline_frames:
        print("\n| backend | pipeline fps | latency median ms |\n|---|---|---|")
        for label, backend, options in runnable:
            fps, p50 = pipeline_fps(backend, options, clip, args.pipeline_frames)
            print(f"| {label} | {fps:.2f} | {p50:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
