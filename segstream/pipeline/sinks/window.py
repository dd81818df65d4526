"""``window:``: the overlay in an OpenCV window (needs a screen and an OpenCV build with a
GUI; ``segstream run --display`` checks both before the run starts)."""

from __future__ import annotations

import cv2

from segstream.pipeline.sinks import BaseSink, SinkContext, SinkResult


class Window(BaseSink):
    """One window per source."""

    def __init__(self, _target: str, context: SinkContext) -> None:
        self.shown = 0

    def write(self, result: SinkResult) -> None:
        if result.image is None:
            return
        cv2.imshow(f"segstream {result.header.source}", result.image)
        cv2.waitKey(1)
        self.shown += 1

    def close(self) -> None:
        cv2.destroyAllWindows()

    def figures(self) -> dict[str, int]:
        return {"shown": self.shown}
