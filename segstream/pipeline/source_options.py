"""The options of one source added to a running pipeline (``POST /api/sources``).

Each option a request leaves out takes the run's setting; every value is checked the way
the run's own configuration is, and a wrong one is refused with what was expected.

    >>> from segstream.pipeline.config import PipelineConfig
    >>> options = parse_source_options({"max_frames": 10, "rate": "max"})
    >>> capture_fields(options, PipelineConfig())["max_frames"]
    10
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from segstream.errors import ConfigError
from segstream.pipeline.config import PipelineConfig
from segstream.pipeline.sources.streams import LiveOptions
from segstream.pipeline.typed_json import dump, load_dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceOptions:
    """Options of one source; None: the run's own setting.

    Attributes:
        max_frames: stop the source after this many frames (0: all).
        rate: replay pacing, ``native``, ``max`` or frames per second.
        loop: start a video file over at its end.
        live: how a stream or camera connects (``LiveOptions`` fields; the ones left out
            keep the run's).
    """

    max_frames: int | None = None
    rate: str | None = None
    loop: bool | None = None
    live: dict[str, Any] | None = None


def parse_source_options(data: Any) -> SourceOptions:
    """Options from a request's JSON, checked.

    Raises:
        ConfigError: not an object of the known options, or a value of the wrong type or
            range; says which and what is expected.
    """
    if data is None:
        return SourceOptions()
    rate = data.get("rate") if isinstance(data, dict) else None
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        data = {**data, "rate": str(rate)}  # frames per second as a number, like YAML's ``rate: 10``
    options = load_dataclass(SourceOptions, data, "options", ConfigError)
    if options.max_frames is not None and options.max_frames < 0:
        raise ConfigError(f"options.max_frames must be >= 0 (0: all frames), found {options.max_frames}")
    if options.rate is not None:
        PipelineConfig(rate=options.rate)  # the run's own check of a rate
    if options.live is not None:
        load_dataclass(LiveOptions, options.live, "options.live", ConfigError)
    return options


def capture_fields(options: SourceOptions, config: PipelineConfig) -> dict[str, Any]:
    """``CaptureSettings`` fields of a source with ``options`` in a run of ``config``
    (``rate`` still None for the run's default pacing)."""
    live = config.live
    if options.live:
        live = load_dataclass(LiveOptions, {**dump(config.live), **options.live}, "options.live", ConfigError)
    return {
        "max_frames": config.max_frames if options.max_frames is None else options.max_frames,
        "rate": config.rate if options.rate is None else options.rate,
        "loop": config.loop if options.loop is None else options.loop,
        "live": live,
    }
