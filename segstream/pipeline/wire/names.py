"""Names that may become paths: source ids and frame names.

Both reach file names (``--record DIR/<source>/masks/<frame>.png``, ``consume --save``), so
they are made safe where they enter (``sanitize_name`` at capture), refused where they
arrive unsafe (``is_safe_name`` in ``decode``), and every writer still resolves its target
inside its output folder (``sinks.records.inside``).

    >>> sanitize_name("../../etc/passwd")
    'etc_passwd'
    >>> is_safe_name("frankfurt_000000_000294_leftImg8bit"), is_safe_name("/abs")
    (True, False)
"""

from __future__ import annotations

import re
from typing import Container

MAX_NAME = 128
_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=@-]*$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.+=@-]+")


def is_safe_name(name: object) -> bool:
    """True for a non-empty name of letters, digits and ``_ . + = @ -`` that starts with a
    letter, digit or ``_``, holds no ``..`` and is at most ``MAX_NAME`` long."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_NAME and bool(_SAFE.match(name))
            and ".." not in name)


def unique_name(base: str, taken: Container[str]) -> str:
    """``base``, or ``base-1``, ``base-2``... whichever is not in ``taken``.

        >>> unique_name("clip", {"clip", "clip-1"})
        'clip-2'
    """
    candidate, k = base, 1
    while candidate in taken:
        candidate = f"{base}-{k}"
        k += 1
    return candidate


def sanitize_name(name: str, fallback: str = "unnamed") -> str:
    """A safe name from any text: unsafe runs become ``_``, leading dots and separators go,
    ``..`` collapses, the length is capped. Safe names come back unchanged."""
    if is_safe_name(name):
        return name
    text = _UNSAFE_CHARS.sub("_", name).replace("..", "_")
    text = text.strip("._-")[:MAX_NAME].strip("._-")
    return text if is_safe_name(text) else fallback
