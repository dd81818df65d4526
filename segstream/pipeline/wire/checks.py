"""The checks ``decode`` makes on every header field: types, ranges, sizes and names.

One place for the data plane's trust boundary (DESIGN.md section 8): JSON without NaN or
Infinity, integers that are integers (not booleans) within their ranges, shapes whose
size is capped before anything is allocated, shared-memory references that can only
name segstream rings, names that can never become paths, and the types of the ``meta``
keys that stages and consumers read. Each failure is a ``MessageError`` whose reason the
receiver counts.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

from segstream.errors import MessageError
from segstream.pipeline.wire.names import is_safe_name

MAX_NS = (1 << 63) - 1
MAX_DIMS = 4
MAX_SIDE = 1 << 16  # 65,536 pixels on a side
MAX_ELEMENTS = 1 << 28  # 268 M elements (a 16-bit 8K frame has 100 M)
MAX_FRAME_PIXELS = MAX_ELEMENTS // 3  # a BGR frame the wire carries: 89 M pixels (8K has 33 M)
MAX_PARTS = 16
MAX_STAMPS = 64
MAX_SLOTS = 1 << 16
MAX_TOP_LABELS = 100
MAX_INSTANCES = 1000
RING_NAME = re.compile(r"^segstream-[0-9a-f]{8}-[A-Za-z0-9_-]{1,64}(\.r\d{1,6})?-\d{1,6}$")


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not a number JSON allows")


def parse_json(raw: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no NaN or Infinity, no integer with thousands of digits."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MessageError("bad_json", f"{what} is not strict UTF-8 JSON ({exc})") from None


def integer(value: Any, what: str, low: int = 0, high: int = MAX_NS, reason: str = "bad_field") -> int:
    """``value`` if it is an int (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MessageError(reason, f"{what} must be an integer in [{low}, {high}], found {value!r:.60}")
    return value


def number(value: Any, what: str, low: float = 0.0, high: float = math.inf) -> float:
    """``value`` if it is a finite int or float in ``[low, high]``."""
    finite = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))  # a huge int is finite
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not finite or not low <= value <= high:
        raise MessageError("bad_field", f"{what} must be a finite number in [{low}, {high}], found {value!r:.60}")
    return float(value)


def text(value: Any, what: str, limit: int = 256) -> str:
    """``value`` if it is a string of at most ``limit`` characters."""
    if not isinstance(value, str) or len(value) > limit:
        raise MessageError("bad_field", f"{what} must be a string of at most {limit} characters, found "
                                        f"{type(value).__name__} {value!r:.60}")
    return value


def safe_name(value: Any, what: str, allow_empty: bool = False) -> str:
    """A source id or frame name that can be part of a path (``names.is_safe_name``)."""
    if allow_empty and value == "":
        return value
    if not is_safe_name(value):
        raise MessageError("bad_name", f"{what} {value!r:.80} is not a safe name (letters, digits, _ . + = @ -; "
                                       f"no separators or '..', at most 128 characters)")
    return value


def shape(value: Any, what: str) -> tuple[int, ...]:
    """An array shape: 0-4 non-negative ints, each side and the element count capped."""
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise MessageError("bad_part", f"{what} shape must be a list of at most {MAX_DIMS} ints, found {value!r:.60}")
    dims = tuple(integer(d, f"{what} shape", 0, MAX_SIDE, "bad_part") for d in value)
    elements = math.prod(dims)
    if elements > MAX_ELEMENTS:
        raise MessageError("too_large", f"{what} shape {dims} has {elements} elements, limit {MAX_ELEMENTS}")
    return dims


def ring_name(value: Any, what: str) -> str:
    """A shared-memory name of the form segstream rings have (never a path)."""
    if not isinstance(value, str) or not RING_NAME.match(value):
        raise MessageError("bad_ref", f"{what} ring {value!r:.80} is not a segstream ring name "
                                      f"(segstream-<run id>-<stage>[.r<restart>]-<n>)")
    return value


def stamps(value: Any) -> list[tuple[str, int, int]]:
    """``[[stage, in_ns, out_ns], ...]`` with stage names and times in range."""
    if not isinstance(value, list) or len(value) > MAX_STAMPS:
        raise MessageError("bad_field", f"stamps must be a list of at most {MAX_STAMPS}, found {value!r:.60}")
    out = []
    for item in value:
        if not isinstance(item, list) or len(item) != 3:
            raise MessageError("bad_field", f"a stamp is [stage, in_ns, out_ns], found {item!r:.60}")
        out.append((safe_name(item[0], "stamp stage"), integer(item[1], "stamp in_ns"),
                    integer(item[2], "stamp out_ns")))
    return out


