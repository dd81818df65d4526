"""Settings declared once: a dataclass field carries its name, type, default, help, command-line
flag and YAML path; the argparse flags, the YAML reader and the checks are made from that.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Options:
    ...     fps: float = setting(25.0, "frames per second", flag="--fps", section="sources")
    >>> parser = argparse.ArgumentParser()
    >>> add_flags(parser, Options)
    >>> from_mapping(Options, {"sources": {"fps": 10}}, "options.yaml")
    Options(fps=10.0)
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from enum import Enum
from typing import Any, Callable

from segstream.errors import ConfigError
from segstream.pipeline.typed_json import load_dataclass

SECTIONS = ("sources", "engine", "flow", "outputs", "telemetry", "control")
# ``--help`` groups flags by purpose: a setting's ``group``, else its section's.
GROUP_TITLES = {
    "sources": "sources: what is read, and how",
    "engine": "model and inference",
    "flow": "flow: how frames move between the stages",
    "outputs": "outputs: publishing, records, views and sinks",
    "telemetry": "telemetry",
    "control": "control API",
    "security": "security: keys and tokens",
}


def setting(default: Any = dataclasses.MISSING, help: str = "", *, flag: str = "", section: str = "",
            yaml: str = "", metavar: str | None = None, parse: Callable[[str], Any] | None = None,
            append: bool = False, negate: bool = False, const: Any = None,
            targets: tuple[str, ...] = (), coerce: Callable[[Any], Any] | None = None,
            default_factory: Callable[[], Any] | None = None, group: str = "") -> Any:
    """A dataclass field that declares one setting.

    Args:
        default: the default value.
        help: what it does, for ``--help`` and the docs.
        flag: its command-line flag ("" for none).
        section: its YAML section (``sources``, ``engine``, ``flow``, ``outputs``,
            ``telemetry``, ``control``); the flat top-level key is accepted too.
        yaml: its key inside the section (default: the field name).
        metavar: the flag's placeholder.
        parse: turns the flag's text into the value.
        append: the flag may repeat; each adds one item.
        negate: a boolean flag that sets False (``--no-legend``).
        const: the value of a flag given without an argument.
        targets: the flag's parsed tuple sets these fields, in order (``--camera-size WxH``).
        coerce: applied to a YAML value before it is checked (``rate: 10`` -> ``"10"``).
        default_factory: for mutable defaults.
        group: its ``--help`` group (a key of ``GROUP_TITLES``) where that is not its
            section's (``security`` for keys and tokens).
    """
    meta = {"help": help, "flag": flag, "section": section, "yaml": yaml, "metavar": metavar, "parse": parse,
            "append": append, "negate": negate, "const": const, "targets": targets, "coerce": coerce,
            "group": group}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _settings(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.metadata]


def _nested(tp: Any) -> type | None:
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def add_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "", section: str = "",
              groups: dict[str, Any] | None = None) -> None:
    """Add one flag per declared setting of ``cls`` (and of its nested settings classes),
    in ``--help`` groups by purpose, each with its default."""
    if groups is None:  # made in the order of GROUP_TITLES; argparse leaves out those left empty
        groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for f, tp in _settings(cls):
        meta = f.metadata
        nested = _nested(tp)
        if nested is not None:
            add_flags(parser, nested, f"{prefix}{f.name}.", meta["section"] or section, groups)
        if not meta["flag"]:
            continue
        key = meta["group"] or meta["section"] or section
        if key not in groups:
            groups[key] = parser.add_argument_group(GROUP_TITLES.get(key, key or "other"))
        kwargs: dict[str, Any] = {"dest": f"{prefix}{f.name}".replace(".", "__"), "default": None,
                                  "help": _with_default(meta, f)}
        base = typing.get_args(tp)[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp
        if base is bool and meta["parse"] is None:
            kwargs["action"] = "store_false" if meta["negate"] else "store_true"
        else:
            if meta["metavar"]:
                kwargs["metavar"] = meta["metavar"]
            if meta["append"]:
                kwargs["action"] = "append"
            if meta["const"] is not None:
                kwargs.update(nargs="?", const=meta["const"])
            if isinstance(base, type) and issubclass(base, Enum):
                kwargs["choices"] = [m.value for m in base]
            elif base in (int, float) and meta["parse"] is None:
                kwargs["type"] = base
        groups[key].add_argument(meta["flag"], **kwargs)


def _with_default(meta: Any, f: dataclasses.Field) -> str:
    """The flag's help with its default, unless the help already says it or there is none
    worth saying (off, empty, or a flag that turns something off)."""
    text = str(meta["help"]).replace("%", "%%")
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, Enum):
        default = default.value
    if "default:" in text or "(default" in text or meta["negate"] or default in (None, False, "", ()) or isinstance(default, bool):
        return text
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    return f"{text} (default: {shown})"


def overrides_from_args(cls: type, args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The settings given on the command line, as field values of ``cls`` (nested classes
    as dicts of their own overrides)."""
    out: dict[str, Any] = {}
    for f, tp in _settings(cls):
        nested = _nested(tp)
        if nested is not None:
            inner = overrides_from_args(nested, args, f"{prefix}{f.name}.")
            if inner:
                out[f.name] = inner
            continue
        meta = f.metadata
        if not meta["flag"]:
            continue
        value = getattr(args, f"{prefix}{f.name}".replace(".", "__"), None)
        if value is None:
            continue
        if meta["parse"] is not None:
            value = [meta["parse"](v) for v in value] if meta["append"] else meta["parse"](value)
        if meta["targets"]:
            out.update(zip(meta["targets"], value))
        else:
            out[f.name] = tuple(value) if meta["append"] else value
    return out


