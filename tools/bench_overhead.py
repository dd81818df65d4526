#!/usr/bin/env python3
"""Benchmark: what segstream's own work costs next to a near-free model.

Measured in one run, so the ratios compare like with like on a shared, noisy machine.
Prints Markdown tables (paste them into BENCHMARKS.md):

1. near-free model (ESPNet q=3 exported at 64x128): pipeline vs a naive single-process
   loop, lossless ``--rate max``, masks published, with and without ``--record``, at
   960x540 (the dash-cam clip), 1920x1080 and 2048x1024 (the clip scaled);
2. each stage's own CPU time per frame in those pipeline runs;
3. live flow on ``test-pattern:1920x1080@30`` with an overlay recorded: frames skipped,
   latency minus inference;
4. one hop of a 2048x1024x3 frame (ring write, message, ring read) against a memcpy;
5. lossless latency with 1, 2 and 4 sources at the same total frames;
6. start-up to the first mask (cold and warm) and the run's total RSS;
7. a folder of JPEGs (the clip's frames at 1920x1080 and 2048x1024), masks written as PNGs
   (``masks:DIR``), decoded whole and with ``--reduced-decode``: throughput and capture's
   and preprocess's CPU per frame;
8. a live H.264 stream (HTTP-FLV from ``tools/flv_stream.py``, 1280x720 at 25 fps): how long
   after a frame was sent the stream source hands it out, decoded by one thread and by
   FFmpeg's default (one per core, frame threading).

    python tools/bench_overhead.py [--frames N] [--sections 1,3,4,5,6,7,8] [--repeat R]

To compare two trees, run each from its own folder (``cd TREE && PYTHONPATH=TREE python
/path/to/this/script``): the stage processes are started with ``python -m``, which imports
the package of the current folder before ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import zmq

from segstream.assets import resolve_asset
from segstream.engines.backends.base import labels_from_outputs, load_engine
from segstream.engines.preprocess import Preprocessor
from segstream.pipeline.config import PipelineConfig
from segstream.pipeline.overlay import OverlayRenderer
from segstream.pipeline.sinks.records import write_png
from segstream.pipeline.sinks.video import VideoFile
from segstream.pipeline.supervisor import Supervisor
from segstream.pipeline.wire.choices import FlowPolicy
from segstream.pipeline.wire.messages import Header, Kind, Message, decode, encode
from segstream.pipeline.wire.payloads import PayloadMode, PayloadReader, PayloadWriter

SIZES = ((960, 540), (1920, 1080), (2048, 1024))


def near_free_model(folder: Path) -> Path:
    """ESPNet q=3 exported at 64x128: a few milliseconds a frame on one core."""
    from segstream.engines.export import export_onnx

    path = folder / "near-free.onnx"
    export_onnx("espnet-cityscapes-q3", path, height=64, width=128)
    return path


def scaled_clip(clip: Path, size: tuple[int, int], frames: int, folder: Path) -> Path:
    """The clip's first ``frames`` frames at ``size``, as an mp4v file both sides decode."""
    if size == (960, 540):
        return clip
    path = folder / f"clip-{size[0]}x{size[1]}.mp4"
    cap = cv2.VideoCapture(str(clip))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, size)
    for _ in range(frames):
        ok, frame = cap.read()
        if not ok:
            break
        writer.write(cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR))
    writer.release()
    cap.release()
    return path


