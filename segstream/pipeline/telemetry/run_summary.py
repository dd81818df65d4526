"""What a run leaves for people: ``stats.json`` written atomically, and the short summary
table printed at the end (counts, throughput, latency, per-stage work and queueing, and the
scores of an ``--eval`` run)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from segstream.evaluation.summary import format_scores
from segstream.pipeline.telemetry.timing import stage_latency

logger = logging.getLogger(__name__)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def write_stats(stats: dict[str, Any], record: str | os.PathLike[str]) -> tuple[Path, str]:
    """Write ``stats.json`` into ``record`` atomically; where that fails (a full disk, a
    folder gone read-only) into the temp folder instead, as ``segstream-stats-<run>.json``.
    Returns where it went, and why not into ``record`` ("" if it did)."""
    text = json.dumps(stats, indent=2)
    try:
        path = Path(record) / "stats.json"
        _write_atomically(path, text)
        return path, ""
    except OSError as exc:
        problem = f"{exc.strerror or exc}"
    path = Path(tempfile.gettempdir()) / f"segstream-stats-{stats.get('run_id', 'run')}.json"
    _write_atomically(path, text)
    return path, problem


def format_skips(skipped: dict[str, Any]) -> str:
    """``by_stage`` as words: ``preprocess superseded 20, infer overwritten 1``."""
    return ", ".join(f"{stage} {reason} {count}" for stage, reasons in skipped.items()
                     for reason, count in reasons.items() if count)


def missing_gt_lines(evaluation: dict[str, Any]) -> list[str]:
    """What the summary says of frames evaluation could not score for want of ground truth."""
    missing = int(evaluation.get("frames_without_gt", 0))
    if not missing:
        return []
    scored = evaluation.get("frames", evaluation.get("instances", {}).get("all", {}).get("frames", 0))
    if not scored:
        return [f"  evaluation: none of the {missing} published frames had ground truth, nothing was scored; ground "
                f"truth comes with dataset replays (cityscapes:ROOT, kitti-semantics:ROOT, kitti360:ROOT:SEQ; "
                f"`segstream gt-from-color COLOR.png --cityscapes-root DIR` makes a Cityscapes layout of "
                f"colour-coded ground truth)"]
    return [f"  evaluation: {missing} frame(s) had no ground truth and are not in the scores above "
            f"({scored} scored)"]


def format_summary(stats: dict[str, Any]) -> str:
    """A short human summary of a run's stats, in the vocabulary of ``telemetry.timing``
    (in stage, queued, busy, end to end)."""
    lat = stats["latency_ms"]["capture_to_publish"] or {}
    by_stage = stats["frames_skipped"]["by_stage"]
    before = {stage: reasons for stage, reasons in by_stage.items() if stage != "render"}
    rendered = by_stage.get("render", {})
    skips = f" ({format_skips(before)})" if stats["frames_skipped"]["total"] else ""
    if sum(rendered.values()):
        skips += f"; render left {sum(rendered.values())} published frames undrawn ({format_skips({'render': rendered})})"
    lines = [
        f"run {stats['run_id']}: {stats['policy']} flow, model {stats['model']}, {stats['duration_s']:.1f} s",
        f"  frames in {stats['frames_in']}, published {stats['frames_published']}, "
        f"skipped {stats['frames_skipped']['total']}{skips}"
        + (f", unaccounted {stats['frames_unaccounted']}" if stats["frames_unaccounted"] else ""),
        f"  throughput {stats['throughput_fps']:.2f} fps, end to end capture->publish "
        f"p50 {lat.get('median', 0):.0f} ms p95 {lat.get('p95', 0):.0f} ms",
        "  stage          in    out  skipped   in stage p50 ms  p95 ms   queued p50 ms  p95 ms   busy p50 ms",
    ]
    latency = stage_latency(stats)
    for name, st in stats["stages"].items():
        parts = latency.get(name, {})
        cells = ""
        for key in ("stage", "queue"):
            series = parts.get(key)
            cells += f" {series['median']:>15.1f} {series['p95']:>7.1f}" if series else f" {'-':>15} {'-':>7}"
        busy = st.get("process_ms", {})
        lines.append(f"  {name:<12} {st.get('frames_in', 0):>5} {st.get('frames_out', 0):>6} "
                     f"{sum(st.get('skipped', {}).values()):>8}{cells} {busy.get('median', 0):>13.1f}")
    if "eval" in stats and "instances" in stats["eval"]:
        from segstream.evaluation.instance_offline import format_instance_scores

        overall = stats["eval"]["instances"]["all"]
        lines.append(format_instance_scores({"images": overall["frames"], **overall}))
    elif "eval" in stats and stats["eval"]["frames"]:
        lines.append(format_scores(stats["eval"]))
    if "eval" in stats:
        lines += missing_gt_lines(stats["eval"])
    lines += [f"  warning: {warning}" for warning in stats.get("warnings", ())]
    return "\n".join(lines)
