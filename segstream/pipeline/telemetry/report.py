"""``segstream report RUN_DIR``: plots of a recorded run as PNG.

- ``latency_by_stage.png``: per stage, histograms of the time in the stage and the time
  queued before it (``telemetry.timing``'s vocabulary, the end table's numbers), and of the
  end-to-end latency; ``latency_by_stage.json`` holds the medians and p95s it shows;
- ``latency_timeline.png``: per-frame latency split by stage, with skipped frames marked;
- ``throughput.png``: frames published per second over the run;
- for runs with ``--eval``: ``class_iou.png`` (per-class IoU) and ``confusion_matrix.png``
  (rows normalised: each ground-truth class's pixels by predicted class).

Reads ``stats.json`` and the ``frames.jsonl`` files (``pipeline.timing``) of the run.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from segstream.errors import ReportError
from segstream.pipeline.sinks.records import FRAMES_NAME
from segstream.pipeline.telemetry.stats import summarize
from segstream.pipeline.telemetry.timing import pipeline_order, stage_kind, stage_latency

logger = logging.getLogger(__name__)

COLORS = {"capture": "#4C72B0", "preprocess": "#55A868", "infer": "#C44E52", "publish": "#8172B2",
          "render": "#CCB974", "queue": "#B0B0B0"}
DPI = 110


def load_frames(run_dir: Path) -> list[dict[str, Any]]:
    """Every frame record of the run (one source or per-source folders)."""
    frames = []
    for path in sorted([run_dir / FRAMES_NAME, *run_dir.glob(f"*/{FRAMES_NAME}")]):
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    frames.append(json.loads(line))
    return frames


def _stages(frames: list[dict[str, Any]]) -> list[str]:
    """The stage names the frames passed, in pipeline order."""
    return sorted({k for f in frames for k in f["stages"]}, key=pipeline_order)


def _colour(stage: str) -> str:
    return COLORS.get(stage_kind(stage), "#333333")


def latency_table(frames: list[dict[str, Any]], stats: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per stage, the p50 and p95 of its time in stage and queued before it: from the
    frames' records, and for stages past publish (render) from stats.json. The end table
    and stats.json show the same numbers."""
    def row(in_stage: dict[str, Any], queued: dict[str, Any]) -> dict[str, float]:
        return {"in_stage_p50": in_stage["median"], "in_stage_p95": in_stage["p95"],
                "queued_p50": queued["median"], "queued_p95": queued["p95"]}

    table = {}
    for stage in _stages(frames):
        mine = [f["stages"][stage] for f in frames if stage in f["stages"]]
        table[stage] = row(summarize(p["stage_ms"] for p in mine), summarize(p["queue_ms"] for p in mine))
    for stage, parts in stage_latency(stats).items():
        if stage not in table and parts.get("stage", {}).get("count"):
            table[stage] = row(parts["stage"], parts["queue"])
    return dict(sorted(table.items(), key=lambda kv: pipeline_order(kv[0])))


def _bucket_bars(ax: Any, histogram: dict[str, Any], colour: str, label: str) -> None:
    """A histogram kept as cumulative buckets (stats.json), drawn as bars per bucket."""
    bounds = [b for b, _ in histogram["buckets"]]
    cumulative = [n for _, n in histogram["buckets"]]
    counts = np.diff([0, *cumulative])
    names = [f"<={b:g}" if b != "+Inf" else ">" + f"{bounds[-2]:g}" for b in bounds]
    keep = [k for k, n in enumerate(counts) if n]
    ax.bar([names[k] for k in keep], [counts[k] for k in keep], color=colour, alpha=0.8, label=label)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.titleweight": "bold", "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    import matplotlib.pyplot as plt

    plt.close(fig)
    logger.info("wrote %s", path)
    return path


