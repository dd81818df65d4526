"""What sources a control-API client may add (``--api-allow PATTERN``, repeatable).

Without an allow-list any holder of the API token may have the capture read any local
file or folder this user can read, or connect to any address. With one, a source is added
only if its URI, made canonical, matches one of the patterns (shell-style: ``*`` matches
anything, ``/`` included; ``?``, ``[abc]``):

- a stream (``rtsp://``, ``http://``...) matches as written, less its user and password:
  ``rtsp://10.0.0.*/*`` allows the cameras of one subnet;
- a local path, folder or glob matches by its absolute, resolved form (``..`` and
  symlinks followed), so ``/data/videos/*`` cannot be escaped with ``/data/videos/../..``;
- a dataset (``cityscapes:ROOT:SPLIT``) matches as ``cityscapes:`` + its resolved root
  + the rest;
- ``test-pattern:...`` and ``camera:N`` match as written.
"""

from __future__ import annotations

import fnmatch
import os
import re

from segstream.datasets.layouts import DATASETS


def canonical_source(uri: str) -> str:
    """The form of ``uri`` that allow-list patterns are matched against."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        authority, slash, path = rest.partition("/")
        host = authority.rsplit("@", 1)[-1]  # user:password@ is not part of what is allowed
        return f"{scheme.lower()}://{host}{slash}{path}"
    if uri.startswith(("test-pattern", "camera:")):
        return uri
    name, sep, rest = uri.partition(":")
    if sep and name in DATASETS:
        root, colon, tail = rest.partition(":")
        return f"{name}:{os.path.realpath(os.path.expanduser(root))}{colon}{tail}"
    return os.path.realpath(os.path.expanduser(uri))


def allowed(uri: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``uri`` may be added (always, without patterns)."""
    if not patterns:
        return True
    canonical = canonical_source(uri)
    return any(fnmatch.fnmatchcase(canonical, pattern) for pattern in patterns)


def check_patterns(patterns: tuple[str, ...]) -> None:
    """Refuse patterns that cannot be meant (empty, or a bare ``*`` that allows everything
    and is better left out).

    Raises:
        ValueError: which pattern, and why.
    """
    for pattern in patterns:
        if not pattern.strip() or re.fullmatch(r"\**", pattern):
            raise ValueError(f"--api-allow {pattern!r} allows everything or nothing; give a pattern such as "
                             f"'rtsp://10.0.0.*/*' or '/data/videos/*' (or leave --api-allow out)")
