"""Typed values to JSON and back, checked against their annotations.

One codec for every typed structure that crosses a process or file boundary: stage specs
(the supervisor writes them, each stage reads its own), control-plane commands and events,
stage reports, and the YAML run configuration. ``load`` checks every field against its
type hint and raises the caller's error class with the field's path, what was expected
and what was found; unknown keys are refused with the known ones listed.

Supported: ``bool``, ``int``, ``float`` (finite), ``str``, ``None`` and ``X | None``,
``Enum`` subclasses (by value), ``tuple[T, ...]``, ``list[T]``, ``dict[str, T]``, ``Any``
(any JSON value), dataclasses (recursively), and classes with ``from_dict``/``to_dict``.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Point:
    ...     x: int
    ...     y: int = 0
    >>> load(Point, {"x": 3}, "point")
    Point(x=3, y=0)
    >>> load(Point, {"x": "3"}, "point")
    Traceback (most recent call last):
    ...
    ValueError: point.x: expected an integer, found '3' (str)
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from enum import Enum
from functools import lru_cache
from typing import Any, Union

MAX_DEPTH = 32


def dump(value: Any) -> Any:
    """A typed value as plain JSON data (enums by value, dataclasses as objects)."""
    if isinstance(value, Enum):
        return value.value
    if hasattr(value, "to_dict") and not isinstance(value, type):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: dump(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {str(k): dump(v) for k, v in value.items()}
    return value


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _finite(value: int | float) -> bool:
    """A number a float can hold (an int of 400 digits is not; ``math.isfinite`` would
    raise OverflowError on it)."""
    return math.isfinite(value) if isinstance(value, float) else abs(value) <= sys.float_info.max


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def known_fields(cls: type) -> list[str]:
    """The field names of dataclass ``cls``."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def load(tp: Any, value: Any, where: str, error: type[Exception] = ValueError, depth: int = 0) -> Any:
    """``value`` (plain JSON data) checked and converted to type ``tp``.

    Args:
        tp: the target type (a type hint).
        value: the data.
        where: the path of the value, for messages (``config.live.fps``).
        error: the exception class to raise.
        depth: nesting so far (deeply nested input is refused).

    Raises:
        error: the value does not fit; the message gives the path, what was expected and
            what was found.
    """
    if depth > MAX_DEPTH:
        raise error(f"{where}: nested too deeply")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(value, tp):
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return load(options[0], value, where, error, depth + 1)
        for option in options:
            try:
                return load(option, value, where, error, depth + 1)
            except error:
                continue
        raise error(f"{where}: expected one of {[getattr(o, '__name__', str(o)) for o in options]}, "
                    f"found {_describe(value)}")
    if tp is type(None):
        if value is not None:
            raise error(f"{where}: expected null, found {_describe(value)}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise error(f"{where}: expected true or false, found {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{where}: expected an integer, found {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise error(f"{where}: expected a finite number, found {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise error(f"{where}: expected a string, found {_describe(value)}")
        return value
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            raise error(f"{where}: expected one of {[m.value for m in tp]}, found {_describe(value)}") from None
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise error(f"{where}: expected a list, found {_describe(value)}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise error(f"{where}: expected {len(args)} items, found {len(value)}")
            return tuple(load(a, v, f"{where}[{i}]", error, depth + 1) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [load(item, v, f"{where}[{i}]", error, depth + 1) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise error(f"{where}: expected an object, found {_describe(value)}")
        key_type, item = args if args else (str, Any)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise error(f"{where}: keys must be strings, found {_describe(k)}")
            out[load(key_type, k, f"{where}", error, depth + 1) if key_type is not str else k] = \
                load(item, v, f"{where}.{k}", error, depth + 1)
        return out
    if isinstance(tp, type) and hasattr(tp, "from_dict"):
        if not isinstance(value, dict):
            raise error(f"{where}: expected an object, found {_describe(value)}")
        try:
            return tp.from_dict(value)
        except (ValueError, TypeError, KeyError) as exc:
            raise error(f"{where}: {exc}") from None
    if dataclasses.is_dataclass(tp):
        return load_dataclass(tp, value, where, error, depth)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise error(f"{where}: cannot read a {getattr(tp, '__name__', tp)} from {_describe(value)}")


def load_dataclass(cls: type, value: Any, where: str, error: type[Exception] = ValueError, depth: int = 0,
                   paths: dict[str, str] | None = None) -> Any:
    """A dataclass instance from a JSON object: unknown keys refused (the known ones
    listed), missing required fields named, every field checked. ``paths`` names a field
    in errors by where it was written (``outputs.opacity`` for a YAML section's key) as
    ``WHERE: PATH``; without it a field is ``WHERE.NAME``."""
    if not isinstance(value, dict):
        raise error(f"{where}: expected an object with {known_fields(cls)}, found {_describe(value)}")
    hints = _hints(cls)
    known = known_fields(cls)
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise error(f"{where}: unknown {'key' if len(unknown) == 1 else 'keys'} {unknown}; known: {known}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise error(f"{where}: missing {f.name!r}")
            continue
        at = f"{where}: {paths[f.name]}" if paths and f.name in paths else f"{where}.{f.name}"
        kwargs[f.name] = load(hints[f.name], value[f.name], at, error, depth + 1)
    try:
        return cls(**kwargs)
    except error:
        raise
    except (ValueError, TypeError) as exc:
        raise error(f"{where}: {exc}") from None