def plot_latency_histograms(frames: list[dict[str, Any]], stats: dict[str, Any], out: Path) -> Path:
    """``latency_by_stage.png``: per stage, time in it and queued before it; end to end."""
    plt = _pyplot()
    table = latency_table(frames, stats)
    (out / "latency_by_stage.json").write_text(json.dumps(table, indent=2))
    stages = list(table)
    cols = 3
    rows = -(-(len(stages) + 1) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(11, 3.3 * rows), squeeze=False)
    axes = list(grid.ravel())
    for ax in axes[len(stages) + 1:]:
        ax.set_visible(False)
    axes = axes[:len(stages) + 1]
    for ax, stage in zip(axes, stages):
        row = table[stage]
        title = (f"{stage}: in stage p50 {row['in_stage_p50']:.1f} ms, queued p50 {row['queued_p50']:.1f} ms")
        if not any(stage in f["stages"] for f in frames):  # past publish: from stats.json's buckets
            parts = stage_latency(stats)[stage]
            _bucket_bars(ax, parts["queue"]["histogram"], COLORS["queue"], "queued before")
            _bucket_bars(ax, parts["stage"]["histogram"], _colour(stage), "in stage")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("ms (buckets)")
            continue
        work = np.array([f["stages"][stage]["stage_ms"] for f in frames if stage in f["stages"]])
        queue = np.array([f["stages"][stage]["queue_ms"] for f in frames if stage in f["stages"]])
        top = max(float(np.percentile(np.concatenate([work, queue]), 99)), 1e-3)
        bins = np.linspace(0, top * 1.05, 30)
        ax.hist(np.clip(queue, 0, bins[-1]), bins=bins, color=COLORS["queue"], alpha=0.8, label="queued before")
        ax.hist(np.clip(work, 0, bins[-1]), bins=bins, color=_colour(stage), alpha=0.8, label="in stage")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("ms")
    for ax in axes[::cols]:
        ax.set_ylabel("frames")
    axes[0].legend(frameon=False)
    e2e = np.array([f["e2e_ms"] for f in frames])
    axes[-1].hist(e2e, bins=30, color="#222222", alpha=0.85)
    axes[-1].axvline(np.median(e2e), color="#C44E52", lw=1.5, label=f"p50 {np.median(e2e):.0f} ms")
    axes[-1].axvline(np.percentile(e2e, 95), color="#C44E52", lw=1.5, ls="--",
                     label=f"p95 {np.percentile(e2e, 95):.0f} ms")
    axes[-1].set_title("end to end: capture to publish", fontsize=9)
    axes[-1].set_xlabel("ms")
    axes[-1].legend(frameon=False)
    fig.suptitle("Latency per stage", fontweight="bold")
    return _save(fig, out / "latency_by_stage.png")


def plot_latency_timeline(frames: list[dict[str, Any]], stats: dict[str, Any], out: Path) -> Path:
    """``latency_timeline.png``: per source, each frame's latency stacked by stage, skipped
    frames (indices never published) marked in red."""
    plt = _pyplot()
    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in frames:
        by_source[f["source"]].append(f)
    stages = _stages(frames)
    fig, axes = plt.subplots(len(by_source), 1, figsize=(10, 3.4 * len(by_source)), squeeze=False)
    for ax, (source, rows) in zip(axes[:, 0], sorted(by_source.items())):
        rows.sort(key=lambda f: f["index"])
        index = np.array([f["index"] for f in rows])
        bottom = np.zeros(len(rows))
        queued = np.array([sum(f["stages"][s]["queue_ms"] for s in f["stages"]) for f in rows])
        ax.fill_between(index, bottom, queued, step="mid", color=COLORS["queue"], alpha=0.8, label="queued")
        bottom = queued
        for stage in stages:
            part = np.array([f["stages"].get(stage, {}).get("stage_ms", 0.0) for f in rows])
            ax.fill_between(index, bottom, bottom + part, step="mid", color=_colour(stage), alpha=0.85,
                            label=stage)
            bottom = bottom + part
        ax.plot(index, [f["e2e_ms"] for f in rows], color="#222222", lw=0.8, label="end to end")
        frames_in = int(stats.get("per_source", {}).get(source, {}).get("frames_in", 0)) or int(index.max()) + 1
        missing = sorted(set(range(frames_in)) - set(index.tolist()))
        if missing:
            ax.plot(missing, np.zeros(len(missing)), "|", color="#D62728", ms=14, mew=1.5,
                    label=f"skipped ({len(missing)})")
        ax.set_title(f"source {source}: latency per frame")
        ax.set_xlabel("frame index")
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
        ax.set_xlim(-0.5, frames_in - 0.5)
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return _save(fig, out / "latency_timeline.png")