def naive_loop(model: Path, clip: Path, count: int, out_dir: Path | None, threads: int = 0) -> tuple[float, list[float]]:
    """Read, preprocess, infer, resize the mask (and with ``out_dir``: write its PNG, draw
    the overlay, encode it) in one loop, with the project's own writers; ``threads`` for
    the session (0: one per core). (fps, per-frame latencies in ms)."""
    engine = load_engine(model, "onnxruntime", threads=threads or os.cpu_count() or 1)
    meta = engine.metadata
    pre = Preprocessor(meta)
    renderer = OverlayRenderer(meta.class_names, meta.palette, meta.ignore_index)
    video = VideoFile(out_dir / "overlay.mp4", 25) if out_dir else None
    cap = cv2.VideoCapture(str(clip))
    latencies = []
    n = 0
    start = time.perf_counter()
    while n < count:
        t0 = time.perf_counter()
        ok, frame = cap.read()
        if not ok:
            break
        labels = labels_from_outputs(engine.infer(pre(frame)), meta)
        mask = cv2.resize(labels, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
        if video is not None and out_dir is not None:
            write_png(out_dir / "masks" / f"{n:06d}.png", mask)
            video.write(renderer.annotate(frame, mask, n))
        latencies.append((time.perf_counter() - t0) * 1000)
        n += 1
    elapsed = time.perf_counter() - start
    if video is not None:
        video.close()
    cap.release()
    engine.close()
    return n / elapsed, latencies


def pipeline(config: PipelineConfig, model: Path) -> dict:
    from segstream.engines.resolve import resolve_inference

    result = Supervisor(config, resolve_inference(str(model), backend="onnxruntime")).run()
    if result.exit_code != 0:
        raise SystemExit(f"pipeline failed: {result.error}")
    return result.stats


def stage_costs(stats: dict) -> dict[str, float]:
    """Each stage's CPU time per frame, ms (every thread of its process, start-up left
    out where the stage reports it; inference workers together)."""
    cpu: dict[str, float] = {}
    frames: dict[str, int] = {}
    for name, stage in stats["stages"].items():
        key = "infer" if name.startswith("infer") else name.split("-")[0]
        cpu[key] = cpu.get(key, 0.0) + stage.get("cpu_s", 0.0) - stage.get("cpu_setup_s", 0.0)
        frames[key] = frames.get(key, 0) + stage["frames_in"]
    return {key: 1000 * cpu[key] / max(frames[key], 1) for key in cpu}


def section_near_free(model: Path, clip: Path, frames: int, tmp: Path, repeat: int = 1) -> None:
    """Naive loop and pipeline, with and without --record, one right after the other,
    ``repeat`` times per size: the ratio of each round (this machine's speed moves by
    10-20 % from one minute to the next), their median in bold."""
    print("\n### Near-free model: pipeline vs naive loop (lossless, --rate max)\n")
    if repeat > 1:
        print(f"{repeat} rounds per size, each round naive then pipeline; fps of the last round, ratios of every "
              f"round (median in bold).\n")
    print("| input | naive fps | pipeline fps | ratio | naive + record fps | pipeline + record fps | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    cost_rows = []
    busy: dict[tuple[int, int], float] = {}
    for size in SIZES:
        source = scaled_clip(clip, size, frames, tmp)
        base = PipelineConfig(sources=(str(source),), model=str(model), max_frames=frames, rate="max",
                              policy=FlowPolicy.LOSSLESS, quiet=True)
        ratios: tuple[list[float], list[float]] = ([], [])
        for _ in range(repeat):
            cpu_before, wall_before = _own_cpu_s(), time.perf_counter()
            naive, _ = naive_loop(model, source, frames, None)
            busy[size] = (_own_cpu_s() - cpu_before) / (time.perf_counter() - wall_before)
            plain = pipeline(replace(base, publish=f"ipc://{tmp}/pub-{size[0]}"), model)
            naive_rec, _ = naive_loop(model, source, frames, tmp / f"naive-{size[0]}")
            recorded = pipeline(replace(base, publish=f"ipc://{tmp}/pubr-{size[0]}",
                                        record=str(tmp / f"rec-{size[0]}")), model)
            p, r = plain["throughput_fps"], recorded["throughput_fps"]
            ratios[0].append(p / naive)
            ratios[1].append(r / naive_rec)
        cells = [_ratio_cell(values) for values in ratios]
        print(f"| {size[0]}x{size[1]} | {naive:.1f} | {p:.1f} | {cells[0]} | {naive_rec:.1f} | {r:.1f} | {cells[1]} |")
        cost_rows.append((f"{size[0]}x{size[1]}", stage_costs(plain), stage_costs(recorded)))
    print("\nThe naive loop (no --record) keeps " + ", ".join(f"{b:.2f}" for b in busy.values()) +
          " cores busy (its CPU time over its wall time; FFmpeg's and ONNX Runtime's threads), at " +
          ", ".join(f"{w}x{h}" for w, h in busy) + ".")
    print("\n### CPU time per frame of each stage, ms (near-free model; without / with --record)\n")
    stages = ["capture", "preprocess", "infer", "publish", "render"]
    print("| input | " + " | ".join(stages) + " |")
    print("|---|" + "---:|" * len(stages))
    for label, plain, rec in cost_rows:
        cells = [f"{plain[s]:.1f} / {rec[s]:.1f}" if s in plain else f"- / {rec[s]:.1f}" for s in stages if s in rec]
        print(f"| {label} | " + " | ".join(cells) + " |")


def _own_cpu_s() -> float:
    """CPU seconds of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _ratio_cell(values: list[float]) -> str:
    """``**median**`` of the rounds' ratios, then every round's where there are several."""
    median = f"**{float(np.median(values)):.2f}**"
    return median if len(values) == 1 else f"{median} ({', '.join(f'{v:.2f}' for v in values)})"


def section_live(model: Path, tmp: Path, seconds: float) -> None:
    frames = int(30 * seconds)
    config = PipelineConfig(sources=("test-pattern:1920x1080@30",), model=str(model), max_frames=frames,
                            policy=FlowPolicy.LIVE, publish=f"ipc://{tmp}/pub-live", quiet=True,
                            sinks=(f"video:{tmp}/live-video", f"timings:{tmp}/live-timings"))
    stats = pipeline(config, model)
    lines = [json.loads(line) for line in next((tmp / "live-timings").rglob("*.jsonl")).read_text().splitlines()]
    beyond = [f["e2e_ms"] - sum(s["stage_ms"] for n, s in f["stages"].items() if n.startswith("infer"))
              for f in lines]
    skipped = stats["frames_skipped"]
    print("\n### Live flow, near-free model, test-pattern:1920x1080@30, overlay video recorded\n")
    print("| frames in | published | rendered (left undrawn) | not published (by stage and reason) | latency p50 ms | "
          "latency minus inference p50 ms |")
    print("|---:|---:|---:|---|---:|---:|")
    reasons = ", ".join(f"{stage} {reason} {n}" for stage, by in skipped.get("by_stage", {}).items()
                        for reason, n in by.items()) or "none"
    undrawn = ", ".join(f"{reason} {n}" for reason, n in
                        stats["stages"].get("render", {}).get("skipped", {}).items()) or "none"
    print(f"| {stats['frames_in']} | {stats['frames_published']} | {stats.get('frames_rendered', '-')} ({undrawn}) | "
          f"{skipped['total']} ({reasons}) | {stats['latency_ms']['capture_to_publish']['median']:.1f} | "
          f"**{np.median(beyond):.1f}** |")
    costs = stage_costs(stats)
    print("\nCPU time per frame taken: " + ", ".join(f"{k} {v:.1f} ms" for k, v in costs.items()))


def section_hop(iterations: int) -> None:
    """One hop of a 2048x1024x3 frame: ring write + message over ipc + ring read, both ways
    a producer can hand a frame over: written straight into the reserved slot (capture's
    decoders do that) or copied into it from an array of its own."""
    frame = np.random.default_rng(0).integers(0, 255, (1024, 2048, 3), np.uint8)
    context = zmq.Context()
    endpoint = f"ipc://{tempfile.gettempdir()}/segstream-hop-{os.getpid()}"
    push, pull = context.socket(zmq.PUSH), context.socket(zmq.PULL)
    pull.bind(endpoint)
    push.connect(endpoint)
    writer = PayloadWriter(PayloadMode.SHM, f"segstream-{os.getpid():08x}-hop", readers=1, slots=8, lossless=True)
    reader = PayloadReader(0)
    target = np.empty_like(frame)
    in_place = getattr(reader, "view", None)  # read in place where this version can (else a copy)
    reserve = getattr(writer, "reserve", None)  # a producer writing into the slot, where this version can
    rows: dict[str, list[list[float]]] = {"copy": [[] for _ in range(5)], "in place": [[] for _ in range(5)]}
    try:
        for k in range(iterations):
            for way, series in rows.items():
                slot = reserve(frame.shape, frame.dtype) if reserve and way == "in place" else None
                if slot is not None:
                    np.copyto(slot, frame)  # the producer's own work (a decoder's output), not the hop's
                elif way == "in place":
                    continue
                t0 = time.perf_counter()
                message = Message(Header(Kind.FRAME, "hop", k))
                writer.add(message, "frame", frame if slot is None else slot)
                t1 = time.perf_counter()
                push.send_multipart(encode(message), copy=False)
                received = decode([f.buffer for f in pull.recv_multipart(copy=False)])
                t2 = time.perf_counter()
                image = in_place(received, "frame") if in_place else reader.get(received, "frame")
                float(image[0, 0, 0])  # touch it as a stage would
                reader.release(received, "frame")
                t3 = time.perf_counter()
                np.copyto(target, frame)
                t4 = time.perf_counter()
                for values, value in zip(series, (t3 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    values.append(value)
    finally:
        writer.close()
        reader.close()
        push.close(0)
        pull.close(0)
        context.term()

    def p50(values: list[float]) -> str:
        return f"{np.median(values[5:]) * 1000:.3f}" if values else "-"

    print(f"\n### One hop of a 2048x1024x3 uint8 frame (p50 of {iterations}, ms)\n")
    print("| the producer's frame | hop: into the ring + message + ring read | into the ring | message (encode, ipc "
          "send/recv, decode) | ring read (in place, release) | one memcpy of the frame |")
    print("|---|---:|---:|---:|---:|---:|")
    for way, series in rows.items():
        label = {"copy": "its own array, copied into the slot",
                 "in place": "written into the reserved slot (no copy)"}[way]
        print(f"| {label} | **{p50(series[0])}** | {' | '.join(p50(v) for v in series[1:])} |")


def section_sources(model: Path, clip: Path, frames: int, tmp: Path) -> None:
    print("\n### Lossless flow, near-free model: 1, 2 and 4 sources, same total frames (--rate max, "
          "masks published)\n")
    print("| sources | frames each | throughput fps | latency p50 ms | latency p95 ms | p50 vs 1 source |")
    print("|---:|---:|---:|---:|---:|---:|")
    first = None
    for n in (1, 2, 4):
        config = PipelineConfig(sources=(str(clip),) * n, model=str(model), max_frames=frames // n, rate="max",
                                policy=FlowPolicy.LOSSLESS, publish=f"ipc://{tmp}/pub-src{n}", quiet=True)
        stats = pipeline(config, model)
        lat = stats["latency_ms"]["capture_to_publish"]
        first = first or lat["median"]
        print(f"| {n} | {frames // n} | {stats['throughput_fps']:.1f} | {lat['median']:.1f} | {lat['p95']:.1f} | "
              f"{lat['median'] / first:.2f} |")


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, MB."""
    from segstream.pipeline.process_table import children_of

    total = 0
    for p in [pid, *children_of(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def first_mask(model: Path, tmp: Path, tag: str) -> tuple[float, float]:
    """Seconds from ``segstream run`` to its first mask at a subscriber, and the run's
    peak RSS (MB) over its whole tree."""
    endpoint = f"ipc://{tmp}/pub-start-{tag}"
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "segstream", "run", "--source", "test-pattern:960x540@30",
                             "--model", str(model), "--publish", endpoint, "--quiet", "--max-frames", "150"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    to_first = float("nan")
    peak = 0.0
    try:
        while proc.poll() is None:
            if sub.poll(100) and np.isnan(to_first):
                sub.recv_multipart()
                to_first = time.monotonic() - start
            elif not np.isnan(to_first):
                while sub.poll(0):
                    sub.recv_multipart()
            peak = max(peak, _tree_rss_mb(proc.pid))
    finally:
        proc.wait(60)
        sub.close(0)
        context.term()
    return to_first, peak


def section_startup(model: Path, tmp: Path) -> None:
    cold = _drop_caches()
    cold_s, cold_rss = first_mask(model, tmp, "cold")
    warm = [first_mask(model, tmp, f"warm{k}") for k in range(2)]
    warm_s = min(w[0] for w in warm)
    rss = max([cold_rss, *(w[1] for w in warm)])
    print("\n### Start-up to the first mask and memory (`segstream run`, test-pattern 960x540, near-free model)\n")
    print("| cold start s | warm start s (best of 2) | peak RSS of the run, all processes, MB |")
    print("|---:|---:|---:|")
    cold_cell = f"{cold_s:.2f}" if cold else f"{cold_s:.2f} (page cache not dropped: no permission)"
    print(f"| {cold_cell} | **{warm_s:.2f}** | **{rss:.0f}** |")


def jpeg_folder(clip: Path, size: tuple[int, int], frames: int, folder: Path) -> Path:
    """The clip's first ``frames`` frames at ``size`` as JPEG files (quality 90)."""
    out = folder / f"jpeg-{size[0]}x{size[1]}"
    out.mkdir()
    cap = cv2.VideoCapture(str(clip))
    for k in range(frames):
        ok, frame = cap.read()
        if not ok:
            break
        cv2.imwrite(str(out / f"{k:06d}.jpg"), cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
    cap.release()
    return out


def section_jpeg(model: Path, clip: Path, frames: int, tmp: Path) -> None:
    print("\n### JPEG folder, near-free model, lossless --rate max, masks:DIR: whole vs --reduced-decode\n")
    print("| input | decode | pipeline fps | capture CPU ms/frame | preprocess CPU ms/frame | frames decoded reduced |")
    print("|---|---|---:|---:|---:|---:|")
    for size in SIZES[1:]:
        folder = jpeg_folder(clip, size, frames, tmp)
        for reduced in (False, True):
            config = PipelineConfig(sources=(str(folder),), model=str(model), rate="max", policy=FlowPolicy.LOSSLESS,
                                    quiet=True, publish="", reduced_decode=reduced,
                                    sinks=(f"masks:{tmp}/jpeg-masks-{size[0]}-{reduced}",))
            stats = pipeline(config, model)
            costs = stage_costs(stats)
            count = stats["stages"]["capture-0"]["extra"].get("decoded_reduced", 0)
            print(f"| {size[0]}x{size[1]} | {'reduced' if reduced else 'whole'} | {stats['throughput_fps']:.1f} | "
                  f"{costs['capture']:.1f} | {costs['preprocess']:.1f} | {count} |")


def stream_delays(decode_threads: int, frames: int = 100, fps: int = 25) -> list[float]:
    """ms from sending each frame of a paced live stream to the source handing it out."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from flv_stream import FlvStream, level

    from segstream.pipeline.sources.streams import LiveOptions, open_stream

    stream = FlvStream(1280, 720, fps)
    sent: dict[int, float] = {}
    done = threading.Event()

    def pace() -> None:
        start = time.monotonic()
        while not done.is_set() and stream.sent < frames + 20:
            k = stream.send()
            sent[k] = time.monotonic()
            done.wait(max(0.0, start + (k + 1) / fps - time.monotonic()))

    threading.Thread(target=pace, daemon=True).start()
    source = open_stream(stream.url, "bench", LiveOptions(decode_threads=decode_threads))
    delays: list[float] = []
    try:
        for frame in source.frames():
            now = time.monotonic()
            if frame is None:
                if done.is_set() or stream.sent >= frames + 20:
                    break
                continue
            # the newest frame sent so far with this grey level (levels repeat every 11 frames)
            value = float(frame.image.mean())
            candidates = [k for k, at in sent.items() if at <= now and abs(level(k) - value) < 6]
            if candidates and stream.sent > 20:  # after FFmpeg's probing
                delays.append((now - sent[max(candidates)]) * 1000)
            if len(delays) >= frames:
                break
    finally:
        done.set()
        source.close()
        stream.close()
    return delays


def section_stream_delay() -> None:
    print("\n### Live stream (HTTP-FLV, H.264 1280x720 at 25 fps): frame sent -> handed out by the source, ms\n")
    print("| decoding threads | p50 | p95 | frames |")
    print("|---|---:|---:|---:|")
    for threads, label in ((1, "1 (`--decode-threads 1`, the default)"), (0, f"FFmpeg's default ({os.cpu_count()})")):
        delays = stream_delays(threads)
        print(f"| {label} | {np.median(delays):.1f} | {np.percentile(delays, 95):.1f} | {len(delays)} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=221, help="frames of the clip per run (max 221)")
    parser.add_argument("--sections", default="1,3,4,5,6,7,8", help="which sections to run (1 includes 2)")
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1, help="section 1: rounds per size (median ratio)")
    args = parser.parse_args()
    sections = {int(s) for s in args.sections.split(",") if s}
    clip = resolve_asset("solidWhiteRight.mp4")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    import onnxruntime

    print(f"machine: {os.cpu_count()} cores, {cpu}; Python {platform.python_version()}, "
          f"onnxruntime {onnxruntime.__version__}, OpenCV {cv2.__version__}")
    print(f"command: python tools/bench_overhead.py --frames {args.frames} --sections {args.sections}"
          + (f" --repeat {args.repeat}" if args.repeat > 1 else ""))
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        model = near_free_model(tmp)
        if 1 in sections:
            section_near_free(model, clip, args.frames, tmp, max(1, args.repeat))
        if 3 in sections:
            section_live(model, tmp, args.live_seconds)
        if 4 in sections:
            section_hop(200)
        if 5 in sections:
            section_sources(model, clip, args.frames, tmp)
        if 6 in sections:
            section_startup(model, tmp)
        if 7 in sections:
            section_jpeg(model, clip, args.frames, tmp)
        if 8 in sections:
            section_stream_delay()
    return 0


if __name__ == "__main__":
    sys.exit(main())