def _classification(value: Any) -> None:
    if not isinstance(value, list) or len(value) > MAX_TOP_LABELS:
        raise MessageError("bad_meta", f"meta.classification must be a list of at most {MAX_TOP_LABELS} labels")
    for item in value:
        if not isinstance(item, dict):
            raise MessageError("bad_meta", f"meta.classification holds {type(item).__name__}, expected objects")
        text(item.get("label"), "meta.classification label", 128)
        number(item.get("score"), "meta.classification score", 0.0, 1.0)
        if "id" in item:
            integer(item["id"], "meta.classification id", 0, 1 << 20)


def _instances(value: Any) -> None:
    if not isinstance(value, list) or len(value) > MAX_INSTANCES:
        raise MessageError("bad_meta", f"meta.instances must be a list of at most {MAX_INSTANCES} instances")
    for item in value:
        if not isinstance(item, dict):
            raise MessageError("bad_meta", f"meta.instances holds {type(item).__name__}, expected objects")
        integer(item.get("id"), "meta.instances id", 1, 65_535)
        integer(item.get("class_id"), "meta.instances class_id", 0, 1 << 20)
        text(item.get("label"), "meta.instances label", 128)
        number(item.get("score"), "meta.instances score", 0.0, 1.0)
        box = item.get("box")
        if not isinstance(box, list) or len(box) != 4:
            raise MessageError("bad_meta", f"meta.instances box must be [x0, y0, x1, y1], found {box!r:.60}")
        for v in box:
            number(v, "meta.instances box", 0.0, float(MAX_SIDE))


def _by_class_id(value: Any, what: str, items: str, check: Callable[[Any, str], object]) -> None:
    """An object keyed by class ids "0"-"255" (at most 256), each value checked."""
    if not isinstance(value, dict) or len(value) > 256:
        raise MessageError("bad_meta", f"{what} must be an object of at most 256 {items}")
    for key, item in value.items():
        if not (isinstance(key, str) and key.isdigit() and len(key) <= 3 and int(key) <= 255):
            raise MessageError("bad_meta", f"{what} keys are class ids 0-255, found {key!r:.20}")
        check(item, f"{what}[{key}]")


def _classes(value: Any) -> None:
    _by_class_id(value, "meta.classes", "class shares", lambda share, at: number(share, at, 0.0, 1.0))


def _labels(value: Any) -> None:
    _by_class_id(value, "meta.labels", "class names", lambda name, at: text(name, at, 128))


_META: dict[str, Any] = {
    "classification": _classification,
    "classes": _classes,
    "labels": _labels,
    "instances": _instances,
    "fps": lambda v: number(v, "meta.fps", 0.0, 1e6),
    "seq": lambda v: integer(v, "meta.seq"),
    "gt_kind": lambda v: text(v, "meta.gt_kind", 64),
    "model": lambda v: text(v, "meta.model", 256),
    "ignore_index": lambda v: integer(v, "meta.ignore_index", 0, 255),
    "published": lambda v: integer(v, "meta.published"),
    "frames_in": lambda v: integer(v, "meta.frames_in"),
    "frames_out": lambda v: integer(v, "meta.frames_out"),
    "error": lambda v: text(v, "meta.error", 4096),
    "removed": lambda v: _boolean(v, "meta.removed"),
}


def _boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise MessageError("bad_meta", f"{what} must be true or false, found {value!r:.40}")
    return value


def meta(value: Any) -> dict[str, Any]:
    """The ``meta`` object, with the keys stages and consumers read type-checked (others
    pass through as JSON data)."""
    if not isinstance(value, dict):
        raise MessageError("bad_field", f"meta is {type(value).__name__}, expected an object")
    for key, check in _META.items():
        if key in value:
            check(value[key])
    return value


def source_rate(fps: object) -> float | None:
    """A frame's ``meta.fps`` as a usable frame rate, or None where it says none (absent,
    not a number, zero, or beyond any camera)."""
    if isinstance(fps, (int, float)) and not isinstance(fps, bool) and 0 < fps < 10_000:
        return float(fps)
    return None