def apply(base: Any, overrides: dict[str, Any]) -> Any:
    """A copy of dataclass ``base`` with ``overrides`` (nested dicts update nested settings)."""
    changes = {}
    for name, value in overrides.items():
        current = getattr(base, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = apply(current, value)
        changes[name] = value
    return dataclasses.replace(base, **changes)


def _flatten(cls: type, data: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, str]]:
    """YAML sections (``engine: {model: ...}``) to field names; flat keys pass through.
    Also returns each field's key path as written (``engine.model``), for errors."""
    by_path = {}
    for f, _ in _settings(cls):
        if f.metadata["section"]:
            by_path[(f.metadata["section"], f.metadata["yaml"] or f.name)] = f.name
    fields = {f.name for f in dataclasses.fields(cls)}
    flat: dict[str, Any] = {}
    paths: dict[str, str] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            known = sorted(k for s, k in by_path if s == key)
            for inner, item in value.items():
                name = by_path.get((key, inner))
                if name is None:
                    raise ConfigError(f"{where}: unknown key {key}.{inner}; known in {key}: {known}")
                flat[name] = item
                paths[name] = f"{key}.{inner}"
        elif key in fields:
            flat[key] = value
            paths[key] = key
        else:
            raise ConfigError(f"{where}: unknown key {key!r}; known: sections {list(SECTIONS)} or the flat keys "
                              f"{sorted(fields)}")
    return flat, paths


def from_mapping(cls: type, data: Any, where: str) -> Any:
    """An instance of ``cls`` from YAML data (sections or flat keys), every value checked.

    Raises:
        ConfigError: an unknown key (the known ones listed) or a value of the wrong type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a mapping of settings, found {type(data).__name__}")
    flat, paths = _flatten(cls, data, where)
    for f in dataclasses.fields(cls):
        coerce = f.metadata.get("coerce") if f.metadata else None
        if coerce is not None and flat.get(f.name) is not None:
            flat[f.name] = coerce(flat[f.name])
    return load_dataclass(cls, flat, where, ConfigError, paths=paths)


def coerce_fields(instance: Any) -> None:
    """In ``__post_init__``: turn strings into the enums and lists into the tuples the
    fields declare, so code may pass ``policy="live"``; a wrong value is a ConfigError."""
    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        tp = hints[f.name]
        options = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        value = getattr(instance, f.name)
        if value is None:
            continue
        for option in options:
            if isinstance(option, type) and issubclass(option, Enum) and not isinstance(value, option):
                try:
                    value = option(value)
                except ValueError:
                    raise ConfigError(f"{f.name} must be one of {[m.value for m in option]}, "
                                      f"found {value!r}") from None
            elif typing.get_origin(option) is tuple and isinstance(value, (list, str)):
                value = (value,) if isinstance(value, str) else tuple(value)
        object.__setattr__(instance, f.name, value)


def documented(cls: type) -> list[tuple[str, str, str, str]]:
    """``(yaml path, flag, default, help)`` per declared setting, for the docs."""
    rows = []
    for f, tp in _settings(cls):
        nested = _nested(tp)
        if nested is not None:
            rows += [(f"{f.name}.{path}", flag, default, text) for path, flag, default, text in documented(nested)]
            continue
        meta = f.metadata
        path = f"{meta['section']}.{meta['yaml'] or f.name}" if meta["section"] else f.name
        default = f.default if f.default is not dataclasses.MISSING else "-"
        rows.append((path, meta["flag"], repr(default.value if isinstance(default, Enum) else default), meta["help"]))
    return rows
