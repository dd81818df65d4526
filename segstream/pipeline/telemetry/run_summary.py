"""What a run leaves for people: ``stats.json`` written atomically, and the short summary
table printed at the end (counts, throughput, latency, per-stage work and queueing, and the
scores of an ``--eval`` run)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from segstream.evaluation.summary import format_scores
from segstream.pipeline.telemetry.timing import stage_kind

logger = logging.getLogger(__name__)


def write_stats(stats: dict[str, Any], record: str | os.PathLike[str]) -> Path:
    """Write ``stats.json`` into ``record`` atomically."""
    path = Path(record) / "stats.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".stats.json.tmp")
    tmp.write_text(json.dumps(stats, indent=2))
    os.replace(tmp, path)
    return path


def format_summary(stats: dict[str, Any]) -> str:
    """A short human summary of a run's stats."""
    lat = stats["latency_ms"]["capture_to_publish"] or {}
    lines = [
        f"run {stats['run_id']}: {stats['policy']} flow, model {stats['model']}, {stats['duration_s']:.1f} s",
        f"  frames in {stats['frames_in']}, published {stats['frames_published']}, "
        f"skipped {stats['frames_skipped']['total']}"
        + (f" {stats['frames_skipped']['by_stage']}" if stats["frames_skipped"]["total"] else "")
        + (f", unaccounted {stats['frames_unaccounted']}" if stats["frames_unaccounted"] else ""),
        f"  throughput {stats['throughput_fps']:.2f} fps, latency capture->publish "
        f"p50 {lat.get('median', 0):.0f} ms p95 {lat.get('p95', 0):.0f} ms",
        "  stage          in    out  skipped   work p50 ms  p95 ms   queue p50 ms  p95 ms",
    ]
    breakdown = {**stats["latency_ms"].get("breakdown_to_render", {}), **stats["latency_ms"].get("breakdown", {})}
    for name, st in stats["stages"].items():
        pm = st.get("process_ms", {})
        queue = breakdown.get(stage_kind(name), {}).get("queue")
        queued = f" {queue['median']:>14.1f} {queue['p95']:>7.1f}" if queue else f" {'-':>14} {'-':>7}"
        lines.append(f"  {name:<12} {st.get('frames_in', 0):>5} {st.get('frames_out', 0):>6} "
                     f"{sum(st.get('skipped', {}).values()):>8} {pm.get('median', 0):>12.1f} {pm.get('p95', 0):>7.1f}"
                     + queued)
    if "eval" in stats:
        lines.append(format_scores(stats["eval"]))
    return "\n".join(lines)