def plot_throughput(frames: list[dict[str, Any]], out: Path) -> Path:
    """``throughput.png``: frames published in each second of the run."""
    plt = _pyplot()
    done = np.array([f["capture_ns"] + f["e2e_ms"] * 1e6 for f in frames]) / 1e9
    t = done - done.min()
    bins = np.arange(0, max(float(t.max()), 1.0) + 1.0, 1.0)
    counts, edges = np.histogram(t, bins=bins)
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.step(edges[:-1], counts, where="post", color="#4C72B0", lw=1.5)
    ax.fill_between(edges[:-1], counts, step="post", color="#4C72B0", alpha=0.2)
    mean = len(frames) / max(float(t.max()), 1e-9) if len(frames) > 1 else 0.0
    ax.axhline(mean, color="#C44E52", ls="--", lw=1, label=f"mean {mean:.1f} fps")
    ax.set_title("Throughput: frames published per second")
    ax.set_xlabel("seconds since the first frame was published")
    ax.set_ylabel("frames / s")
    ax.legend(frameon=False)
    return _save(fig, out / "throughput.png")


def plot_class_iou(evaluation: dict[str, Any], out: Path) -> Path:
    """``class_iou.png``: IoU per class, worst first, with the mIoU."""
    plt = _pyplot()
    items = [(name, c["iou"]) for name, c in evaluation["classes"].items() if c["iou"] is not None]
    items.sort(key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(items) + 1.4))
    names = [k for k, _ in items]
    values = [v for _, v in items]
    bars = ax.barh(names, values, color=[plt.cm.RdYlGn(v) for v in values], edgecolor="#444", lw=0.4)
    for bar, v in zip(bars, values):
        ax.text(min(v + 0.01, 0.93), bar.get_y() + bar.get_height() / 2, f"{v:.3f}", va="center", fontsize=8)
    ax.axvline(evaluation["miou"], color="#222", ls="--", lw=1, label=f"mIoU {evaluation['miou']:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU")
    ax.set_title(f"IoU per class ({evaluation['frames']} frames)")
    ax.legend(frameon=False, loc="lower right")
    return _save(fig, out / "class_iou.png")


def plot_confusion(evaluation: dict[str, Any], out: Path) -> Path:
    """``confusion_matrix.png``: each ground-truth class's pixels by predicted class."""
    plt = _pyplot()
    names = evaluation["class_names"]
    matrix = np.asarray(evaluation["confusion"]["matrix"], np.float64)
    present = [i for i in range(len(names)) if matrix[i].sum() > 0 or matrix[:, i].sum() > 0]
    rows = matrix[present]
    normalised = rows / np.maximum(rows.sum(1, keepdims=True), 1)
    columns = present + [len(names)]  # and "none"
    shown = normalised[:, columns]
    labels = [names[i] for i in present]
    fig, ax = plt.subplots(figsize=(0.5 * len(columns) + 2.5, 0.45 * len(present) + 2))
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    ax.set_xticks(range(len(columns)), labels + ["none"], rotation=60, ha="right")
    ax.set_yticks(range(len(present)), labels)
    for y in range(shown.shape[0]):
        for x in range(shown.shape[1]):
            if shown[y, x] >= 0.01:
                ax.text(x, y, f"{shown[y, x]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if shown[y, x] > 0.6 else "#222")
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("Confusion matrix (each row sums to 1)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    return _save(fig, out / "confusion_matrix.png")


def write_report(run_dir: Path, out: Path | None = None) -> list[Path]:
    """Render every plot the run's records allow; returns the PNG paths.

    Raises:
        ReportError: no stats.json or no frame records.
    """
    stats_path = run_dir / "stats.json"
    if not stats_path.is_file():
        raise ReportError(f"{run_dir} has no stats.json; expected a folder written by segstream run --record")
    stats = json.loads(stats_path.read_text())
    frames = load_frames(run_dir)
    if not frames:
        raise ReportError(f"{run_dir} has no {FRAMES_NAME} records (runs before segstream 0.1 did not write them); "
                          f"record the run again")
    out = out or run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_latency_histograms(frames, stats, out), plot_latency_timeline(frames, stats, out), plot_throughput(frames, out)]
    evaluation = stats.get("eval")
    if evaluation and evaluation.get("miou") is not None:
        paths += [plot_class_iou(evaluation, out), plot_confusion(evaluation, out)]
    return paths
