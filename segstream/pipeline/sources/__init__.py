"""Frame sources and the scheme table that opens them.

``open_source(uri)`` looks the URI up in ``SCHEMES``, one row per kind of source, in the
order they are tried:

=================  ====================================================  ==========
scheme             URI                                                   module
=================  ====================================================  ==========
stream             ``rtsp://``, ``rtsps://``, ``rtmp://``, ``http(s)://``  streams.py
camera             ``camera:N``, ``/dev/videoN``                          streams.py
cityscapes, ...    ``cityscapes:ROOT[:SPLIT[:CITY]]`` and the KITTI ones  datasets
test-pattern       ``test-pattern[:WxH[@FPS]]``                           files.py
glob               ``'frames/*.png'``                                     files.py
file               a video file, an image file or a folder of images      files.py
=================  ====================================================  ==========

A source from another package is one module and one entry point in the group
``segstream.sources`` (name = the URI scheme, value = ``module:factory``); see
``docs/architecture.md``. Every source yields ``SourceFrame`` objects holding BGR uint8
images (``base.py``).
"""

from __future__ import annotations

import glob
import logging
import re
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Callable

from segstream.datasets.images import IMAGE_SUFFIXES, image_files
from segstream.datasets.layouts import DATASETS, open_dataset
from segstream.errors import SourceError
from segstream.pipeline.sources.base import FrameSource, SourceFrame, to_bgr
from segstream.pipeline.sources.files import ImageListSource, TestPatternSource, VideoFileSource
from segstream.pipeline.sources.streams import LiveOptions, is_camera_uri, is_stream_uri, open_stream
from segstream.pipeline.wire.names import sanitize_name
from segstream.pipeline.wire.checks import MAX_FRAME_PIXELS

logger = logging.getLogger(__name__)

__all__ = ["FrameSource", "SourceError", "SourceFrame", "SourceRequest", "SCHEMES", "default_source_id",
           "is_live_uri", "open_source", "to_bgr"]

ENTRY_POINT_GROUP = "segstream.sources"


@dataclass(frozen=True)
class SourceRequest:
    """What a source factory gets: the URI and how to open it.

    Attributes:
        uri: the URI as the user wrote it.
        source_id: the id the source's frames carry.
        loop: start a video file over at its end.
        live: how streams and cameras connect.
    """

    uri: str
    source_id: str
    loop: bool = False
    live: LiveOptions = field(default_factory=LiveOptions)

    @property
    def rest(self) -> str:
        """The URI after its ``scheme:``."""
        return self.uri.partition(":")[2]


@dataclass(frozen=True)
class Scheme:
    """One row of the source table.

    Attributes:
        name: the scheme, as in ``name:...``.
        usage: the URI form, for messages.
        matches: whether a URI is this kind of source.
        open: opens it.
        live: frames arrive on their own clock (streams, cameras): the run's default
            flow is live without opening the source first.
    """

    name: str
    usage: str
    matches: Callable[[str], bool]
    open: Callable[[SourceRequest], FrameSource]
    live: bool = False


MAX_PATTERN_FPS = 1000
_PATTERN = re.compile(r"^test-pattern(?::(\d+)x(\d+))?(?:@(\d+(?:\.\d+)?))?$")


def _open_pattern(request: SourceRequest) -> FrameSource:
    match = _PATTERN.match(request.uri)
    if not match:
        raise SourceError(f"bad test pattern {request.uri!r}; expected test-pattern[:WIDTHxHEIGHT[@FPS]], "
                          f"e.g. test-pattern:1280x720@30")
    w, h, fps = match.groups()
    width, height, rate = int(w or 960), int(h or 540), float(fps or 25.0)
    if width < 1 or height < 1 or width * height > MAX_FRAME_PIXELS:
        raise SourceError(f"test pattern {request.uri!r} is {width}x{height}, {width * height / 1e6:.0f} M pixels; a "
                          f"frame has 1 to {MAX_FRAME_PIXELS / 1e6:.0f} M pixels (8K is 33 M): ask for a smaller one")
    if not 0 < rate <= MAX_PATTERN_FPS:
        raise SourceError(f"test pattern {request.uri!r} asks for {rate:g} frames a second; expected more than 0 "
                          f"and at most {MAX_PATTERN_FPS}")
    return TestPatternSource(request.source_id, width, height, rate)


