"""The live status line: throughput, latency p50/p95, frames skipped, mIoU when scoring,
and for finite replays a progress bar with ETA. Redrawn in place on a terminal; periodic
log lines when the output is not one (a pipe, a CI log); off with ``--quiet``."""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from typing import Any, Callable, TextIO

logger = logging.getLogger(__name__)

REDRAW_S = 0.5
LOG_EVERY_S = 10.0
FPS_WINDOW_S = 5.0
BAR = 20


def expected_frames(stats: dict[str, Any], max_frames: int, loop: bool) -> int:
    """Frames a finite replay will read (0: unknown, e.g. a live or looping source)."""
    if loop:
        return 0
    total = 0
    for name, st in stats["stages"].items():
        if not name.startswith("capture"):
            continue
        count = int(st.get("frame_count", 0) or 0)
        if count <= 0:
            return 0
        total += min(count, max_frames) if max_frames else count
    return total


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class StatusLine:
    """Draws the status of a running pipeline.

    Args:
        stream: where to draw (default stderr).
        max_frames: the run's per-source frame limit (0: none), for the progress bar.
        loop: the run loops its videos (no progress bar).
    """

    def __init__(self, stream: TextIO | None = None, max_frames: int = 0, loop: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.max_frames, self.loop = max_frames, loop
        self._published: deque[tuple[float, int]] = deque()
        self._last_draw = 0.0
        self._last_log = time.monotonic()
        self._drawn = False

    def text(self, stats: dict[str, Any], now: float) -> str:
        """The line for these stats (``Supervisor.snapshot()``)."""
        published = stats["frames_published"]
        self._published.append((now, published))
        while self._published and now - self._published[0][0] > FPS_WINDOW_S:
            self._published.popleft()
        t0, n0 = self._published[0]
        fps = (published - n0) / (now - t0) if now > t0 else 0.0
        lat = stats["latency_ms"].get("recent") or {}
        parts = []
        total = expected_frames(stats, self.max_frames, self.loop)
        done = published + stats["frames_skipped"]["total"]
        if total:
            filled = min(BAR, BAR * done // max(total, 1))
            eta = f" ETA {_duration((total - done) / fps)}" if fps > 0 and done < total else ""
            parts.append(f"[{'#' * filled}{'.' * (BAR - filled)}] {done}/{total}{eta}")
        else:
            parts.append(f"{published} published")
        parts.append(f"{fps:.1f} fps")
        parts.append(f"latency p50 {lat.get('median', 0):.0f} ms p95 {lat.get('p95', 0):.0f} ms")
        parts.append(f"skipped {stats['frames_skipped']['total']}")
        restarts = stats.get("restarts") or {}
        if restarts:
            parts.append("restarted " + ", ".join(f"{name} x{n}" for name, n in restarts.items()))
        evaluation = stats.get("eval")
        if evaluation and evaluation.get("miou") is not None:
            parts.append(f"mIoU {evaluation['miou']:.3f}")
        elif evaluation and evaluation.get("instances", {}).get("all"):
            parts.append(f"mask AP50 {evaluation['instances']['all']['segm']['ap50']:.3f}")
        return " | ".join(parts)

    def update(self, stats: Callable[[], dict[str, Any]], final: bool = False) -> None:
        """Redraw (terminal) or log (otherwise) when it is time, or now if ``final``.

        Args:
            stats: gives the current stats (called only when a line is drawn).
            final: draw now (the figures at the end).
        """
        now = time.monotonic()
        if now - self._last_draw < REDRAW_S and not final:
            return
        self._last_draw = now
        line = self.text(stats(), now)
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
            self._drawn = True
        elif now - self._last_log >= LOG_EVERY_S and not final:
            self._last_log = now
            self.stream.write(f"{time.strftime('%H:%M:%S')} {line}\n")
            self.stream.flush()

    def close(self) -> None:
        """End the line so that what follows starts on its own."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
