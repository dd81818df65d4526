"""Sinks that write files under a record folder: mask PNGs, the classification log and the
per-frame timing log. Layout: ``records.py``."""

from __future__ import annotations

from typing import Any

from segstream.evaluation.instance_offline import INSTANCES_NAME
from segstream.pipeline.sinks import BaseSink, SinkContext, SinkResult
from segstream.pipeline.sinks.records import (
    CLASSIFICATIONS_NAME,
    FRAMES_NAME,
    append_jsonl,
    frame_file,
    source_dir,
    write_png,
)


class _RecordSink(BaseSink):
    """A sink writing under ``folder`` (per source when the run has several)."""

    def __init__(self, folder: str, context: SinkContext) -> None:
        self.folder = folder
        self.per_source = context.per_source_dirs
        self.written = 0

    def figures(self) -> dict[str, Any]:
        return {"written": self.written, "folder": self.folder}


class MaskFiles(_RecordSink):
    """``masks:DIR``: each mask as ``DIR[/<source>]/masks/<frame>.png`` (label ids), written
    atomically; for instance models also the instance ids as 16-bit
    ``DIR[/<source>]/instances/<frame>.png`` and the detections, one JSON line per frame,
    in ``DIR[/<source>]/instances.jsonl``."""

    def write(self, result: SinkResult) -> None:
        if result.mask is None:
            return
        header = result.header
        folder = source_dir(self.folder, header.source, self.per_source)
        write_png(frame_file(folder / "masks", header.name, ".png"), result.mask)
        if result.instance_ids is not None:
            write_png(frame_file(folder / "instances", header.name, ".png"), result.instance_ids)
            append_jsonl(folder / INSTANCES_NAME, {"frame": header.name, "index": header.index,
                                                   "instances": header.meta.get("instances", [])})
        self.written += 1


class ClassificationLog(_RecordSink):
    """``classifications:DIR``: one JSON line per classified frame in
    ``DIR[/<source>]/classifications.jsonl``."""

    def write(self, result: SinkResult) -> None:
        header = result.header
        if "classification" not in header.meta:
            return
        append_jsonl(source_dir(self.folder, header.source, self.per_source) / CLASSIFICATIONS_NAME,
                     {"frame": header.name, "index": header.index, "classification": header.meta["classification"]})
        self.written += 1


class TimingLog(_RecordSink):
    """``timings:DIR``: where each published frame's time went, one JSON line per frame in
    ``DIR[/<source>]/frames.jsonl`` (``telemetry.timing``)."""

    def write(self, result: SinkResult) -> None:
        if result.timing is None:
            return
        append_jsonl(source_dir(self.folder, result.header.source, self.per_source) / FRAMES_NAME, result.timing)
        self.written += 1