def _open_dataset(request: SourceRequest) -> FrameSource:
    listing = open_dataset(request.uri)
    return ImageListSource(list(listing.entries), request.source_id, listing.description, listing.fps,
                           listing.gt_kind)


def _open_glob(request: SourceRequest) -> FrameSource:
    return ImageListSource(image_files(Path(p) for p in glob.glob(request.uri)), request.source_id,
                           f"glob {request.uri!r}")


def _open_path(request: SourceRequest) -> FrameSource:
    path = Path(request.uri).expanduser()
    if path.is_dir():
        return ImageListSource(image_files(path.iterdir()), request.source_id, f"folder {path}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageListSource([path], request.source_id, f"file {path}")
    return VideoFileSource(path, request.source_id, request.loop)


def _is_path(uri: str) -> bool:
    return Path(uri).expanduser().exists()


SCHEMES: tuple[Scheme, ...] = (
    Scheme("stream", "rtsp://HOST[:PORT]/PATH (also rtsps, rtmp, http, https)", is_stream_uri,
           lambda r: open_stream(r.uri, r.source_id, r.live), live=True),
    Scheme("camera", "camera:N or /dev/videoN", is_camera_uri, lambda r: open_stream(r.uri, r.source_id, r.live),
           live=True),
    *(Scheme(name, usage, lambda uri, name=name: uri.partition(":")[0] == name and ":" in uri,
             _open_dataset) for name, (_, usage) in DATASETS.items()),
    Scheme("test-pattern", "test-pattern[:WIDTHxHEIGHT[@FPS]]", lambda uri: uri.startswith("test-pattern"),
           _open_pattern),
    Scheme("glob", "'frames/*.png'", lambda uri: any(ch in uri for ch in "*?["), _open_glob),
    Scheme("file", "a video file, an image file or a folder of images", _is_path, _open_path),
)


def _plugin(uri: str) -> Scheme | None:
    """A scheme another package declares (entry point group ``segstream.sources``)."""
    name = uri.partition(":")[0]
    if not name or name == uri:
        return None
    for entry in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == name:
            factory = entry.load()
            return Scheme(name, f"{name}:... (from {entry.value})", lambda _uri: True, factory,
                          live=bool(getattr(factory, "live", False)))
    return None


def scheme_for(uri: str) -> Scheme:
    """The table row that opens ``uri``.

    Raises:
        SourceError: no row matches; says which forms there are.
    """
    for scheme in SCHEMES:
        if scheme.matches(uri):
            return scheme
    plugin = _plugin(uri)
    if plugin is not None:
        return plugin
    forms = "; ".join(s.usage for s in SCHEMES)
    raise SourceError(f"source {uri!r} not found: expected one of: {forms}")


def is_live_uri(uri: str) -> bool:
    """True for URIs of streams and cameras (known without opening them)."""
    try:
        return scheme_for(uri).live
    except SourceError:
        return False


def default_source_id(uri: str) -> str:
    """A readable id from a URI: the file or folder name, or ``test-pattern``; always a safe
    name (``wire.names``), since ids become folder names."""
    return sanitize_name(_readable_id(uri), "source")


def _readable_id(uri: str) -> str:
    if uri.startswith("test-pattern"):
        return "test-pattern"
    if uri.startswith("camera:"):
        return "camera" + uri.split(":", 1)[1]
    if "://" in uri:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", uri.split("://", 1)[1]).strip("_") or "stream"
    scheme, _, rest = uri.partition(":")
    if rest and scheme in DATASETS:
        parts = rest.split(":")
        name = "-".join([Path(parts[0].rstrip("/")).name, *parts[1:]])
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{scheme}-{name}")
    stem = Path(uri.split("*")[0].rstrip("/") or "glob").stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem).strip("_.-") or "source"


def open_source(uri: str, source_id: str | None = None, loop: bool = False,
                live_options: LiveOptions | None = None) -> FrameSource:
    """Open the source named by ``uri`` (see the table in this module's docstring).

    Args:
        uri: what to open.
        source_id: the id (default: from the name).
        loop: start a video file over at its end.
        live_options: how streams and cameras connect.

    Raises:
        SourceError: nothing usable at ``uri``; says what was expected.

    Example:
        >>> source = open_source("test-pattern:64x32@10")
        >>> frame = next(source.frames())
        >>> frame.image.shape
        (32, 64, 3)
        >>> source.close()
    """
    request = SourceRequest(uri, source_id or default_source_id(uri), loop, live_options or LiveOptions())
    return scheme_for(uri).open(request)
