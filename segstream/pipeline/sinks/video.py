"""``video:DIR``: the overlay as ``DIR[/<source>]/overlay.mp4``, one file per source, closed
at its source's end of stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segstream.errors import OutputError
from segstream.pipeline.sinks import BaseSink, SinkContext, SinkResult
from segstream.pipeline.sinks.records import source_dir

DEFAULT_FPS = 25.0
VIDEO_NAME = "overlay.mp4"


class VideoFile:
    """An mp4 file written frame by frame; frames of another size are resized to the first."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.fps = fps
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, image: np.ndarray) -> None:
        """Append one frame (BGR uint8)."""
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._size = (image.shape[1], image.shape[0])
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
            if not self._writer.isOpened():
                raise OutputError(f"OpenCV cannot write {self.path} with the mp4v codec")
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        """Finish the file."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class VideoFiles(BaseSink):
    """One ``VideoFile`` per source."""

    def __init__(self, folder: str, context: SinkContext) -> None:
        self.folder = folder
        self.per_source = context.per_source_dirs
        self.files: dict[str, VideoFile] = {}
        self.frames = 0

    def write(self, result: SinkResult) -> None:
        if result.image is None:
            return
        source = result.header.source
        video = self.files.get(source)
        if video is None:
            path = source_dir(self.folder, source, self.per_source) / VIDEO_NAME
            video = self.files[source] = VideoFile(path, float(result.header.meta.get("fps") or DEFAULT_FPS))
        video.write(result.image)
        self.frames += 1

    def end_source(self, final: SinkResult) -> None:
        video = self.files.pop(final.header.source, None)
        if video is not None:
            video.close()

    def close(self) -> None:
        for video in self.files.values():
            video.close()
        self.files.clear()

    def figures(self) -> dict[str, Any]:
        return {"frames": self.frames, "folder": self.folder}
