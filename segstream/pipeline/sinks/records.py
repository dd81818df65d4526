"""Where a run's outputs go under ``--record DIR``, and writing them safely.

One source: ``DIR/masks/<frame>.png``, ``DIR/overlay.mp4``, ``DIR/frames.jsonl`` (one JSON
line per published frame: where its time went, ``pipeline.timing``) and, for models that
classify, ``DIR/classifications.jsonl`` (one JSON line per frame). Several sources: the same under
``DIR/<source_id>/``. Files are written to a temporary name and renamed, so a file
that exists is complete even if the run is stopped mid-write.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import cv2
import numpy as np

from segstream.errors import OutputError
from segstream.pipeline.wire.mask_codec import png_params


def inside(root: str | os.PathLike[str], *parts: str) -> Path:
    """``root/part/...``, refused unless it stays inside ``root`` (names from the wire are
    checked where they enter; this is the writer's own guard).

    Raises:
        OutputError: a part is absolute, empty, or climbs out with ``..``.
    """
    base = Path(root).resolve()
    target = base.joinpath(*parts).resolve()
    if any(not part or Path(part).is_absolute() for part in parts) or not target.is_relative_to(base):
        raise OutputError(f"refusing to write {'/'.join(parts)!r} outside {base}: names must stay inside the "
                          f"output folder")
    return target


def source_dir(record: str | os.PathLike[str], source_id: str, per_source: bool) -> Path:
    """The folder holding one source's outputs (inside ``record``)."""
    return inside(record, source_id) if per_source else Path(record)


def frame_file(folder: Path, name: str, suffix: str) -> Path:
    """``folder/<name><suffix>``, inside ``folder``."""
    return inside(folder, f"{name}{suffix}")


CLASSIFICATIONS_NAME = "classifications.jsonl"
FRAMES_NAME = "frames.jsonl"


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line (a whole line per write, so a stopped run leaves whole lines;
    a write that fails, on a full disk, is cut back off)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record) + "\n").encode()
    with open(path, "ab", buffering=0) as f:
        start = f.seek(0, os.SEEK_END)
        try:
            written = f.write(line)
            if written != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        except OSError:
            os.ftruncate(f.fileno(), start)
            raise


def write_png(path: Path, image: np.ndarray, compression: int = 1) -> None:
    """Write ``image`` as PNG atomically (fast compression by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    ok, encoded = cv2.imencode(".png", image, png_params(compression))
    if not ok:
        raise OSError(f"OpenCV could not encode {path.name} as PNG")
    try:
        tmp.write_bytes(encoded.tobytes())  # the system's error (a full disk) as it is, not OpenCV's False
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
